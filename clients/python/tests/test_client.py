"""The client API against a real 3-replica cluster: submit/get/wait/cancel/list, idempotency,
bad input, leader hints, cluster status."""

from __future__ import annotations

import json
import subprocess
import time
import uuid

import grpc
import pytest

import flotilla
from flotilla import Consistency, TaskSpec, TaskState


def queue() -> str:
    """A queue of the test's own on the shared cluster (no worker serves it)."""
    return f"q-{uuid.uuid4().hex[:12]}"


def test_cluster_status_names_one_leader_and_every_member(cluster, client):
    leader = cluster.wait_for_leader()
    for node_id, addr in cluster.peers.items():
        s = client.cluster_status(addr)
        assert s.node_id == node_id
        assert s.cluster_name == "flotilla-python"
        assert s.leader_id == leader
        assert s.leader_addr == cluster.addr(leader)
        assert s.role == ("leader" if node_id == leader else "follower")
        assert sorted((m.id, m.addr) for m in s.members) == sorted(cluster.peers.items())
        assert all(m.voter for m in s.members)
        assert s.term >= 1 and s.commit_index >= 1
    # Without an address: the first replica that answers.
    assert client.cluster_status().node_id in cluster.peers


def test_submit_get_wait_cancel(client):
    q = queue()
    spec = TaskSpec(
        queue=q,
        payload=b"\x00binary\xff",
        priority=7,
        labels={"gpu": "yes"},
        max_attempts=5,
        estimate_ms=1500,
        cpu_millis=250,
        mem_mb=64,
        timeout_ms=60_000,
    )
    tid = client.submit(spec)
    assert isinstance(tid, int) and tid > 0

    task = client.get(tid)
    assert task.id == tid
    assert task.state is TaskState.PENDING
    assert not task.terminal
    assert task.attempts == 0
    assert task.result is None
    assert task.submitted_at_ms > 0
    # Everything submitted comes back, plus the key the client generated.
    assert task.spec == TaskSpec(**{**spec.__dict__, "idempotency_key": task.spec.idempotency_key})
    assert uuid.UUID(task.spec.idempotency_key).version == 4
    assert task.pending_reason and q in task.pending_reason  # no worker serves the queue


    # wait() on a task that cannot finish returns it, not terminal, after the timeout.
    waited = client.wait(tid, timeout=0.3)
    assert waited.id == tid and waited.state is TaskState.PENDING and not waited.terminal

    assert client.cancel(tid) is TaskState.PENDING
    done = client.wait(tid, timeout=10)
    assert done.state is TaskState.CANCELLED and done.terminal
    # Cancel is idempotent; a cancelled task stays cancelled.
    assert client.cancel(tid) is TaskState.CANCELLED
    assert client.get(tid).state is TaskState.CANCELLED


def test_submit_keywords_and_dependencies(client):
    q = queue()
    parent = client.submit(b"parent", queue=q)
    child = client.submit(b"child", queue=q, depends_on=[parent], priority=-3)
    t = client.get(child)
    assert t.spec.depends_on == [parent] and t.spec.priority == -3
    assert t.state is TaskState.WAITING  # until the parent succeeds
    client.cancel(parent)
    # A child of a cancelled parent fails too, saying why.
    failed = client.wait(child, timeout=10)
    assert failed.state is TaskState.FAILED and failed.reason == "upstream_failed"


def test_list_filters_and_paginates(client):
    q = queue()
    ids = [s.id for s in client.submit_batch([TaskSpec(queue=q, payload=b"%d" % i) for i in range(7)])]
    assert ids == sorted(ids) and len(set(ids)) == 7
    client.cancel(ids[0])

    pages = []
    after = None
    while True:
        page = client.list(queue=q, after=after, limit=3)
        pages.append([t.id for t in page.tasks])
        if page.next_after is None:
            break
        after = page.next_after
    assert [i for p in pages for i in p] == ids
    assert all(len(p) <= 3 for p in pages) and len(pages) >= 3

    pending = [t.id for t in client.iter_tasks(queue=q, state=TaskState.PENDING, page_size=2)]
    assert pending == ids[1:]
    cancelled = client.list(queue=q, state=TaskState.CANCELLED)
    assert [t.id for t in cancelled.tasks] == [ids[0]] and cancelled.next_after is None
    # Payloads come back unless left out.
    assert [t.spec.payload for t in client.list(queue=q).tasks] == [b"%d" % i for i in range(7)]
    assert all(t.spec.payload == b"" for t in client.list(queue=q, omit_payload=True).tasks)
    stale = client.list(queue=q, consistency=Consistency.STALE)
    assert {t.id for t in stale.tasks} <= set(ids)


