# voxbridge: one `voxbridge serve` process per container (docs/operations.md, "Scaling out").
#
#   docker build -t voxbridge:0.1.0 .
#   docker run --rm -p 8080:8080 \
#       -e VOXBRIDGE_PUBLIC_URL=https://voice.example.com -e VOXBRIDGE_TWILIO_AUTH_TOKEN \
#       -e VOXBRIDGE_PROVIDER=openai -e OPENAI_API_KEY voxbridge:0.1.0
#
# No secret is baked in: keys, tokens and the journal DSN come from the environment at run time.
# The image binds 0.0.0.0, so `voxbridge serve` refuses to start without a Twilio auth token
# (or VOXBRIDGE_INSECURE=1 when something in front authenticates Twilio).
# tests/test_deploy_kubernetes.py checks this file (hadolint, and its shape).

# --- build: install voxbridge and its dependencies into a virtualenv ---------------------------
FROM python:3.11-slim AS build
RUN python -m venv /opt/voxbridge
WORKDIR /src
COPY pyproject.toml README.md ./
COPY voxbridge ./voxbridge
# The postgres extra brings psycopg with its binary wheel: the image runs with either journal.
# The otel extra (OpenTelemetry's API, SDK and OTLP/HTTP exporter, no grpcio) lets
# OTEL_EXPORTER_OTLP_ENDPOINT turn traces on without another image; unset, none of it is imported.
RUN /opt/voxbridge/bin/pip install --no-cache-dir --disable-pip-version-check ".[postgres,otel]"

# --- run: the virtualenv on a clean slim base, as an unprivileged user -------------------------
FROM python:3.11-slim
# A numeric user, so Kubernetes' runAsNonRoot can verify it without a passwd lookup.
RUN groupadd --system --gid 10001 voxbridge \
    && useradd --system --no-log-init --uid 10001 --gid 10001 \
        --home-dir /var/lib/voxbridge --shell /usr/sbin/nologin voxbridge \
    && install -d -o 10001 -g 10001 -m 0750 /var/lib/voxbridge
COPY --from=build /opt/voxbridge /opt/voxbridge
ENV PATH=/opt/voxbridge/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    VOXBRIDGE_HOST=0.0.0.0 \
    VOXBRIDGE_PORT=8080 \
    VOXBRIDGE_LOG_FORMAT=json \
    VOXBRIDGE_DB=/var/lib/voxbridge/voxbridge.db
# The SQLite journal's directory (mount a volume here to keep it); with a PostgreSQL DSN in
# VOXBRIDGE_DB nothing is written to disk.
WORKDIR /var/lib/voxbridge
USER 10001:10001
EXPOSE 8080
# For `docker run` and Compose; Kubernetes ignores it and probes /healthz and /readyz itself.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('VOXBRIDGE_PORT', '8080') + '/healthz', timeout=4)"]
# Exec form: voxbridge is PID 1 and gets SIGTERM itself, which starts its drain (a shell in
# between would swallow the signal and the drain would never run).
ENTRYPOINT ["voxbridge"]
CMD ["serve"]
