"""The channel to the host agent: TLS (mutual if configured) when hostAgent.tls says so."""

from __future__ import annotations

from pathlib import Path

import grpc

from xpu_bridge.config import ConfigError, HostAgentConfig, TLSConfig

CHANNEL_OPTIONS = [("grpc.enable_retries", 0), ("grpc.keepalive_time_ms", 30_000)]


def _read_pem(field: str, path: Path) -> bytes:
    """One `hostAgent.tls` file; a ConfigError naming the field and the file if it is unusable."""
    where = f"hostAgent.tls.{field}"
    try:
        data = path.read_bytes()
    except OSError as error:
        raise ConfigError([f"{where}: cannot read {path}: {error.strerror or error}"]) from None
    if b"-----BEGIN " not in data:
        raise ConfigError([f"{where}: {path} is not PEM (no -----BEGIN line)"])
    return data


def tls_credentials(tls: TLSConfig) -> grpc.ChannelCredentials:
    """Server verified against caFile; client certificate (mutual TLS) when certFile is given.
    The files are read once, here: a rotated certificate needs a restart."""
    ca = _read_pem("caFile", tls.ca_file)
    cert = _read_pem("certFile", tls.cert_file) if tls.cert_file is not None else None
    key = _read_pem("keyFile", tls.key_file) if tls.key_file is not None else None
    return grpc.ssl_channel_credentials(
        root_certificates=ca, private_key=key, certificate_chain=cert
    )


def channel_for(config: HostAgentConfig) -> grpc.aio.Channel:
    """Raises ConfigError (one line per problem) when a TLS file cannot be used."""
    if config.tls is None:
        return grpc.aio.insecure_channel(config.endpoint, options=CHANNEL_OPTIONS)
    credentials = tls_credentials(config.tls)
    return grpc.aio.secure_channel(config.endpoint, credentials, options=CHANNEL_OPTIONS)
