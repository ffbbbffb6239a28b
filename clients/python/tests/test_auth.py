"""Tokens with roles from Python: replicas started with --tokens-file, tokens made with
``flotilla token new``, sent by the client (``token=`` or $FLOTILLA_TOKEN)."""

from __future__ import annotations

import subprocess

import grpc
import pytest

import flotilla
from cluster import LocalCluster, flotilla_bin


def new_token(path, name, role, queues=""):
    args = [str(flotilla_bin()), "token", "new", "--name", name, "--role", role, "--tokens-file", str(path)]
    if queues:
        args += ["--queues", queues]
    out = subprocess.run(args, capture_output=True, text=True, check=True)
    token = out.stdout.strip()
    assert token.startswith("flt_")
    return token


@pytest.fixture
def secured(tmp_path):
    tokens = tmp_path / "tokens"
    made = {
        "admin": new_token(tokens, "ops", "admin"),
        "read": new_token(tokens, "viewer", "read"),
        "submit": new_token(tokens, "ci", "submit", "py-builds"),
    }
    (tmp_path / "cluster").mkdir()
    c = LocalCluster(tmp_path / "cluster", extra_args=["--tokens-file", str(tokens)], token=made["admin"])
    try:
        c.start_all()
        c.wait_for_leader()
        yield c, made
    finally:
        c.close()


def spec(queue, key):
    return flotilla.TaskSpec(queue=queue, payload=b"{}", idempotency_key=key)


def test_calls_need_a_token_whose_role_allows_them(secured, monkeypatch):
    cluster, tokens = secured
    monkeypatch.delenv("FLOTILLA_TOKEN", raising=False)
    monkeypatch.delenv("FLOTILLA_TOKEN_FILE", raising=False)
    with flotilla.Client(cluster.addrs, call_timeout=10) as anonymous:
        with pytest.raises(flotilla.UnauthenticatedError) as e:
            anonymous.submit_batch([spec("py-builds", "a1")])
        assert e.value.code == grpc.StatusCode.UNAUTHENTICATED
        assert "no token" in e.value.message
    with flotilla.Client(cluster.addrs, call_timeout=10, token=tokens["read"]) as reader:
        assert reader.list().tasks == []
        with pytest.raises(flotilla.PermissionDeniedError) as e:
            reader.submit_batch([spec("py-builds", "r1")])
        assert "has role read" in e.value.message
    with flotilla.Client(cluster.addrs, call_timeout=10, token=tokens["submit"]) as ci:
        with pytest.raises(flotilla.PermissionDeniedError) as e:
            ci.submit_batch([spec("py-builds", "s0"), spec("elsewhere", "s0b")])
        assert "tasks[1].queue" in e.value.message
    # From the environment, as the CLI does.
    monkeypatch.setenv("FLOTILLA_TOKEN", tokens["submit"])
    with flotilla.Client(cluster.addrs, call_timeout=10) as ci:
        ids = [s.id for s in ci.submit_batch([spec("py-builds", "s1")])]
    with flotilla.Client(cluster.addrs, call_timeout=10, token=tokens["admin"]) as admin:
        assert [t.id for t in admin.list().tasks] == ids