def test_same_key_gives_the_same_task_created_once(client):
    q = queue()
    key = f"key-{uuid.uuid4()}"
    first = client.submit_batch([TaskSpec(queue=q, payload=b"a", idempotency_key=key)])
    again = client.submit_batch([TaskSpec(queue=q, payload=b"a", idempotency_key=key)])
    assert first[0].created is True
    assert again[0].created is False
    assert again[0].id == first[0].id
    # Also within one batch, and through submit().
    both = client.submit_batch([TaskSpec(queue=q, idempotency_key=key)] * 2)
    assert [(s.id, s.created) for s in both] == [(first[0].id, False)] * 2
    assert client.submit(b"a", queue=q, idempotency_key=key) == first[0].id
    assert [t.id for t in client.list(queue=q).tasks] == [first[0].id]


def test_tasks_without_keys_get_distinct_generated_keys(client):
    q = queue()
    spec = TaskSpec(queue=q, payload=b"same")
    a, b = client.submit(spec), client.submit(spec)
    assert a != b
    assert spec.idempotency_key is None  # the caller's spec is not changed
    keys = {client.get(i).spec.idempotency_key for i in (a, b)}
    assert len(keys) == 2 and all(uuid.UUID(k).version == 4 for k in keys)


def test_bad_input_names_the_field_and_creates_nothing(cluster, client):
    q = queue()
    with pytest.raises(flotilla.InvalidArgumentError) as e:
        client.submit(b"x", queue="")
    assert e.value.field == "tasks[0].queue"
    assert e.value.code is grpc.StatusCode.INVALID_ARGUMENT
    assert "must not be empty" in e.value.reason
    assert isinstance(e.value, flotilla.RejectedError) and isinstance(e.value, flotilla.FlotillaError)

    before = client.cluster_status(cluster.addr(cluster.wait_for_leader())).task_count
    good = TaskSpec(queue=q, payload=b"fine")
    cases = [
        (TaskSpec(queue=q, priority=5000), "tasks[1].priority"),
        (TaskSpec(queue="bad queue!"), "tasks[1].queue"),
        (TaskSpec(queue=q, max_attempts=1000), "tasks[1].max_attempts"),
        (TaskSpec(queue=q, idempotency_key="k" * 300), "tasks[1].idempotency_key"),
        (TaskSpec(queue=q, depends_on=[0]), "tasks[1].depends_on"),
    ]
    for bad, field in cases:
        with pytest.raises(flotilla.InvalidArgumentError) as e:
            client.submit_batch([good, bad])
        assert e.value.field == field, str(e.value)
    # The batch is all or nothing: the good task of each batch was not created either.
    assert client.list(queue=q).tasks == []
    after = client.cluster_status(cluster.addr(cluster.wait_for_leader())).task_count
    assert after == before

    with pytest.raises(flotilla.NotFoundError) as nf:
        client.get(10**12)
    assert nf.value.code is grpc.StatusCode.NOT_FOUND
    with pytest.raises(flotilla.NotFoundError):
        client.cancel(10**12)
    with pytest.raises(TypeError, match="payload must be bytes"):
        client.submit("text", queue=q)


def test_follower_hints_the_leader_and_the_client_follows(cluster):
    leader = cluster.wait_for_leader()
    follower = next(i for i in cluster.peers if i != leader)
    # Only a follower's address: every write must follow the hint to a replica not listed.
    with flotilla.Client([cluster.addr(follower)]) as c:
        assert c.leader is None
        tid = c.submit(b"via-hint", queue=queue())
        assert c.leader == cluster.addr(leader)
        assert c.get(tid).spec.payload == b"via-hint"
    # The raw refusal carries the hint in the flotilla-leader metadata.
    from flotilla._proto import flotilla_pb2 as pb
    from flotilla._proto import flotilla_pb2_grpc as pb_grpc

    with grpc.insecure_channel(cluster.addr(follower)) as ch:
        with pytest.raises(grpc.RpcError) as e:
            pb_grpc.FlotillaStub(ch).GetTask(pb.GetTaskRequest(id=1), timeout=5)
    assert e.value.code() is grpc.StatusCode.UNAVAILABLE
    assert flotilla.client.leader_hint(e.value) == cluster.addr(leader)
    assert (flotilla.client.LEADER_HINT_KEY, f"{leader}={cluster.addr(leader)}") in [
        (m.key, m.value) for m in e.value.trailing_metadata()
    ]


