"""TLS from Python: replicas started with --tls-cert/--tls-key/--tls-client-ca (certificates
made by ``flotilla cert``) and tokens; the client and a Python worker over TLS; a plain client
and a client trusting another CA get nowhere."""

from __future__ import annotations

import subprocess

import pytest

import flotilla
from cluster import LocalCluster, flotilla_bin
from test_auth import new_token


def cert(*args):
    subprocess.run([str(flotilla_bin()), "cert", *args], capture_output=True, text=True, check=True)


@pytest.fixture
def tls_cluster(tmp_path):
    ca_dir = tmp_path / "tls"
    cert("ca", "--out", str(ca_dir))
    cert("issue", "--ca-dir", str(ca_dir), "--name", "replica", "--peer", "--host", "127.0.0.1")
    tokens = tmp_path / "tokens"
    made = {"admin": new_token(tokens, "ops", "admin"), "runner": new_token(tokens, "runner", "worker")}
    tls = flotilla.Tls(str(ca_dir / "ca.pem"))
    (tmp_path / "cluster").mkdir()
    c = LocalCluster(
        tmp_path / "cluster",
        extra_args=[
            "--tokens-file", str(tokens),
            "--tls-cert", str(ca_dir / "replica.pem"),
            "--tls-key", str(ca_dir / "replica.key"),
            "--tls-client-ca", str(ca_dir / "ca.pem"),
        ],
        token=made["admin"],
        tls=tls,
    )
    try:
        c.start_all()
        c.wait_for_leader()
        yield c, made, tls, tmp_path
    finally:
        c.close()


def test_client_and_worker_over_tls(tls_cluster):
    cluster, tokens, tls, tmp_path = tls_cluster
    addrs = cluster.addrs
    with flotilla.Client(addrs, call_timeout=20, token=tokens["admin"], tls=tls) as admin, flotilla.Client(
        addrs, call_timeout=20, token=tokens["runner"], tls=tls
    ) as runner:
        task_id = admin.submit(flotilla.TaskSpec(queue="py-tls", payload=b"7", idempotency_key="tls-1"))
        with flotilla.Worker(runner, "py-tls-worker", lambda ctx: b"49", queues=["py-tls"], heartbeat_interval=0.2):
            done = admin.wait(task_id, timeout=20)
        assert (done.state, done.result) == (flotilla.TaskState.SUCCEEDED, b"49")

    # Plain TCP to TLS replicas, or TLS trusting another CA: no answer, nothing submitted.
    cert("ca", "--out", str(tmp_path / "other"))
    for tls_ in (None, flotilla.Tls(str(tmp_path / "other" / "ca.pem"))):
        with flotilla.Client(addrs, call_timeout=2, token=tokens["admin"], tls=tls_) as c:
            with pytest.raises(flotilla.FlotillaError):
                c.submit(flotilla.TaskSpec(queue="py-tls", payload=b"", idempotency_key="refused"))
    with flotilla.Client(addrs, call_timeout=10, token=tokens["admin"], tls=tls) as admin:
        assert [t.id for t in admin.list(queue="py-tls").tasks] == [task_id]

    # A bad CA file is refused when the client is made, naming the file.
    with pytest.raises(ValueError, match="absent.pem"):
        flotilla.Tls(str(tmp_path / "absent.pem"))
