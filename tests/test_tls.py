"""Mutual TLS to the host agent: real certificates (openssl CLI, made at test time: valid,
from another CA, expired), real gRPC over TCP, and the message each refusal gives."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml

from xpu_bridge.config import ConfigError, HostAgentConfig, TLSConfig
from xpu_bridge.hostagent.opi_evpn import BridgePortClient
from xpu_bridge.hostagent.ports import OperStatus, PortError, PortSpec
from xpu_bridge.hostagent.tls import certificate_validity, handshake_hint
from xpu_bridge.sim.host_agent import BRIDGE_PREFIX, ServerTLS, SimHostAgent

OPENSSL = shutil.which("openssl")
if OPENSSL is None:
    pytest.skip("the openssl CLI is needed to make test certificates", allow_module_level=True)

ROOT = Path(__file__).resolve().parents[1]
RED = BRIDGE_PREFIX + "red"
SPEC = PortSpec(
    port_id="vf-0000-3b-02-1",
    mac=bytes.fromhex("0c42a1003b11"),
    ptype="access",
    logical_bridges=(RED,),
)
# Refusals are UNAVAILABLE, which the client retries until attachTimeoutSeconds runs out.
FAST = {"rpcTimeoutSeconds": 0.5, "attachTimeoutSeconds": 1}
OPENSSL_CONFIG = """\
[req]
distinguished_name = dn
prompt = no
[dn]
CN = unused
[ca_ext]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[server_ext]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1, DNS:localhost
authorityKeyIdentifier = keyid
[client_ext]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = clientAuth
authorityKeyIdentifier = keyid
# `openssl ca`, which (unlike `openssl x509 -req` in OpenSSL 3.0) sets validity dates in the past.
[ca]
default_ca = test_ca
[test_ca]
database = index.txt
new_certs_dir = .
serial = serial
default_md = sha256
policy = any_name
unique_subject = no
[any_name]
commonName = supplied
"""


@dataclass(frozen=True)
class Pki:
    dir: Path
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path
    other_client_cert: Path
    other_client_key: Path
    expired_server_cert: Path
    expired_server_key: Path
    expired_client_cert: Path
    expired_client_key: Path

    def server(self, *, require_client_auth: bool = True, expired: bool = False) -> ServerTLS:
        cert, key = (
            (self.expired_server_cert, self.expired_server_key)
            if expired
            else (self.server_cert, self.server_key)
        )
        return ServerTLS(
            cert_chain=cert.read_bytes(),
            private_key=key.read_bytes(),
            client_ca=self.ca.read_bytes(),
            require_client_auth=require_client_auth,
        )


def _openssl(directory: Path, *args: str) -> None:
    assert OPENSSL is not None
    subprocess.run([OPENSSL, *args], cwd=directory, check=True, capture_output=True, timeout=30)


def _new_key(name: str) -> list[str]:
    return ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", f"{name}.key"]  # fmt: skip


def _make_ca(directory: Path, name: str) -> None:
    _openssl(
        directory, "req", "-config", "openssl.cnf", "-x509", *_new_key(name),
        "-out", f"{name}.pem", "-days", "2", "-subj", f"/CN=xpu-bridge test {name}",
        "-extensions", "ca_ext",
    )  # fmt: skip


def _make_leaf(directory: Path, name: str, ca: str, extensions: str, serial: int) -> None:
    _openssl(
        directory, "req", "-config", "openssl.cnf", "-new", *_new_key(name),
        "-out", f"{name}.csr", "-subj", f"/CN={name}",
    )  # fmt: skip
    _openssl(
        directory, "x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem",
        "-CAkey", f"{ca}.key", "-set_serial", str(serial), "-days", "2",
        "-extfile", "openssl.cnf", "-extensions", extensions, "-out", f"{name}.pem",
    )  # fmt: skip


def _make_expired_leaf(directory: Path, name: str, ca: str, extensions: str) -> None:
    """Signed by `ca` and valid from two days ago until yesterday."""
    now = datetime.now(UTC)
    start, end = (f"{now - timedelta(days=days):%Y%m%d%H%M%SZ}" for days in (2, 1))
    _openssl(
        directory, "req", "-config", "openssl.cnf", "-new", *_new_key(name),
        "-out", f"{name}.csr", "-subj", f"/CN={name}",
    )  # fmt: skip
    _openssl(
        directory, "ca", "-config", "openssl.cnf", "-batch", "-notext", "-in", f"{name}.csr",
        "-cert", f"{ca}.pem", "-keyfile", f"{ca}.key", "-startdate", start, "-enddate", end,
        "-extfile", "openssl.cnf", "-extensions", extensions, "-out", f"{name}.pem",
    )  # fmt: skip


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pki]:
    directory = tmp_path_factory.mktemp("pki")
    (directory / "openssl.cnf").write_text(OPENSSL_CONFIG)
    _make_ca(directory, "ca")
    _make_ca(directory, "other-ca")
    _make_leaf(directory, "server", "ca", "server_ext", 1)
    _make_leaf(directory, "client", "ca", "client_ext", 2)
    _make_leaf(directory, "other-client", "other-ca", "client_ext", 3)
    (directory / "index.txt").write_text("")
    (directory / "serial").write_text("10\n")
    _make_expired_leaf(directory, "expired-server", "ca", "server_ext")
    _make_expired_leaf(directory, "expired-client", "ca", "client_ext")
    yield Pki(
        dir=directory,
        ca=directory / "ca.pem",
        server_cert=directory / "server.pem",
        server_key=directory / "server.key",
        client_cert=directory / "client.pem",
        client_key=directory / "client.key",
        other_ca=directory / "other-ca.pem",
        other_client_cert=directory / "other-client.pem",
        other_client_key=directory / "other-client.key",
        expired_server_cert=directory / "expired-server.pem",
        expired_server_key=directory / "expired-server.key",
        expired_client_cert=directory / "expired-client.pem",
        expired_client_key=directory / "expired-client.key",
    )


async def _serve(tls: ServerTLS) -> SimHostAgent:
    agent = SimHostAgent(["red"], tls=tls)
    await agent.start("127.0.0.1:0")
    return agent


@pytest.fixture
async def mtls_agent(pki: Pki) -> AsyncIterator[SimHostAgent]:
    agent = await _serve(pki.server(require_client_auth=True))
    yield agent
    await agent.stop()


def _config(endpoint: str, tls: dict[str, str], **extra: float) -> HostAgentConfig:
    return HostAgentConfig.model_validate({"endpoint": endpoint, "tls": tls, **extra})


def _files(ca: Path, cert: Path | None = None, key: Path | None = None) -> dict[str, str]:
    files = {"caFile": str(ca)}
    if cert is not None and key is not None:
        files |= {"certFile": str(cert), "keyFile": str(key)}
    return files


async def _ensure(config: HostAgentConfig) -> OperStatus:
    client = BridgePortClient(config)
    try:
        return (await client.ensure_port(SPEC)).port.oper
    finally:
        await client.close()


async def _refused(config: HostAgentConfig) -> PortError:
    client = BridgePortClient(config)
    try:
        with pytest.raises(PortError) as caught:
            await client.ensure_port(SPEC)
    finally:
        await client.close()
    return caught.value


# --- the handshake ---------------------------------------------------------------------------


async def test_client_certificate_gets_a_port_up_on_an_agent_requiring_one(
    pki: Pki, mtls_agent: SimHostAgent
) -> None:
    config = _config(mtls_agent.target, _files(pki.ca, pki.client_cert, pki.client_key))
    client = BridgePortClient(config)
    try:
        assert await client.missing_logical_bridges([RED, BRIDGE_PREFIX + "blue"]) == [
            BRIDGE_PREFIX + "blue"
        ]
        attachment = await client.ensure_port(SPEC)
        assert attachment.port.oper is OperStatus.UP
        assert attachment.port.port_id == SPEC.port_id
        assert [port.port_id for port in await client.list_ports()] == [SPEC.port_id]
    finally:
        await client.close()
    assert mtls_agent.calls["CreateBridgePort"] == 1


async def test_tls_is_kept_across_a_restart(pki: Pki, mtls_agent: SimHostAgent) -> None:
    config = _config(mtls_agent.target, _files(pki.ca, pki.client_cert, pki.client_key))
    await mtls_agent.restart()
    assert await _ensure(config) is OperStatus.UP


async def test_ca_alone_is_enough_when_the_agent_does_not_ask_for_a_client_cert(
    pki: Pki,
) -> None:
    agent = await _serve(pki.server(require_client_auth=False))
    try:
        assert await _ensure(_config(agent.target, _files(pki.ca))) is OperStatus.UP
    finally:
        await agent.stop()


def _handshake_failed(error: PortError, agent: SimHostAgent, why: str) -> None:
    """Refused before any call reached the agent, with a message naming TLS and the fix."""
    assert f"failed at {agent.target}: UNAVAILABLE" in str(error)
    assert f"(the TLS handshake with {agent.target} failed: {why})" in str(error)
    assert "\n" not in str(error)
    assert error.unreachable
    assert agent.calls["CreateBridgePort"] == 0


async def test_missing_client_certificate_is_refused_and_names_the_endpoint(
    pki: Pki, mtls_agent: SimHostAgent
) -> None:
    error = await _refused(_config(mtls_agent.target, _files(pki.ca), **FAST))
    _handshake_failed(
        error,
        mtls_agent,
        "check hostAgent.tls: the agent hung up, as one that wants a client certificate does: "
        "set certFile and keyFile",
    )


async def test_missing_client_certificate_fails_the_bridge_check_too(
    pki: Pki, mtls_agent: SimHostAgent
) -> None:
    client = BridgePortClient(_config(mtls_agent.target, _files(pki.ca), **FAST))
    try:
        with pytest.raises(PortError, match=mtls_agent.target):
            await client.missing_logical_bridges([RED])
    finally:
        await client.close()
    assert mtls_agent.calls["GetLogicalBridge"] == 0


async def test_client_trusting_another_ca_refuses_the_agent(
    pki: Pki, mtls_agent: SimHostAgent
) -> None:
    files = _files(pki.other_ca, pki.client_cert, pki.client_key)
    error = await _refused(_config(mtls_agent.target, files, **FAST))
    _handshake_failed(
        error,
        mtls_agent,
        f"check hostAgent.tls.caFile: {pki.other_ca} must have signed the agent's certificate",
    )
    assert "CERTIFICATE_VERIFY_FAILED: unable to get local issuer certificate" in str(error)


async def test_client_certificate_from_another_ca_is_refused_by_the_agent(
    pki: Pki, mtls_agent: SimHostAgent
) -> None:
    files = _files(pki.ca, pki.other_client_cert, pki.other_client_key)
    error = await _refused(_config(mtls_agent.target, files, **FAST))
    _handshake_failed(
        error,
        mtls_agent,
        f"check hostAgent.tls: the agent hung up, as one that refuses our client certificate "
        f"{pki.other_client_cert} (hostAgent.tls.certFile) does: it must be signed by a CA "
        "that the agent trusts",
    )


async def test_expired_client_certificate_is_refused_by_the_agent_and_named(
    pki: Pki, mtls_agent: SimHostAgent
) -> None:
    validity = certificate_validity(pki.expired_client_cert)
    assert validity is not None
    files = _files(pki.ca, pki.expired_client_cert, pki.expired_client_key)
    error = await _refused(_config(mtls_agent.target, files, **FAST))
    _handshake_failed(
        error,
        mtls_agent,
        f"our client certificate {pki.expired_client_cert} (hostAgent.tls.certFile) expired at "
        f"{validity.not_after:%Y-%m-%d %H:%M:%S} UTC: renew it",
    )


async def test_expired_agent_certificate_is_refused_by_the_daemon(pki: Pki) -> None:
    agent = await _serve(pki.server(expired=True))
    try:
        files = _files(pki.ca, pki.client_cert, pki.client_key)
        error = await _refused(_config(agent.target, files, **FAST))
        _handshake_failed(
            error,
            agent,
            "the agent's certificate (or a CA above it) has expired: renew it on the agent",
        )
        assert "CERTIFICATE_VERIFY_FAILED: certificate has expired" in str(error)
    finally:
        await agent.stop()


async def test_expired_agent_certificate_stops_the_start_up_bridge_check(pki: Pki) -> None:
    agent = await _serve(pki.server(expired=True))
    files = _files(pki.ca, pki.client_cert, pki.client_key)
    client = BridgePortClient(_config(agent.target, files, **FAST))
    try:
        with pytest.raises(PortError, match="has expired: renew it on the agent"):
            await client.missing_logical_bridges([RED])
    finally:
        await client.close()
        await agent.stop()
    assert agent.calls["GetLogicalBridge"] == 0


# --- certificate dates ------------------------------------------------------------------------


def test_certificate_dates_are_read_from_the_pem(pki: Pki, tmp_path: Path) -> None:
    now = datetime.now(UTC)
    valid = certificate_validity(pki.client_cert)
    expired = certificate_validity(pki.expired_client_cert)
    assert valid is not None and valid.not_before <= now < valid.not_after
    assert expired is not None and expired.not_after < now - timedelta(hours=23)
    assert expired.not_after - expired.not_before == timedelta(days=1)
    broken = tmp_path / "broken.pem"
    broken.write_text("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    assert certificate_validity(broken) is None
    assert certificate_validity(pki.client_key) is None
    assert certificate_validity(tmp_path / "missing.pem") is None


def test_a_client_certificate_not_valid_yet_points_at_the_clock(pki: Pki) -> None:
    tls = TLSConfig.model_validate(_files(pki.ca, pki.client_cert, pki.client_key))
    validity = certificate_validity(pki.client_cert)
    assert validity is not None
    earlier = validity.not_before - timedelta(days=1)
    assert handshake_hint(tls, "Socket closed", validity, now=earlier) == (
        f"our client certificate {pki.client_cert} (hostAgent.tls.certFile) is valid only from "
        f"{validity.not_before:%Y-%m-%d %H:%M:%S} UTC: check the node's clock"
    )


# --- unusable files: one line naming the field and the file ------------------------------------


def test_missing_ca_file_is_one_config_line(pki: Pki) -> None:
    missing = pki.dir / "nope" / "ca.pem"
    with pytest.raises(ConfigError) as caught:
        BridgePortClient(_config("127.0.0.1:50051", _files(missing)))
    assert caught.value.problems == [
        f"hostAgent.tls.caFile: cannot read {missing}: No such file or directory"
    ]


@pytest.mark.parametrize("field", ["certFile", "keyFile"])
def test_missing_client_cert_or_key_names_its_field(pki: Pki, field: str) -> None:
    files = _files(pki.ca, pki.client_cert, pki.client_key)
    files[field] = str(pki.dir / "missing.pem")
    with pytest.raises(ConfigError) as caught:
        BridgePortClient(_config("127.0.0.1:50051", files))
    assert caught.value.problems == [
        f"hostAgent.tls.{field}: cannot read {pki.dir / 'missing.pem'}: No such file or directory"
    ]


def test_a_directory_or_a_non_pem_file_is_refused(pki: Pki) -> None:
    with pytest.raises(ConfigError, match=r"^hostAgent\.tls\.caFile: cannot read .*: Is a dir"):
        BridgePortClient(_config("127.0.0.1:50051", _files(pki.dir)))
    junk = pki.dir / "junk.pem"
    junk.write_text("not a certificate\n")
    with pytest.raises(ConfigError) as caught:
        BridgePortClient(_config("127.0.0.1:50051", _files(junk)))
    assert caught.value.problems == [
        f"hostAgent.tls.caFile: {junk} is not PEM (no -----BEGIN line)"
    ]


def test_run_with_a_missing_ca_file_prints_one_line_and_exits_2(tmp_path: Path) -> None:
    missing = tmp_path / "ca.pem"
    (tmp_path / "bus" / "pci" / "devices").mkdir(parents=True)  # an empty sysfs
    config = tmp_path / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "hostAgent": {"endpoint": "127.0.0.1:50051", "tls": _files(missing)},
                "resourceList": [
                    {
                        "resourceName": "red",
                        "selectors": [{"pfNames": ["ens1f0"]}],
                        "bridgePort": {"logicalBridges": [RED]},
                    }
                ],
            }
        )
    )
    result = subprocess.run(
        [sys.executable, "-m", "xpu_bridge.cli", "run", "--config", str(config),
         "--kubelet-dir", str(tmp_path / "kubelet"), "--sysfs-root", str(tmp_path),
         "--devinfo-dir", str(tmp_path / "devinfo")],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [
        f"xpu-bridge: config {config}: hostAgent.tls.caFile: cannot read {missing}: "
        "No such file or directory"
    ]


# --- the simulated agent's TLS mode itself ---------------------------------------------------


def test_server_tls_requiring_client_auth_needs_a_client_ca(pki: Pki) -> None:
    with pytest.raises(ValueError, match="client_ca"):
        ServerTLS(pki.server_cert.read_bytes(), pki.server_key.read_bytes(), None, True)


async def test_server_tls_refuses_a_unix_socket(pki: Pki, tmp_path: Path) -> None:
    agent = SimHostAgent(tls=pki.server())
    with pytest.raises(ValueError, match="host:port"):
        await agent.start(f"unix://{tmp_path}/agent.sock")
    assert not agent.serving
