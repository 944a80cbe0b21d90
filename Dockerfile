# driftline worker / producer / CLI image.
#   docker build -t driftline:0.1.0 .
#   docker run --rm driftline:0.1.0 worker --bootstrap kafka:9092 --metrics-port 9464
# Build stage: install the package into a virtualenv; runtime stage: copy the venv only.
FROM python:3.11.11-slim-bookworm AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /src
# a C compiler for the compiled scanner of single events (schemas/_scan.c), the label
# join's id index (detectors/_id_index.c) and the window and segment kernels
# (detectors/_kernels.c); the runtime stage gets the built package only
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/driftline
COPY pyproject.toml README.md ./
COPY detectors/ detectors/
COPY schemas/ schemas/
COPY streams/ streams/
# the benchmarks are part of the package (driftline bench)
COPY benchmarks/ benchmarks/
RUN /opt/driftline/bin/pip install --no-cache-dir . \
 && /opt/driftline/bin/python -c "from driftline.schemas.codecs import SCANNER; assert SCANNER" \
 && /opt/driftline/bin/python -c "from driftline.detectors.join_index import COMPILED; assert COMPILED"

FROM python:3.11.11-slim-bookworm

LABEL org.opencontainers.image.title="driftline" \
      org.opencontainers.image.description="Streaming drift detection for ML models over Kafka" \
      org.opencontainers.image.licenses="Apache-2.0"

ENV PATH=/opt/driftline/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    DRIFTLINE_METRICS_PORT=9464

RUN groupadd --system --gid 10001 driftline \
 && useradd --system --uid 10001 --gid driftline --home-dir /var/lib/driftline \
      --create-home --shell /usr/sbin/nologin driftline

COPY --from=build /opt/driftline /opt/driftline

USER 10001:10001
WORKDIR /var/lib/driftline
EXPOSE 9464

# The worker serves /healthz next to /metrics; no curl in the slim image, so Python asks.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import os, sys, urllib.request; port = os.environ.get('DRIFTLINE_METRICS_PORT', '9464'); sys.exit(0 if urllib.request.urlopen(f'http://127.0.0.1:{port}/healthz', timeout=4).status == 200 else 1)"]

ENTRYPOINT ["driftline"]
CMD ["--help"]
