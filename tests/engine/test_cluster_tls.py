"""pvtbuild on a TLS dask cluster, and a cluster without workers: real `dask scheduler --protocol tls` and
`dask worker` processes on 127.0.0.1 with certificates made at test time (a CA and the certificates it signs,
with the `cryptography` package), and the CLI in its own process, as a user runs it. The client's
certificates come from dask's config (a YAML file, or DASK_DISTRIBUTED__COMM__TLS__* variables), nothing
pvtbuild-specific. Each run is bounded by a timeout that only guards against hangs.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import json
import os
import socket
import ssl
import subprocess
import time
from pathlib import Path
from typing import Iterator

import dask
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from distributed import Client
from distributed.security import Security
from test_distributed import (
    BIN,
    HANG_GUARD,
    demo_inputs,
    free_port,
    run_cli,
    stage_files,
    stock_env,
    stopped_afterwards,
)

from pvtbuild.engine.executor import open_executor
from pvtbuild.engine.tasks import Task

N_CLIPS = 4
PIPELINE = """\
name: tls-test
seed: 0
render:
  clips_per_shard: 2
exec:
  jobs: 1
  wait_for_workers: 2
"""
TLS_ENV = {"ca": "DASK_DISTRIBUTED__COMM__TLS__CA_FILE", "cert": "DASK_DISTRIBUTED__COMM__TLS__CLIENT__CERT",
           "key": "DASK_DISTRIBUTED__COMM__TLS__CLIENT__KEY"}


# --- certificates -----------------------------------------------------------------------


def _write_cert(folder: Path, name: str, issuer: tuple | None) -> tuple:
    """`name`.pem and `name`-key.pem: a CA (issuer None: self-signed) or a certificate `issuer` signs."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"pvtbuild-test-{name}")])
    issuer_cert, issuer_key = issuer or (None, key)
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(subject)
               .issuer_name(issuer_cert.subject if issuer_cert else subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True))
    if issuer is None:
        builder = builder.add_extension(x509.KeyUsage(
            digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
            key_encipherment=False, data_encipherment=False, key_agreement=False, encipher_only=False,
            decipher_only=False), critical=True)
    else:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
    cert = builder.sign(issuer_key, hashes.SHA256())
    (folder / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / f"{name}-key.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return cert, key


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> Path:
    """ca.pem signs scheduler, worker and client; other-ca.pem signs stranger (a certificate the cluster does
    not trust)."""
    folder = tmp_path_factory.mktemp("certs")
    ca = _write_cert(folder, "ca", None)
    for name in ("scheduler", "worker", "client"):
        _write_cert(folder, name, ca)
    _write_cert(folder, "stranger", _write_cert(folder, "other-ca", None))
    return folder


def tls_flags(certs: Path, name: str) -> list[str]:
    return ["--tls-ca-file", str(certs / "ca.pem"), "--tls-cert", str(certs / f"{name}.pem"),
            "--tls-key", str(certs / f"{name}-key.pem")]


# --- clusters ---------------------------------------------------------------------------


@contextlib.contextmanager
def started(tmp_path: Path, scheduler_args: list[str], worker_args: list[str] | None) -> Iterator[list]:
    """A `dask scheduler` (and a `dask worker` with `worker_args`, unless None) in their own sessions, stock
    environment; all of them stopped, by session, afterwards."""
    with stopped_afterwards() as procs:
        procs.append(subprocess.Popen(
            [str(BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--dashboard-address", "127.0.0.1:0",
             *scheduler_args], cwd=tmp_path, env=stock_env(), stdout=subprocess.DEVNULL,
            stderr=open(tmp_path / "scheduler.log", "w"), start_new_session=True))
        if worker_args is not None:
            procs.append(subprocess.Popen(
                [str(BIN / "dask"), "worker", *worker_args, "--host", "127.0.0.1", "--nworkers", "1",
                 "--nthreads", "1"],
                cwd=tmp_path, env=stock_env(), stdout=subprocess.DEVNULL, stderr=open(tmp_path / "worker.log", "w"),
                start_new_session=True))
        yield procs


def wait_listening(port: int, proc: subprocess.Popen, log: Path) -> None:
    for _ in range(HANG_GUARD * 10):
        assert proc.poll() is None, f"the scheduler exited:\n{log.read_text()[-2000:]}"
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1.0):
            return
        time.sleep(0.1)
    raise AssertionError("the scheduler did not listen")


SCHEDULER_LOGS: dict[str, Path] = {}  # of the running TLS clusters, by address


@pytest.fixture(scope="module")
def tls_cluster(certs, tmp_path_factory) -> Iterator[str]:
    """`dask scheduler --protocol tls` and one `dask worker` with their certificates; yields tls://127.0.0.1:PORT."""
    tmp = tmp_path_factory.mktemp("tls-cluster")
    port = free_port()
    address = f"tls://127.0.0.1:{port}"
    with started(tmp, ["--port", str(port), "--protocol", "tls", *tls_flags(certs, "scheduler")],
                 [address, *tls_flags(certs, "worker")]):
        security = Security(tls_ca_file=str(certs / "ca.pem"), tls_client_cert=str(certs / "client.pem"),
                            tls_client_key=str(certs / "client-key.pem"), require_encryption=True)
        with Client(address, security=security, timeout="60s") as client:
            client.wait_for_workers(1, timeout=HANG_GUARD)
        SCHEDULER_LOGS[address] = tmp / "scheduler.log"
        yield address


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> tuple[Path, Path, Path]:
    """(pipeline, selection manifest of N_CLIPS demo clips, reference render made in-process)."""
    return demo_inputs(tmp_path_factory.mktemp("tls-inputs"), PIPELINE, N_CLIPS)


@pytest.fixture
def no_dask_env(monkeypatch):
    """The CLI sees no DASK_* variable but those a test sets."""
    for name in [k for k in os.environ if k.startswith("DASK_")]:
        monkeypatch.delenv(name)
    return monkeypatch


def render(inputs, out: Path, address: str) -> subprocess.CompletedProcess:
    pipeline, selection, _ = inputs
    return run_cli("render", "--pipeline", pipeline, "--midi", selection, "--out", out, "--scheduler", address)


def one_line(result: subprocess.CompletedProcess) -> str:
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    return lines[0]


# --- tests ------------------------------------------------------------------------------


def test_a_tls_cluster_renders_the_same_bytes_with_the_client_certificate_from_a_dask_config_file(
        inputs, certs, tls_cluster, no_dask_env, tmp_path):
    config = tmp_path / "dask"
    config.mkdir()
    (config / "distributed.yaml").write_text(
        "distributed:\n  comm:\n    require-encryption: true\n    tls:\n"
        f"      ca-file: {certs / 'ca.pem'}\n      client:\n"
        f"        cert: {certs / 'client.pem'}\n        key: {certs / 'client-key.pem'}\n")
    no_dask_env.setenv("DASK_CONFIG", str(config))

    result = render(inputs, tmp_path / "out", tls_cluster)

    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    rows = [json.loads(line) for line in (tmp_path / "out" / "render" / "manifest.jsonl").read_text().splitlines()]
    assert [r["status"] for r in rows] == ["ok"] * N_CLIPS
    assert stage_files(tmp_path / "out" / "render") == stage_files(inputs[2] / "render")


def test_a_tls_scheduler_refuses_a_connection_without_a_client_certificate(certs, tls_cluster):
    """The scheduler itself, not only pvtbuild's check: TLS that trusts its CA but shows no certificate is cut off."""
    context = ssl.create_default_context(cafile=str(certs / "ca.pem"))
    context.check_hostname = False
    port = int(tls_cluster.rsplit(":", 1)[1])
    answer: bytes | Exception
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, context.wrap_socket(raw) as tls:
            tls.sendall(b"\0" * 8)
            answer = tls.recv(1)
    except (ssl.SSLError, ConnectionError) as e:  # an alert, a reset, an EOF mid-record
        answer = e
    assert answer == b"" or isinstance(answer, Exception), f"the scheduler answered {answer!r}"
    deadline = time.monotonic() + 30  # the scheduler logs the failed handshake when it gets to it
    while not any(why in (log := SCHEDULER_LOGS[tls_cluster].read_text()).upper()
                  for why in ("PEER DID NOT RETURN A CERTIFICATE", "CERTIFICATE_REQUIRED")):
        assert time.monotonic() < deadline, log[-2000:]
        time.sleep(0.1)


def test_pvtbuild_without_a_client_certificate_is_one_line_naming_the_scheduler_and_the_config_keys(
        inputs, certs, tls_cluster, no_dask_env, tmp_path):
    no_dask_env.setenv(TLS_ENV["ca"], str(certs / "ca.pem"))  # a CA but no certificate of its own

    line = one_line(render(inputs, tmp_path / "out", tls_cluster))

    assert line.startswith(f"pvtbuild: error: TLS scheduler {tls_cluster}: no client certificate configured "
                           "(distributed.comm.tls.client.cert unset); set distributed.comm.tls.ca-file, "), line
    assert "DASK_DISTRIBUTED__COMM__TLS__CLIENT__CERT" in line
    assert not (tmp_path / "out" / "render").exists()


def test_pvtbuild_with_a_certificate_the_scheduler_does_not_trust_is_refused_with_one_line(
        inputs, certs, tls_cluster, no_dask_env, tmp_path):
    no_dask_env.setenv(TLS_ENV["ca"], str(certs / "ca.pem"))
    no_dask_env.setenv(TLS_ENV["cert"], str(certs / "stranger.pem"))  # signed by another CA
    no_dask_env.setenv(TLS_ENV["key"], str(certs / "stranger-key.pem"))

    line = one_line(render(inputs, tmp_path / "out", tls_cluster))

    # the reason after that is dask's: the scheduler's alert (unknown ca) or, when the scheduler
    # hangs up before the alert is read, a closed connection
    assert line.startswith(f"pvtbuild: error: TLS scheduler {tls_cluster} and this client do not accept each "
                           "other's certificates"), line
    assert not (tmp_path / "out" / "render").exists()


def test_pvtbuild_with_tcp_to_a_tls_scheduler_says_to_use_tls_in_one_line(inputs, tls_cluster, no_dask_env, tmp_path):
    address = tls_cluster.replace("tls://", "tcp://")

    line = one_line(render(inputs, tmp_path / "out", address))

    assert line.startswith(f"pvtbuild: error: dask scheduler {address} speaks TLS: connect with "
                           f"{tls_cluster}, with this client's certificates in dask config"), line


def test_a_scheduler_without_workers_stops_the_run_after_exec_wait_for_workers_with_one_line(
        inputs, no_dask_env, tmp_path):
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    with started(tmp_path, ["--port", str(port)], None) as (scheduler,):
        wait_listening(port, scheduler, tmp_path / "scheduler.log")
        line = one_line(render(inputs, tmp_path / "out", address))  # the pipeline says exec.wait_for_workers: 2

    assert line == (f"pvtbuild: error: dask scheduler {address}: no worker connected within 2 s "
                    f"(exec.wait_for_workers); start workers with `dask worker {address}`")
    assert not (tmp_path / "out" / "render").exists()


def test_a_local_cluster_under_dask_config_requiring_encryption_runs_over_tls_with_temporary_certificates():
    """A user's dask config with `require-encryption: true` (for their TLS cluster) must not break runs
    without --scheduler: the local cluster gets certificates of its own."""
    with dask.config.set({"distributed.comm.require-encryption": True}):
        with open_executor(None, jobs=1, quiet=True) as ex:
            assert ex.client.scheduler.address.startswith("tls://127.0.0.1:")
            assert [r for _, r in ex.run([Task("tls-0", abs, (-3,))], desc="tls")] == [3]


def test_pvtbuild_with_tls_to_a_plain_scheduler_says_it_does_not_speak_tls_in_one_line(
        inputs, certs, no_dask_env, tmp_path):
    for name, file in (("ca", "ca.pem"), ("cert", "client.pem"), ("key", "client-key.pem")):
        no_dask_env.setenv(TLS_ENV[name], str(certs / file))
    port = free_port()
    with started(tmp_path, ["--port", str(port)], None) as (scheduler,):
        wait_listening(port, scheduler, tmp_path / "scheduler.log")
        line = one_line(render(inputs, tmp_path / "out", f"tls://127.0.0.1:{port}"))

    assert line.startswith(f"pvtbuild: error: dask scheduler tls://127.0.0.1:{port} does not speak TLS: "
                           f"connect with tcp://127.0.0.1:{port}"), line
