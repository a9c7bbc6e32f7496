"""The channel to the host agent: TLS (mutual if configured) when hostAgent.tls says so, and
what to tell the operator when its handshake fails."""

from __future__ import annotations

import base64
import binascii
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

PEM_CERTIFICATE = b"-----BEGIN CERTIFICATE-----"
UTC_TIME, GENERALIZED_TIME, EXPLICIT_VERSION = 0x17, 0x18, 0xA0


@dataclass(frozen=True, slots=True)
class Validity:
    not_before: datetime
    not_after: datetime


def _element(der: bytes, at: int) -> tuple[int, int, int]:
    """(tag, start, end) of the contents of the DER element at `at`."""
    tag, length = der[at], der[at + 1]
    at += 2
    if length & 0x80:
        count = length & 0x7F
        length = int.from_bytes(der[at : at + count], "big")
        at += count
    if at + length > len(der):
        raise ValueError("truncated DER")
    return tag, at, at + length


def _time(der: bytes, at: int) -> tuple[datetime, int]:
    tag, start, end = _element(der, at)
    text = der[start:end].decode("ascii")
    if tag == UTC_TIME:  # RFC 5280: YY >= 50 is 19YY
        text = ("19" if int(text[:2]) >= 50 else "20") + text
    elif tag != GENERALIZED_TIME:
        raise ValueError("not a time")
    return datetime.strptime(text, "%Y%m%d%H%M%SZ").replace(tzinfo=UTC), end


def certificate_validity(pem: bytes) -> Validity | None:
    """notBefore and notAfter of the first certificate in `pem`; None if it cannot be read."""
    try:
        body = pem.split(PEM_CERTIFICATE, 1)[1].split(b"-----END", 1)[0]
        der = base64.b64decode(body)
        _, tbs, _ = _element(der, 0)  # Certificate
        _, at, _ = _element(der, tbs)  # TBSCertificate
        tag, _, end = _element(der, at)
        at = end if tag == EXPLICIT_VERSION else at
        for _ in ("serialNumber", "signature", "issuer"):
            at = _element(der, at)[2]
        _, at, _ = _element(der, at)  # Validity
        not_before, at = _time(der, at)
        not_after, _ = _time(der, at)
    except (IndexError, ValueError, binascii.Error):
        return None
    return Validity(not_before, not_after)


def client_certificate_validity(tls: TLSConfig | None) -> Validity | None:
    """The validity of hostAgent.tls.certFile, if there is one that can be read."""
    if tls is None or tls.cert_file is None:
        return None
    try:
        return certificate_validity(tls.cert_file.read_bytes())
    except OSError:
        return None


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
