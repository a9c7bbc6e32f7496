"""The channel to the host agent: TLS (mutual if configured) when hostAgent.tls says so, and
what to tell the operator when its handshake fails."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from datetime import UTC, datetime
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


# --- why a handshake failed -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Validity:
    not_before: datetime
    not_after: datetime


def _certificate_dates(path: Path) -> dict[str, str]:
    """The stdlib's own PEM certificate reader (what ssl.getpeercert() answers, from a file);
    CPython has shipped it since 2.7 but never made it public."""
    decoded: dict[str, str] = ssl._ssl._test_decode_cert(str(path))  # type: ignore[attr-defined]
    return decoded


def certificate_validity(path: Path) -> Validity | None:
    """notBefore and notAfter of the first certificate in the PEM file; None if unreadable."""
    try:
        dates = _certificate_dates(path)
        not_before = ssl.cert_time_to_seconds(dates["notBefore"])
        not_after = ssl.cert_time_to_seconds(dates["notAfter"])
    # ssl.SSLError is an OSError; AttributeError if a Python drops the private reader.
    except (OSError, KeyError, ValueError, AttributeError):
        return None
    return Validity(datetime.fromtimestamp(not_before, UTC), datetime.fromtimestamp(not_after, UTC))


def client_certificate_validity(tls: TLSConfig | None) -> Validity | None:
    """The validity of hostAgent.tls.certFile, if there is one that can be read."""
    if tls is None or tls.cert_file is None:
        return None
    return certificate_validity(tls.cert_file)


def handshake_hint(
    tls: TLSConfig, details: str, client: Validity | None, now: datetime | None = None
) -> str:
    """What to fix, from grpc's words when we refused the agent's certificate, else from the
    dates of our own: an agent that refuses ours only hangs up, it never says why."""
    if "certificate has expired" in details:
        return "the agent's certificate (or a CA above it) has expired: renew it on the agent"
    if "not yet valid" in details:
        return "the agent's certificate is not valid yet: check the clocks of node and agent"
    if "CERTIFICATE_VERIFY_FAILED" in details:
        return f"check hostAgent.tls.caFile: {tls.ca_file} must have signed the agent's certificate"
    ours = f"our client certificate {tls.cert_file} (hostAgent.tls.certFile)"
    now = now or datetime.now(UTC)
    if client is not None and now > client.not_after:
        return f"{ours} expired at {client.not_after:%Y-%m-%d %H:%M:%S} UTC: renew it"
    if client is not None and now < client.not_before:
        return (
            f"{ours} is valid only from {client.not_before:%Y-%m-%d %H:%M:%S} UTC: "
            "check the node's clock"
        )
    if "Socket closed" in details and tls.cert_file is None:
        return (
            "check hostAgent.tls: the agent hung up, as one that wants a client certificate "
            "does: set certFile and keyFile"
        )
    if "Socket closed" in details:
        return (
            f"check hostAgent.tls: the agent hung up, as one that refuses {ours} does: it "
            "must be signed by a CA that the agent trusts"
        )
    return (
        "check hostAgent.tls (caFile must have signed the agent's certificate; an agent that "
        "wants a client certificate needs certFile and keyFile, signed by a CA it trusts)"
    )
