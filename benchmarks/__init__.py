"""voxbridge benchmark suite: ``python -m benchmarks.run`` (``just bench``), ``--smoke`` for CI.

Six scenarios (relay, floor, capacity, stall, memory, soak), each also runnable alone
(``python -m benchmarks.<name> --help``), run voxbridge and two baselines written from scratch
(:mod:`benchmarks.baselines`) back to back on this machine and report ratios. See
``docs/benchmarks.md`` for what each measures and how to read the report.

Layout: :mod:`.common` (processes, CPU, machine), :mod:`.harness` (peers, load runs, progress),
:mod:`.wire` (minimal WebSocket/Twilio/OpenAI framing), :mod:`.loadgen` (the load generator),
:mod:`.upstream_fake` (the lean OpenAI-Realtime fake), :mod:`.echo_servers` (the floor),
:mod:`.vox_server` (voxbridge as benchmarked), one module per scenario, :mod:`.profiling`,
:mod:`.report` and :mod:`.run`. Importing this package imports nothing heavy.
"""
