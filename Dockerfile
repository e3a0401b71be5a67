# syntax=docker/dockerfile:1
#
# iceprod-exporter container image.
#
#   docker build -t iceprod-exporter:0.1.0 --build-arg VERSION=0.1.0 .
#   docker run --rm -p 8097:8097 -e API_URL=... -e OAUTH_CLIENT_SECRET=... iceprod-exporter:0.1.0
#
# Settings come from the environment (ICEPROD_EXPORTER_* or IceProd's API_URL, OAUTH_URL,
# OAUTH_CLIENT_ID, OAUTH_CLIENT_SECRET, PROMETHEUS_PORT) and, optionally, from a YAML file
# mounted at /etc/iceprod-exporter/config.yaml and named by ICEPROD_EXPORTER_CONFIG_FILE.
# See deploy/README.md.
#
# tests/*/deploy/test_deploy.py runs this file's build-stage RUN lines outside Docker, so keep every path
# they use in the variables below rather than spelled out in the commands.

ARG PYTHON_IMAGE=python:3.12-slim-bookworm

# ---------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS build

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    WHEEL_DIR=/tmp/wheels \
    VIRTUAL_ENV=/opt/iceprod-exporter/venv

WORKDIR /src
COPY pyproject.toml README.md ./
COPY iceprod_exporter/ iceprod_exporter/
# the built-in simulated IceProd, for `demo` (a package of its own: no production module imports it)
COPY iceprod_simulator/ iceprod_simulator/

# The wheel is built in isolation (setuptools is fetched for the build only) and installed with
# its dependencies into a venv that has no pip of its own (the stage's pip installs into it with
# --python); only that venv reaches the final stage, so no build tool or pip cache does.
RUN python -m pip wheel --no-cache-dir --no-deps --wheel-dir "$WHEEL_DIR" . \
    && python -m venv --without-pip "$VIRTUAL_ENV" \
    && python -m pip --python "$VIRTUAL_ENV/bin/python" install --no-cache-dir \
       "$WHEEL_DIR"/iceprod_exporter-*.whl \
    && "$VIRTUAL_ENV/bin/iceprod-exporter" --version

# ---------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE}

ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown

LABEL org.opencontainers.image.title="iceprod-exporter" \
      org.opencontainers.image.description="Prometheus exporter for IceProd, IceCube's dataset processing system" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.licenses="MIT" \
      org.opencontainers.image.vendor="WIPAC" \
      org.opencontainers.image.source="https://github.com/WIPACrepo/iceprod-exporter" \
      org.opencontainers.image.documentation="https://github.com/WIPACrepo/iceprod-exporter/blob/main/deploy/README.md" \
      org.opencontainers.image.base.name="docker.io/library/python:3.12-slim-bookworm"

# A fixed uid/gid so Kubernetes runAsUser, file ownership on mounted secrets and the compose file
# all agree; -l keeps useradd from growing /var/log/lastlog for a high uid.
RUN groupadd --system --gid 10001 iceprod-exporter \
    && useradd --system --no-log-init --uid 10001 --gid 10001 --home-dir /nonexistent \
       --no-create-home --shell /usr/sbin/nologin iceprod-exporter

# The venv's interpreter links to this image's /usr/local/bin/python3.12, the same as in build.
COPY --from=build /opt/iceprod-exporter/venv /opt/iceprod-exporter/venv

ENV PATH=/opt/iceprod-exporter/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    ICEPROD_EXPORTER_LOG_FORMAT=json

USER 10001:10001
EXPOSE 8097

# No curl in the slim image: ask /healthz with the standard library. The port follows the same
# environment variables as the exporter (a port set only in the config file is not seen here).
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; port = os.environ.get('ICEPROD_EXPORTER_PORT') or os.environ.get('PROMETHEUS_PORT') or '8097'; urllib.request.urlopen(f'http://127.0.0.1:{port}/healthz', timeout=4)"]

ENTRYPOINT ["iceprod-exporter"]
CMD ["run"]
