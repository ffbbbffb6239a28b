"""The Python worker runtime against a real cluster: success, retry then failure, cancellation,
redelivery never runs an attempt twice, draining stop, and command tasks shared with the Rust
CLI and worker."""

from __future__ import annotations

import collections
import json
import subprocess
import threading
import time
import uuid

import pytest

import flotilla
from flotilla import CommandHandler, CommandPayload, TaskFailed, TaskSpec, TaskState, Worker


def queue() -> str:
    return f"w-{uuid.uuid4().hex[:12]}"


class Calls:
    """Every (task, attempt) a handler was invoked with, thread-safe."""

    def __init__(self):
        self.lock = threading.Lock()
        self.seen = collections.Counter()

    def add(self, ctx) -> None:
        with self.lock:
            self.seen[(ctx.task_id, ctx.attempt)] += 1


def wait_until(cond, timeout: float = 15.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_worker_runs_tasks_to_success(client):
    q = queue()
    calls = Calls()

    def square(ctx):
        calls.add(ctx)
        assert ctx.queue == q and ctx.checkpoint is None and not ctx.cancelled.is_set()
        n = int(ctx.payload)
        return str(n * n)

    ids = {s.id: n for s, n in zip(client.submit_batch([TaskSpec(queue=q, payload=b"%d" % n) for n in range(20)]), range(20))}
    with Worker(client, f"py-{q}", square, slots=4, queues=[q], heartbeat_interval=0.2) as w:
        for tid, n in ids.items():
            t = client.wait(tid, timeout=30)
            assert t.state is TaskState.SUCCEEDED, t
            assert t.result == str(n * n).encode()
            assert t.attempts == 1
        infos = {i.id: i for i in client.list_workers()}
        assert infos[w.id].connected and infos[w.id].slots == 4 and list(infos[w.id].queues) == [q]
    assert w.reported == {"completed": 20, "failed": 0}
    assert calls.seen == {(tid, 1): 1 for tid in ids}


def test_failing_handler_is_retried_then_the_task_fails(client):
    q = queue()
    calls = Calls()

    def broken(ctx):
        calls.add(ctx)
        raise RuntimeError(f"boom on attempt {ctx.attempt}")

    def refuses(ctx):
        calls.add(ctx)
        raise TaskFailed("bad input, do not retry", retryable=False)

    retried = client.submit(b"x", queue=q, max_attempts=2)
    with Worker(client, f"py-{q}", broken, slots=2, queues=[q], heartbeat_interval=0.2):
        t = client.wait(retried, timeout=30)
    assert t.state is TaskState.FAILED
    assert t.attempts == 2
    assert "RuntimeError: boom on attempt 2" in t.reason
    assert calls.seen == {(retried, 1): 1, (retried, 2): 1}

    q2 = queue()
    final = client.submit(b"x", queue=q2, max_attempts=3)
    with Worker(client, f"py-{q2}", refuses, queues=[q2], heartbeat_interval=0.2):
        t = client.wait(final, timeout=30)
    assert t.state is TaskState.FAILED and t.attempts == 1
    assert t.reason == "bad input, do not retry"


def test_cancel_stops_the_attempt_and_its_outcome_is_dropped(client):
    q = queue()
    started = threading.Event()
    saw_cancel = threading.Event()

    def slow(ctx):
        started.set()
        if ctx.cancelled.wait(30):
            saw_cancel.set()
        return b"too late"

    tid = client.submit(b"", queue=q)
    with Worker(client, f"py-{q}", slow, queues=[q], heartbeat_interval=0.2) as w:
        assert started.wait(15)
        assert client.get(tid).state is TaskState.RUNNING
        assert client.cancel(tid) is TaskState.RUNNING
        assert saw_cancel.wait(10), "the heartbeat answer did not cancel the attempt"
        wait_until(lambda: w.running_attempts() == [], what="attempt to leave the worker")
        t = client.get(tid)
    assert t.state is TaskState.CANCELLED and t.result is None
    assert w.reported == {"completed": 0, "failed": 0}


def test_checkpoint_and_timeout(client):
    q = queue()
    seen = []

    def resumable(ctx):
        seen.append((ctx.attempt, ctx.checkpoint, ctx.timeout))
        if ctx.attempt == 1:
            ctx.save_checkpoint(500, b"half")
            ctx.cancelled.wait(10)  # runs past its timeout
            return b"never reported"
        return b"resumed from " + ctx.checkpoint

    tid = client.submit(b"", queue=q, timeout_ms=800, max_attempts=2)
    with Worker(client, f"py-{q}", resumable, queues=[q], heartbeat_interval=0.2):
        t = client.wait(tid, timeout=30)
    assert t.state is TaskState.SUCCEEDED, t
    assert t.result == b"resumed from half"
    assert t.attempts == 2
    assert seen == [(1, None, 0.8), (2, b"half", 0.8)]


def test_redelivered_attempt_never_runs_twice(client):
    """Breaking the stream makes the worker register again; the leader then redelivers every
    attempt the state says it runs. The running one must not start again."""
    q = queue()
    calls = Calls()
    release = threading.Event()

    def held(ctx):
        calls.add(ctx)
        release.wait(30)
        return b"once"

    tid = client.submit(b"", queue=q)
    with Worker(client, f"py-{q}", held, slots=2, queues=[q], heartbeat_interval=0.2) as w:
        wait_until(lambda: calls.seen[(tid, 1)] == 1, what="first start")
        for _ in range(2):
            old = w._stream
            old.cancel()  # as a broken connection would
            wait_until(lambda: w._stream is not None and w._stream is not old, what="re-registration")
            time.sleep(0.3)  # the redelivery arrives right after registering
        assert w.running_attempts() == [(tid, 1)]
        assert w.redeliveries_ignored >= 2  # the leader did send it again, twice
        release.set()
        t = client.wait(tid, timeout=30)
    assert t.state is TaskState.SUCCEEDED and t.result == b"once" and t.attempts == 1
    assert calls.seen == {(tid, 1): 1}


def test_stop_drains_running_attempts(client):
    q = queue()
    started = threading.Event()

    def slowish(ctx):
        started.set()
        time.sleep(1.0)
        return b"drained"

    tid = client.submit(b"", queue=q)
    w = Worker(client, f"py-{q}", slowish, queues=[q], heartbeat_interval=0.2, drain_timeout=20).start()
    assert started.wait(15)
    t0 = time.monotonic()
    w.stop(timeout=30)
    assert not w._thread.is_alive()
    assert time.monotonic() - t0 >= 0.5  # it waited for the handler
    t = client.get(tid)
    assert t.state is TaskState.SUCCEEDED and t.result == b"drained"
    # A stopped worker takes no more work: its stream is closed.
    info = {i.id: i for i in client.list_workers()}[w.id]
    assert not info.connected


def test_worker_refused_for_bad_id(client):
    w = Worker(client, "", lambda ctx: None, heartbeat_interval=0.2)
    with pytest.raises(flotilla.InvalidArgumentError) as e:
        w.run()
    assert e.value.field == "worker.id"
    # In the background, the error ends the worker and stop() raises it.
    bg = Worker(client, "x" * 200, lambda ctx: None, heartbeat_interval=0.2).start()
    bg._thread.join(15)
    assert isinstance(bg.error, flotilla.InvalidArgumentError) and bg.error.field == "worker.id"
    with pytest.raises(flotilla.InvalidArgumentError):
        bg.stop()


def test_second_session_of_a_worker_id_waits_for_the_first(client):
    """A second Worker with a live worker's id is refused (ALREADY_EXISTS) and keeps trying
    instead of running beside it; stop() ends it promptly."""
    q = queue()
    first = Worker(client, f"py-{q}", lambda ctx: None, queues=[q], heartbeat_interval=0.2).start()
    try:
        deadline = time.monotonic() + 15
        while not first.registered:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        second = Worker(client, f"py-{q}", lambda ctx: None, queues=[q], heartbeat_interval=0.2).start()
        time.sleep(1.0)
        assert not second.registered
        t0 = time.monotonic()
        second.stop(timeout=10)
        assert not second._thread.is_alive() and time.monotonic() - t0 < 5
    finally:
        first.stop(timeout=10)


def test_command_payload_matches_the_rust_cli(cluster, client):
    q = queue()
    out = subprocess.run(
        [str(cluster.bin), "--cluster", ",".join(cluster.addrs), "--json", "submit", "--queue", q,
         "--", "sh", "-c", "echo ünï $0", "x y"],
        check=True, capture_output=True, text=True, timeout=30,
    )
    tid = json.loads(out.stdout)["id"]
    payload = client.get(tid).spec.payload
    cmd = CommandPayload.decode(payload)
    assert cmd.argv == ["sh", "-c", "echo ünï $0", "x y"] and cmd.env == {} and cmd.cwd is None
    # Byte for byte what the Rust side writes.
    assert cmd.encode() == payload
    assert flotilla.command_payload(["sh", "-c", "echo ünï $0", "x y"]) == payload
    client.cancel(tid)
    with_env = CommandPayload(["env"], {"B": "2", "A": "1"}, "/tmp").encode()
    assert with_env == b'{"argv":["env"],"env":{"A":"1","B":"2"},"cwd":"/tmp"}'
    with pytest.raises(ValueError):
        CommandPayload.decode(b"not json")


def test_python_command_worker_runs_a_cli_submitted_task(cluster, client):
    q = queue()
    out = subprocess.run(
        [str(cluster.bin), "--cluster", ",".join(cluster.addrs), "--json", "submit", "--queue", q,
         "--", "sh", "-c", "echo out-$FLOTILLA_TASK_ID-$FLOTILLA_ATTEMPT; echo err >&2"],
        check=True, capture_output=True, text=True, timeout=30,
    )
    tid = json.loads(out.stdout)["id"]
    failing = client.submit_command(["sh", "-c", "echo nope >&2; exit 3"], queue=q, max_attempts=1)
    with Worker(client, f"py-{q}", CommandHandler(), queues=[q], heartbeat_interval=0.2):
        t = client.wait(tid, timeout=30)
        f = client.wait(failing, timeout=30)
    assert t.state is TaskState.SUCCEEDED, t
    assert json.loads(t.result) == {"exit_code": 0, "stdout": f"out-{tid}-1\n", "stderr": "err\n"}
    assert f.state is TaskState.FAILED and f.reason == "exit code 3: nope"


def test_rust_worker_runs_a_python_submitted_command(cluster, client):
    q = queue()
    tid = client.submit_command(["sh", "-c", 'printf "%s|%s" "$GREETING" "$(pwd)"'], env={"GREETING": "hi"}, cwd="/tmp", queue=q)
    rust = cluster.spawn(
        ["worker", "--cluster", ",".join(cluster.addrs), "--id", f"rust-{q}", "--queue", q, "--heartbeat-ms", "200"],
        f"worker-rust-{q}.log",
    )
    try:
        t = client.wait(tid, timeout=30)
    finally:
        rust.kill()
        rust.wait()
    assert t.state is TaskState.SUCCEEDED, t
    assert json.loads(t.result) == {"exit_code": 0, "stdout": "hi|/tmp", "stderr": ""}
