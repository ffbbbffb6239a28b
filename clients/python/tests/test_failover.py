"""Leader SIGKILL: acknowledged submits are all there exactly once, and a Python worker follows
the new leader without running its attempt again."""

from __future__ import annotations

import collections
import logging
import threading
import time

import flotilla
from flotilla import TaskSpec, TaskState, Worker

SUBMITTERS = 4
PER_SUBMITTER = 60


class RetryCounter(logging.Handler):
    """Counts the client's "retrying submit" debug records."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("retrying submit"):
            self.count += 1


def test_leader_sigkill_during_submits_loses_nothing_acknowledged_and_doubles_nothing(fresh_cluster):
    cluster = fresh_cluster
    retries = RetryCounter()
    client_log = logging.getLogger("flotilla.client")
    client_log.addHandler(retries)
    level = client_log.level
    client_log.setLevel(logging.DEBUG)
    try:
        _submit_through_a_leader_kill(cluster, retries)
    finally:
        client_log.removeHandler(retries)
        client_log.setLevel(level)


def _submit_through_a_leader_kill(cluster, retries: RetryCounter) -> None:
    old = cluster.wait_for_leader()
    acked = {}  # payload -> id, every submit the cluster acknowledged
    failures = []
    lock = threading.Lock()
    halfway = threading.Barrier(SUBMITTERS + 1)

    # No idempotency keys from the caller: the client's own (one per task, kept across its
    # retries) are what must keep a retried submit from creating a second task.
    with flotilla.Client(cluster.addrs, call_timeout=60) as client:

        def submitter(s: int) -> None:
            try:
                for i in range(PER_SUBMITTER):
                    if i == PER_SUBMITTER // 3:
                        halfway.wait(30)
                    payload = f"{s}-{i}".encode()
                    tid = client.submit(TaskSpec(queue="failover", payload=payload))
                    with lock:
                        acked[payload] = tid
            except BaseException as e:  # noqa: BLE001 - reported below
                failures.append(repr(e))
                halfway.abort()

        threads = [threading.Thread(target=submitter, args=(s,)) for s in range(SUBMITTERS)]
        for t in threads:
            t.start()
        halfway.wait(30)  # every submitter has acknowledged tasks and is submitting more
        cluster.kill(old)
        killed_at = time.monotonic()
        with lock:
            acked_before_kill = len(acked)
        for t in threads:
            t.join(120)
        assert not failures, failures
        assert len(acked) == SUBMITTERS * PER_SUBMITTER
        assert acked_before_kill < len(acked) * 3 // 4, "most submits went through the failover"
        assert retries.count > 0, "no submit was retried: the kill missed them"

        new = cluster.wait_for_leader()
        assert new != old
        assert time.monotonic() - killed_at < 30

        tasks = list(client.iter_tasks(queue="failover", page_size=100))
        by_payload = collections.defaultdict(list)
        for t in tasks:
            by_payload[t.spec.payload].append(t.id)
        doubled = {p: ids for p, ids in by_payload.items() if len(ids) > 1}
        assert not doubled, f"tasks created twice: {doubled}"
        missing = {p: i for p, i in acked.items() if by_payload.get(p) != [i]}
        assert not missing, f"acknowledged but absent or under another id: {missing}"
        assert len(tasks) == len(acked), "exactly the acknowledged tasks exist"
        assert client.cluster_status(cluster.addr(new)).leader_id == new


def test_worker_follows_a_new_leader_without_running_its_attempt_again(fresh_cluster):
    cluster = fresh_cluster
    old = cluster.wait_for_leader()
    calls = collections.Counter()
    lock = threading.Lock()
    release = threading.Event()

    def handler(ctx):
        with lock:
            calls[(ctx.task_id, ctx.attempt)] += 1
        if ctx.payload == b"held":
            release.wait(60)
        return b"done:" + ctx.payload

    with flotilla.Client(cluster.addrs) as client:
        held = client.submit(b"held", queue="q")
        with Worker(client, "py-failover", handler, slots=2, heartbeat_interval=0.2) as w:
            deadline = time.monotonic() + 15
            while calls[(held, 1)] == 0:
                assert time.monotonic() < deadline, "held task never started"
                time.sleep(0.02)
            assert w._stream_addr == cluster.addr(old)

            cluster.kill(old)
            new = cluster.wait_for_leader()
            deadline = time.monotonic() + 20
            while w._stream_addr != cluster.addr(new):
                assert time.monotonic() < deadline, "worker did not register with the new leader"
                time.sleep(0.05)

            # The new leader redelivers the running attempt; it keeps running here, once.
            deadline = time.monotonic() + 10
            while w.redeliveries_ignored == 0:
                assert time.monotonic() < deadline, "the new leader never redelivered the attempt"
                time.sleep(0.02)
            assert w.running_attempts() == [(held, 1)]
            release.set()
            t = client.wait(held, timeout=30)
            assert t.state is TaskState.SUCCEEDED and t.attempts == 1 and t.result == b"done:held"

            # New work reaches the worker through the new leader.
            after = client.submit(b"after", queue="q")
            t2 = client.wait(after, timeout=30)
            assert t2.state is TaskState.SUCCEEDED and t2.result == b"done:after"
            assert {i.id: i.connected for i in client.list_workers()}["py-failover"]
    assert calls == {(held, 1): 1, (after, 1): 1}
    assert w.reported == {"completed": 2, "failed": 0}
