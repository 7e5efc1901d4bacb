# syntax=docker/dockerfile:1
#
# octopus-crm-sync: the `octopus-crm` daemon, nothing else (no demo/test/dev extras).
#
#   docker build -t octopus-crm-sync:0.1.0 .
#   docker run --rm -p 9464:9464 \
#     -e OCTOPUS_CRM_BOOTSTRAP_SERVERS=kafka:9092 \
#     -v "$PWD/examples/crm-config.seed.json:/etc/octopus-crm/crm-config.json:ro" \
#     -v octopus-crm-data:/var/lib/octopus-crm \
#     octopus-crm-sync:0.1.0
#
# The SQLite ledger (the default, one replica only) is written to the working directory,
# /var/lib/octopus-crm: mount a volume there to keep it across container restarts.

ARG PYTHON_IMAGE=python:3.11-slim

# -- build: wheel from source, then a virtualenv with the wheel and its runtime dependencies --
FROM ${PYTHON_IMAGE} AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY pyproject.toml ./
COPY octopus_crm ./octopus_crm
COPY daemon ./daemon
COPY adapters ./adapters
COPY strategies ./strategies

RUN pip wheel --no-deps --wheel-dir /wheels . \
 && python -m venv /opt/venv \
 && /opt/venv/bin/pip install /wheels/octopus_crm_sync-*.whl \
 && /opt/venv/bin/octopus-crm --help >/dev/null

# -- runtime: the virtualenv on a clean base, run as an unprivileged user --------------------
FROM ${PYTHON_IMAGE} AS runtime

LABEL org.opencontainers.image.title="octopus-crm-sync" \
      org.opencontainers.image.description="Kafka to CRM delivery daemon of the Octopus Messenger platform" \
      org.opencontainers.image.licenses="Apache-2.0"

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    OCTOPUS_CRM_CONFIG_PATH=/etc/octopus-crm/crm-config.json

# Fixed numeric ids so Kubernetes' runAsNonRoot can verify them (see deploy/k8s/deployment.yaml).
RUN groupadd --system --gid 10001 octopus \
 && useradd --system --uid 10001 --gid octopus --no-create-home \
      --home-dir /var/lib/octopus-crm --shell /usr/sbin/nologin octopus \
 && install -d -o octopus -g octopus -m 0750 /var/lib/octopus-crm \
 && install -d -o root -g root -m 0755 /etc/octopus-crm

COPY --from=build /opt/venv /opt/venv

WORKDIR /var/lib/octopus-crm
USER 10001:10001

# /metrics, /healthz, /readyz and the admin API (OCTOPUS_CRM_METRICS_PORT).
EXPOSE 9464 9465

# SIGTERM: stop fetching, finish in-flight work within OCTOPUS_CRM_GRACE_PERIOD_S (25 s),
# commit, exit 0. A second signal exits at once. No HEALTHCHECK: Kubernetes probes do it.
STOPSIGNAL SIGTERM
ENTRYPOINT ["octopus-crm"]
CMD ["run"]
