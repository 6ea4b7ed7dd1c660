"""The two bridges voxbridge is measured against, written from scratch, small and honest.

* :mod:`.asyncio_bridge` -- the bridge as the popular tutorials write it: an ASGI app on uvicorn,
  the ``websockets`` client upstream, two receive loops joined with ``asyncio.gather``, no deadlines.
* :mod:`.trio_bridge` -- a naive trio bridge: hypercorn + trio-websocket, one nursery per call,
  Prometheus counters, no deadlines, no keepalive.

Both speak the same upstream protocol as voxbridge (OpenAI Realtime JSON, base64 mu-law passed
through) with the same JSON handling: ``json.loads`` of every Twilio frame and every provider
frame, ``json.dumps`` of every frame they build. Each takes its upstream URL and port from argv
(or ``BENCH_UPSTREAM_URL`` / ``BENCH_PORT``) and prints ``... listening on http://HOST:PORT``.
"""