def test_stale_reads_are_served_by_a_follower(cluster, client):
    import time

    tid = client.submit(b"stale", queue=queue())
    leader = cluster.wait_for_leader()
    follower = next(i for i in cluster.peers if i != leader)
    with flotilla.Client([cluster.addr(follower)]) as c:
        deadline = time.monotonic() + 10
        while True:  # the follower applies the entry a moment after the leader answered
            try:
                task = c.get(tid, Consistency.STALE)
                break
            except flotilla.NotFoundError:
                assert time.monotonic() < deadline, "follower never applied the task"
                time.sleep(0.05)
        assert task.id == tid and task.spec.payload == b"stale"
        assert c.leader == cluster.addr(follower)  # served there, not redirected
        assert tid in [t.id for t in c.list(consistency=Consistency.STALE, after=tid - 1, limit=1).tasks]


def test_unreachable_cluster_is_unavailable_within_the_call_deadline():
    import socket
    import time

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there
    with flotilla.Client([f"127.0.0.1:{port}"], call_timeout=1.0, request_timeout=0.5) as c:
        t = time.monotonic()
        with pytest.raises(flotilla.UnavailableError) as e:
            c.submit(b"x")
        took = time.monotonic() - t
    assert e.value.code is grpc.StatusCode.UNAVAILABLE
    assert 0.5 < took < 3.0, took
    with pytest.raises(ValueError):
        flotilla.Client([])
    with pytest.raises(ValueError):
        flotilla.Client("no-port")


def test_workers_and_queue_policy(client):
    assert isinstance(client.list_workers(), list)
    with pytest.raises(flotilla.InvalidArgumentError) as unknown:
        client.set_queue_policy(queue(), "priority", aging_ms=1000)
    assert "unknown queue" in unknown.value.message
    client.set_queue_policy(queue(), "priority", aging_ms=1000, create=True)
    with pytest.raises(flotilla.InvalidArgumentError):
        client.set_queue_policy(queue(), "random", create=True)


def test_queue_flow_limits(cluster, client):
    """Flow limits set from Python are what the Rust CLI lists; 0 is refused naming the field."""
    q = queue()
    client.set_queue_max_running(q, 2, create=True)
    client.set_queue_weight(q, 3)
    client.set_queue_rate(q, 50, burst=5)
    client.set_queue_max_per_key(q, 1)
    for call, field in [
        (lambda: client.set_queue_max_per_key(q, 0), "max_per_key"),
        (lambda: client.set_queue_max_running(q, 0), "max_running"),
        (lambda: client.set_queue_weight(q, 0), "weight"),
        (lambda: client.set_queue_rate(q, 0), "rate.per_sec"),
        (lambda: client.set_queue_rate(q, 5, burst=0), "rate.burst"),
    ]:
        with pytest.raises(flotilla.InvalidArgumentError) as e:
            call()
        assert e.value.field == field, e.value.message

    def listed():
        out = subprocess.run(
            [str(cluster.bin), "--cluster", ",".join(cluster.addrs), "--json", "queue", "list"],
            check=True, capture_output=True, text=True, timeout=30,
        )
        return {x["name"]: x for x in json.loads(out.stdout)["queues"]}[q]

    row = listed()
    assert (row["max_running"], row["weight"], row["rate_per_sec"], row["rate_burst"]) == (2, 3, 50, 5)
    assert row["max_per_key"] == 1
    client.set_queue_max_running(q, None)
    client.set_queue_rate(q, None)
    client.set_queue_max_per_key(q, None)
    row = listed()
    assert (row["max_running"], row["weight"], row["rate_per_sec"]) == (None, 3, None)
    assert row["max_per_key"] is None
    # A task's concurrency key reads back as it was submitted.
    tid = client.submit(b"k", queue=q, concurrency_key="customer-7")
    assert client.get(tid).spec.concurrency_key == 'customer-7'
    with pytest.raises(ValueError):
        client.set_queue_rate(q, None, burst=3)


