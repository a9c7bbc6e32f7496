# syntax=docker/dockerfile:1
# xpu-bridge image: `docker build -t REGISTRY/xpu-bridge:TAG .` from the repository root.
# Python 3.11 is the version CI tests (requires-python >= 3.11).

# Build stage: wheels of the project and all its dependencies, built as a non-root user.
FROM python:3.11-slim-bookworm AS build
RUN useradd --create-home --uid 10001 builder
USER builder
RUN mkdir /home/builder/src /home/builder/wheels
WORKDIR /home/builder/src
COPY --chown=builder:builder pyproject.toml README.md ./
COPY --chown=builder:builder xpu_bridge ./xpu_bridge
COPY --chown=builder:builder opi_protos ./opi_protos
RUN python -m pip wheel --no-cache-dir --wheel-dir /home/builder/wheels .

# Final stage: the installed wheels only, no build tree.
FROM python:3.11-slim-bookworm
ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
RUN --mount=type=bind,from=build,source=/home/builder/wheels,target=/wheels \
    python -m pip install --no-cache-dir --no-index --find-links=/wheels xpu-bridge
# Runs as root on purpose: a device plugin creates its sockets in the kubelet's root-owned
# /var/lib/kubelet/device-plugins, connects to the root-only kubelet and host-agent sockets and
# writes device-info files under /var/run; the DaemonSet runs it unprivileged and drops every
# capability, so root here means the owner of those files and nothing more.
USER root
ENTRYPOINT ["xpu-bridge"]
CMD ["run", "--config", "/etc/xpu-bridge/config.yaml"]
