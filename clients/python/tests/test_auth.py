"""Tokens with roles from Python: replicas started with --tokens-file, tokens made with
``flotilla token new``, sent by the client (``token=`` or $FLOTILLA_TOKEN)."""

from __future__ import annotations

import subprocess

import grpc
import pytest

import flotilla
from flotilla._proto import flotilla_pb2 as pb
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
        "runner-a": new_token(tokens, "runner-a", "worker"),
        "runner-b": new_token(tokens, "runner-b", "worker"),
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


def test_a_worker_cannot_be_impersonated_even_knowing_the_attempt(secured):
    """Reports are bound to the session the worker registered with and to its token."""
    cluster, tokens = secured
    addrs = cluster.addrs
    with flotilla.Client(addrs, call_timeout=10, token=tokens["admin"]) as admin, flotilla.Client(
        addrs, call_timeout=10, token=tokens["runner-a"]
    ) as a, flotilla.Client(addrs, call_timeout=10, token=tokens["runner-b"]) as b, flotilla.Client(
        addrs, call_timeout=10, token=tokens["submit"]
    ) as ci:
        task_id = ci.submit(spec("py-builds", "imp-1"))
        session = "py-the-worker-process-secret"
        worker = pb.WorkerSpec(id="wa", session=session, slots=1, cpu_millis=1000, mem_mb=1024)
        stream, _ = a.register_worker(worker)
        try:
            event = next(iter(stream))
            assert event.assignment.task_id == task_id, event
            attempt = event.assignment.attempt
            t = admin.get(task_id)
            assert (t.state, t.attempts, t.worker) == (flotilla.TaskState.RUNNING, attempt, "wa")

            with pytest.raises(flotilla.PermissionDeniedError) as e:
                ci.complete_task("wa", session, task_id, attempt, b"forged")
            assert "has role submit" in e.value.message
            for call in (
                lambda: b.complete_task("wa", session, task_id, attempt, b"forged"),
                lambda: b.fail_task("wa", session, task_id, attempt, "forged", False),
                lambda: b.checkpoint("wa", session, task_id, attempt, 900, b"forged"),
            ):
                with pytest.raises(flotilla.PermissionDeniedError) as e:
                    call()
                assert "registered with another token" in e.value.message
            with pytest.raises(flotilla.PermissionDeniedError) as e:
                a.complete_task("wa", "guess", task_id, attempt, b"forged")
            assert "session" in e.value.message
            assert [w.id for w in admin.list_workers()] == ["wa"]

            t = admin.get(task_id)
            assert (t.state, t.attempts, t.result) == (flotilla.TaskState.RUNNING, attempt, None)
            a.complete_task("wa", session, task_id, attempt, b"ok")
            t = admin.get(task_id)
            assert (t.state, t.result) == (flotilla.TaskState.SUCCEEDED, b"ok")
        finally:
            stream.cancel()