def test_workflow_submit_status_cancel(client):
    """A DAG in one call (listed children first), read back parents first, a retry finds the
    same workflow, a cycle is refused naming the task and creates nothing, cancel is whole."""
    q = queue()
    spec = lambda key: TaskSpec(queue=q, payload=b"x", idempotency_key=f"{q}-{key}")
    tasks = [
        flotilla.WorkflowTask("reduce", spec("r"), after=["a", "b"]),
        flotilla.WorkflowTask("a", spec("a")),
        flotilla.WorkflowTask("b", spec("b"), after=["a"]),
    ]
    w = client.submit_workflow(tasks)
    assert w.id == w.ids["a"], "known by its first task in topological order"
    assert w.created == {"reduce": True, "a": True, "b": True}
    again = client.submit_workflow(tasks)
    assert (again.id, again.ids) == (w.id, w.ids)
    assert not any(again.created.values())

    got = client.workflow(w.id)
    assert [m.name for m in got.members] == ["a", "b", "reduce"]
    assert got.members[2].after == ["a", "b"]
    states = [m.task.state for m in got.members]
    assert states == [TaskState.PENDING, TaskState.WAITING, TaskState.WAITING]
    assert not got.finished

    before = len(client.list(queue=q).tasks)
    with pytest.raises(flotilla.InvalidArgumentError) as e:
        client.submit_workflow([
            flotilla.WorkflowTask("x", TaskSpec(queue=q), after=["y"]),
            flotilla.WorkflowTask("y", TaskSpec(queue=q), after=["x"]),
        ])
    assert e.value.field == "tasks[0].after", e.value.message
    assert "cycle x → y → x" in e.value.message
    assert len(client.list(queue=q).tasks) == before

    cancelled = client.cancel_workflow(w.id)
    assert cancelled == [w.ids["reduce"], w.ids["b"], w.ids["a"]], "children first"
    assert client.workflow(w.id).finished
    with pytest.raises(flotilla.NotFoundError):
        client.workflow(w.ids["reduce"])


def test_schedule_add_fires_pause_delete(client):
    """A schedule every second creates one task per tick (keyed by the tick), a retry of the
    add succeeds, another spec under the name and a bad expression are refused naming the
    field, pause stops it and delete removes it."""
    q = queue()
    name = f"s-{q}"
    task = TaskSpec(queue=q, payload=b"x")
    s = client.add_schedule(name, "* * * * * *", task, overlap="allow")
    assert (s.name, s.cron, s.overlap, s.paused, s.task.queue) == (name, "* * * * * *", "allow", False, q)
    assert s.next_tick_ms is not None and s.next_tick_ms % 1000 == 0
    assert client.add_schedule(name, "* * * * * *", task, overlap="allow").name == name
    for cron, overlap, field in [("0 3 * * *", "allow", "name"), ("61 * * * *", "skip", "cron")]:
        other = name if field == "name" else f"{name}-x"
        with pytest.raises(flotilla.InvalidArgumentError) as e:
            client.add_schedule(other, cron, task, overlap=overlap)
        assert e.value.field == field, e.value.message
    with pytest.raises(flotilla.InvalidArgumentError) as e:
        client.add_schedule(f"{name}-k", "* * * * *", TaskSpec(queue=q, idempotency_key="k"))
    assert e.value.field == "task.idempotency_key"

    deadline = time.monotonic() + 20
    while len(client.list(queue=q).tasks) < 2:
        assert time.monotonic() < deadline, "two ticks within 20 s"
        time.sleep(0.2)
    paused = client.pause_schedule(name)
    assert paused.paused and paused.fired >= 2
    tasks = client.list(queue=q).tasks
    keys = [t.spec.idempotency_key for t in tasks]
    assert all(k.startswith(f"schedule:{name}:") for k in keys), keys
    assert len(set(keys)) == len(keys) == paused.fired
    assert [s.name for s in client.schedules()].count(name) == 1
    client.delete_schedule(name)
    assert name not in [s.name for s in client.schedules()]
    with pytest.raises(flotilla.NotFoundError):
        client.delete_schedule(name)
    with pytest.raises(flotilla.NotFoundError):
        client.pause_schedule(name, paused=False)


def test_why_explains_a_pending_task(client):
    """`why` reads the planner's reason from the replicated state: no worker serves the queue."""
    q = queue()
    tid = client.submit(b"x", queue=q)
    lines = client.why(tid)
    assert lines[0][0] is not None and lines[0][1].startswith(f'submitted to queue "{q}"'), lines
    assert lines[1] == (None, f'cannot run on any registered worker: no registered worker serves queue "{q}"'), lines
    with pytest.raises(flotilla.NotFoundError):
        client.why(10**9)
