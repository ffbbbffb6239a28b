"""The client: endpoints, leader tracking, retries, and the API calls.

Every call goes to the replica believed to lead. A follower answers a leader-only call with
UNAVAILABLE and a hint in the ``flotilla-leader`` metadata ("ID=HOST:PORT"); the client goes
there at once. Other retryable failures (unavailable, deadline exceeded, cancelled, unknown,
aborted) move to the next replica after a capped, jittered exponential backoff, until the
call's whole deadline passes. Every submitted task carries an idempotency key (a fresh uuid4
unless the caller gave one), which is what makes retrying a submit safe: a key maps to one task
forever, so a try whose answer was lost and its retry create one task between them.

::

    call ─▶ known leader or a random replica ─▶ ok ─────────────────────────▶ return
                 ▲                              ├ final code ───────────────▶ RejectedError
                 │ hint: at once                ├ retryable + hint ─┐
                 └── next replica, backoff ◀────┴ retryable ────────┴ deadline ▶ UnavailableError
"""

from __future__ import annotations

import dataclasses
import logging
import os
import random
import threading
import time
import uuid
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, TypeVar, Union

import grpc

from . import errors
from ._proto import flotilla_pb2 as pb
from ._proto import flotilla_pb2_grpc as pb_grpc
from .command import CommandPayload
from .types import (
    ClusterStatus,
    Consistency,
    Schedule,
    Submitted,
    Task,
    TaskPage,
    TaskSpec,
    TaskState,
    WorkerInfo,
    SubmittedWorkflow,
    Workflow,
    WorkflowTask,
)

log = logging.getLogger("flotilla.client")

#: Metadata key of the leader hint a follower sends with UNAVAILABLE.
LEADER_HINT_KEY = "flotilla-leader"
#: Largest message the client sends or accepts (as the Rust client).
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
#: Leader hints followed in a row without a pause; past that the backoff applies, so two
#: replicas with stale views pointing at each other cannot spin.
MAX_HINTS_IN_A_ROW = 3

#: How long a Register try with empty response headers waits for a refusal (seconds).
REGISTER_REFUSAL_WAIT_S = 0.5

_RETRYABLE = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.ABORTED,
    }
)

T = TypeVar("T")


def token_from_env() -> Optional[str]:
    """The caller's token: the first line of $FLOTILLA_TOKEN_FILE, else $FLOTILLA_TOKEN."""
    path = os.environ.get("FLOTILLA_TOKEN_FILE")
    if path:
        with open(path, encoding="utf-8") as f:
            first = f.readline().strip()
        if not first:
            raise ValueError(f"FLOTILLA_TOKEN_FILE {path}: the file is empty")
        return first
    return os.environ.get("FLOTILLA_TOKEN", "").strip() or None


class Tls:
    """TLS to replicas started with ``--tls-cert``: the CA file that signed their certificates,
    optionally a client certificate and key, and the name to expect in the replicas'
    certificates instead of the host dialled."""

    def __init__(
        self,
        ca: str,
        client_cert: Optional[str] = None,
        client_key: Optional[str] = None,
        server_name: Optional[str] = None,
    ):
        if (client_cert is None) != (client_key is None):
            raise ValueError("a client cert needs its client key, and the other way round")

        def read(what: str, path: Optional[str]) -> Optional[bytes]:
            if path is None:
                return None
            try:
                with open(path, "rb") as f:
                    data = f.read()
            except OSError as e:
                raise ValueError(f"{what} {path}: {e.strerror}") from None
            if b"-----BEGIN" not in data:
                raise ValueError(f"{what} {path}: not PEM")
            return data

        self.credentials = grpc.ssl_channel_credentials(
            root_certificates=read("ca", ca),
            private_key=read("client key", client_key),
            certificate_chain=read("client cert", client_cert),
        )
        self.server_name = server_name

    @staticmethod
    def from_env() -> Optional["Tls"]:
        """$FLOTILLA_CA (TLS is on when set), $FLOTILLA_CLIENT_CERT, $FLOTILLA_CLIENT_KEY,
        $FLOTILLA_TLS_SERVER_NAME, as the CLI reads them."""
        ca = os.environ.get("FLOTILLA_CA")
        if not ca:
            return None
        return Tls(
            ca,
            os.environ.get("FLOTILLA_CLIENT_CERT") or None,
            os.environ.get("FLOTILLA_CLIENT_KEY") or None,
            os.environ.get("FLOTILLA_TLS_SERVER_NAME") or None,
        )


class _Bearer(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Adds ``authorization: Bearer TOKEN`` to every call."""

    def __init__(self, token: str):
        self._header = ("authorization", f"Bearer {token}")

    def _with_token(self, details):
        metadata = list(details.metadata or []) + [self._header]
        return details._replace(metadata=metadata)

    def intercept_unary_unary(self, continuation, details, request):
        return continuation(self._with_token(details), request)

    def intercept_unary_stream(self, continuation, details, request):
        return continuation(self._with_token(details), request)

    def intercept_stream_unary(self, continuation, details, requests):
        return continuation(self._with_token(details), requests)

    def intercept_stream_stream(self, continuation, details, requests):
        return continuation(self._with_token(details), requests)


def retryable(code: grpc.StatusCode, message: str) -> bool:
    """Codes after which the same call may be sent again without risk: the server did nothing,
    or the call is idempotent (submits carry idempotency keys)."""
    return code in _RETRYABLE or (
        code == grpc.StatusCode.INTERNAL and "h2 protocol error" in (message or "")
    )


def leader_hint(err: grpc.RpcError) -> Optional[str]:
    """The leader's address from a refusal's ``flotilla-leader`` metadata ("ID=HOST:PORT")."""
    for getter in ("trailing_metadata", "initial_metadata"):
        try:
            md = getattr(err, getter)() or ()
        except Exception:  # noqa: BLE001 - a call without that metadata
            continue
        for key, value in md:
            if key == LEADER_HINT_KEY:
                _, sep, addr = value.partition("=")
                return addr if sep and addr else None
    return None


def _parse_addrs(addrs: Union[str, Iterable[str]]) -> List[str]:
    if isinstance(addrs, str):
        addrs = addrs.split(",")
    out = []
    for a in addrs:
        a = a.strip()
        if a.startswith("http://"):
            a = a[len("http://") :]
        if a:
            out.append(a)
    if not out:
        raise ValueError("no replica addresses given (expected HOST:PORT[,HOST:PORT...])")
    for a in out:
        host, sep, port = a.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ValueError(f"invalid replica address {a!r}: expected HOST:PORT")
    return out


class Client:
    """A Flotilla client over the replicas at ``addrs`` ("HOST:PORT", a list or a comma list).

    Thread-safe; share one per process. Close it (or use ``with``) to release connections.

    ``request_timeout`` bounds one try (seconds), ``call_timeout`` a whole call with its
    retries; retries back off from ``backoff_initial`` doubling up to ``backoff_max``.
    """

    def __init__(
        self,
        addrs: Union[str, Iterable[str]],
        *,
        request_timeout: float = 5.0,
        call_timeout: float = 30.0,
        backoff_initial: float = 0.02,
        backoff_max: float = 1.0,
        token: Optional[str] = None,
        tls: Optional[Tls] = None,
    ):
        self.endpoints: Sequence[str] = tuple(_parse_addrs(addrs))
        #: Sent as ``authorization: Bearer TOKEN`` with every call (replicas started with
        #: ``--tokens-file`` need one); default: $FLOTILLA_TOKEN_FILE's first line, else
        #: $FLOTILLA_TOKEN.
        self._token = token if token is not None else token_from_env()
        #: TLS to the replicas; default: from $FLOTILLA_CA (see ``Tls.from_env``), else plain.
        self._tls = tls if tls is not None else Tls.from_env()
        if request_timeout <= 0 or call_timeout <= 0:
            raise ValueError("request_timeout and call_timeout must be positive")
        if not 0 < backoff_initial <= backoff_max:
            raise ValueError("backoff must satisfy 0 < backoff_initial <= backoff_max")
        self.request_timeout = request_timeout
        self.call_timeout = call_timeout
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self._lock = threading.Lock()
        self._channels: Dict[str, grpc.Channel] = {}
        # Address of the replica that last served a leader-only call, or that a hint named.
        self._leader: Optional[str] = None
        self._closed = False

    # -- connections -------------------------------------------------------------------------

    def _channel(self, addr: str) -> grpc.Channel:
        with self._lock:
            if self._closed:
                raise errors.FlotillaError("client is closed")
            ch = self._channels.get(addr)
            if ch is None:
                options = [
                    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                    # A restarted replica is found again within a second, not after
                    # gRPC's default reconnect backoff of up to two minutes.
                    ("grpc.initial_reconnect_backoff_ms", 100),
                    ("grpc.min_reconnect_backoff_ms", 100),
                    ("grpc.max_reconnect_backoff_ms", 1000),
                    # Retries are ours: one policy, one deadline.
                    ("grpc.enable_retries", 0),
                ]
                if self._tls is None:
                    ch = grpc.insecure_channel(addr, options=options)
                else:
                    if self._tls.server_name:
                        options.append(("grpc.ssl_target_name_override", self._tls.server_name))
                    ch = grpc.secure_channel(addr, self._tls.credentials, options=options)
                if self._token:
                    ch = grpc.intercept_channel(ch, _Bearer(self._token))
                self._channels[addr] = ch
            return ch

    def close(self) -> None:
        with self._lock:
            self._closed = True
            channels, self._channels = list(self._channels.values()), {}
        for ch in channels:
            ch.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def leader(self) -> Optional[str]:
        """The address believed to lead, if any."""
        return self._leader

    # -- the retry loop ----------------------------------------------------------------------

    def _call(
        self,
        what: str,
        op: Callable[[grpc.Channel, float], T],
        *,
        extra: float = 0.0,
        call_timeout: Optional[float] = None,
        abort: Optional[threading.Event] = None,
    ) -> Tuple[T, str]:
        """Runs ``op(channel, try_timeout)`` against the leader until it succeeds, is rejected
        for good, or the deadline passes; returns its result and the address that served it.

        ``extra`` lengthens both the call and each try (a long poll); ``abort`` set by another
        thread ends the retries early with UnavailableError.
        """
        deadline = time.monotonic() + (call_timeout or self.call_timeout) + extra
        endpoints = self.endpoints
        nxt = random.randrange(len(endpoints))
        target = self._leader or endpoints[nxt]
        backoff = self.backoff_initial
        hints_in_a_row = 0
        last_code: Optional[grpc.StatusCode] = None
        last_error = "no try made"
        while True:
            left = deadline - time.monotonic()
            try_timeout = max(0.001, min(self.request_timeout + extra, left))
            hint = None
            try:
                result = op(self._channel(target), try_timeout)
                self._leader = target
                return result, target
            except grpc.RpcError as e:
                code = e.code() if callable(getattr(e, "code", None)) else grpc.StatusCode.UNKNOWN
                message = e.details() if callable(getattr(e, "details", None)) else str(e)
                message = message or ""
                if not retryable(code, message):
                    raise errors.rejected(code, message) from None
                last_code = code
                last_error = f"{target}: {code.name}: {message}"
                hint = leader_hint(e)
            log.debug("retrying %s: %s", what, last_error)
            fresh_hint = hint is not None and hint != target
            if fresh_hint and hints_in_a_row < MAX_HINTS_IN_A_ROW:
                # A fresh hint: go there at once.
                hints_in_a_row += 1
                self._leader = target = hint
                continue
            hints_in_a_row = 0
            self._leader = None
            if fresh_hint:
                target = hint  # but only after the backoff: hints have been going round
            else:
                nxt = (nxt + 1) % len(endpoints)
                target = endpoints[nxt]
            pause = backoff + random.uniform(0, backoff / 2)
            if time.monotonic() + pause >= deadline:
                raise errors.UnavailableError(
                    f"{what}: no replica answered before the deadline; last: {last_error}",
                    last_code,
                )
            if abort is not None:
                if abort.wait(pause):
                    raise errors.UnavailableError(f"{what}: stopped; last: {last_error}", last_code)
            else:
                time.sleep(pause)
            backoff = min(backoff * 2, self.backoff_max)

    def _flotilla(self, what: str, method: str, request, **kw):
        def op(channel: grpc.Channel, timeout: float):
            return getattr(pb_grpc.FlotillaStub(channel), method)(request, timeout=timeout)

        return self._call(what, op, **kw)[0]

    # -- tasks -------------------------------------------------------------------------------

    def submit(self, payload: Union[bytes, TaskSpec] = b"", **fields) -> int:
        """Submits one task and returns its id once it is committed on a quorum.

        ``client.submit(b"...", queue="emails", priority=5)`` or ``client.submit(TaskSpec(...))``;
        keyword fields are those of :class:`TaskSpec`.
        """
        if isinstance(payload, TaskSpec):
            spec = dataclasses.replace(payload, **fields)
        else:
            spec = TaskSpec(payload=payload, **fields)
        return self.submit_batch([spec])[0].id

    def submit_command(
        self,
        argv: Sequence[str],
        *,
        env: Optional[Dict[str, str]] = None,
        cwd: Optional[str] = None,
        **fields,
    ) -> int:
        """Submits a command task, in the payload format of ``flotilla submit -- ARGV...``."""
        payload = CommandPayload(list(argv), dict(env or {}), cwd).encode()
        return self.submit(payload, **fields)

    def submit_batch(self, specs: Iterable[TaskSpec]) -> List[Submitted]:
        """Submits tasks all or nothing; one :class:`Submitted` per spec, in order.

        A spec without an idempotency key is sent with a fresh uuid4 (the caller's object is
        not changed), so retries inside this call never create a task twice.
        """
        keyed = [
            s if s.idempotency_key is not None else dataclasses.replace(s, idempotency_key=str(uuid.uuid4()))
            for s in specs
        ]
        request = pb.SubmitTasksRequest(tasks=[s.to_pb() for s in keyed])
        resp = self._flotilla("submit", "SubmitTasks", request)
        if len(resp.ids) != len(keyed) or len(resp.created) != len(keyed):
            raise errors.BadResponseError(
                f"{len(resp.ids)} ids and {len(resp.created)} created flags for {len(keyed)} tasks"
            )
        return [Submitted(i, c) for i, c in zip(resp.ids, resp.created)]

    # -- workflows ---------------------------------------------------------------------------

    def submit_workflow(self, tasks: Sequence[WorkflowTask]) -> SubmittedWorkflow:
        """Submits a DAG of tasks naming each other (``after``), all or nothing.

        A cycle, an unknown or a repeated name raises InvalidArgumentError whose ``field`` names
        the task (``tasks[0].after``). Tasks without an idempotency key get a fresh uuid4, so a
        retry inside this call finds the same workflow.
        """
        tasks = list(tasks)
        request = pb.SubmitWorkflowRequest(
            tasks=[
                pb.WorkflowTask(
                    name=t.name,
                    spec=(
                        t.spec
                        if t.spec.idempotency_key is not None
                        else dataclasses.replace(t.spec, idempotency_key=str(uuid.uuid4()))
                    ).to_pb(),
                    after=list(t.after),
                )
                for t in tasks
            ]
        )
        resp = self._flotilla("submit workflow", "SubmitWorkflow", request)
        if len(resp.ids) != len(tasks) or len(resp.created) != len(tasks):
            raise errors.BadResponseError(f"{len(resp.ids)} ids for {len(tasks)} tasks")
        return SubmittedWorkflow(
            id=resp.workflow_id,
            ids={t.name: i for t, i in zip(tasks, resp.ids)},
            created={t.name: c for t, c in zip(tasks, resp.created)},
        )

    def workflow(
        self, workflow_id: int, consistency: Consistency = Consistency.LINEARIZABLE
    ) -> Workflow:
        """A workflow's tasks with their states, parents first; NotFoundError if there is none."""
        request = pb.GetWorkflowRequest(workflow_id=workflow_id, consistency=consistency.value)
        return Workflow.from_pb(self._flotilla("get workflow", "GetWorkflow", request))

    def cancel_workflow(self, workflow_id: int) -> List[int]:
        """Cancels every unfinished task of a workflow; returns those cancelled, children first."""
        request = pb.CancelWorkflowRequest(workflow_id=workflow_id)
        return list(self._flotilla("cancel workflow", "CancelWorkflow", request).cancelled)

    def add_schedule(
        self, name: str, cron: str, task: TaskSpec, overlap: str = "skip"
    ) -> Schedule:
        """Adds a cron schedule (UTC; 5 fields, or 6 with seconds first): ``task`` is created at
        every tick, each tick at most once. The same schedule again succeeds (a retry);
        another under the same name raises InvalidArgumentError with ``field == "name"``; an
        expression the server cannot read, with ``field == "cron"``. The task may not set
        ``idempotency_key``, ``depends_on`` or ``not_before_ms``."""
        request = pb.AddScheduleRequest(name=name, cron=cron, task=task.to_pb(), overlap=overlap)
        return Schedule.from_pb(self._flotilla("add schedule", "AddSchedule", request).schedule)

    def schedules(self, consistency: Consistency = Consistency.LINEARIZABLE) -> List[Schedule]:
        """Every schedule, by name."""
        request = pb.ListSchedulesRequest(consistency=consistency.value)
        resp = self._flotilla("list schedules", "ListSchedules", request)
        return [Schedule.from_pb(s) for s in resp.schedules]

    def pause_schedule(self, name: str, paused: bool = True) -> Schedule:
        """Pauses (or, with ``paused=False``, resumes from its first tick after now) a
        schedule; NotFoundError if there is none."""
        request = pb.PauseScheduleRequest(name=name, paused=paused)
        return Schedule.from_pb(self._flotilla("pause schedule", "PauseSchedule", request).schedule)

    def delete_schedule(self, name: str) -> None:
        """Deletes a schedule (the tasks it created stay); NotFoundError if there is none."""
        self._flotilla("delete schedule", "DeleteSchedule", pb.DeleteScheduleRequest(name=name))

    def get(self, task_id: int, consistency: Consistency = Consistency.LINEARIZABLE) -> Task:
        """The task; NotFoundError if there is none with that id."""
        resp = self._flotilla(
            "get", "GetTask", pb.GetTaskRequest(id=task_id, consistency=consistency.value)
        )
        if not resp.HasField("task"):
            raise errors.BadResponseError("task missing from the answer")
        return Task.from_pb(resp.task)

    def why(self, task_id: int) -> List[Tuple[Optional[int], str]]:
        """Why the task is in its state, line by line (as ``flotilla why``): ``(at_ms, text)``
        pairs, ``at_ms`` None when a line is not about a moment. Empty for a task removed by
        retention."""
        request = pb.GetTaskRequest(id=task_id, explain=True)
        resp = self._flotilla("why", "GetTask", request)
        return [(line.at_ms or None, line.text) for line in resp.why]

    def wait(self, task_id: int, timeout: float = 60.0) -> Task:
        """Waits until the task is terminal or ``timeout`` seconds pass; returns it either way
        (check ``task.terminal``)."""
        deadline = time.monotonic() + timeout
        while True:
            left = max(0.0, deadline - time.monotonic())
            request = pb.WaitTaskRequest(id=task_id, timeout_ms=int(left * 1000))
            resp = self._flotilla("wait", "WaitTask", request, extra=left)
            if not resp.HasField("task"):
                raise errors.BadResponseError("task missing from the answer")
            task = Task.from_pb(resp.task)
            # The server caps one wait; keep waiting until our own deadline.
            if resp.terminal or time.monotonic() >= deadline:
                return task

    def cancel(self, task_id: int) -> TaskState:
        """Cancels a task (idempotent); returns the state it was in."""
        resp = self._flotilla("cancel", "CancelTask", pb.CancelTaskRequest(id=task_id))
        return TaskState.from_pb(resp.previous)

    def list(
        self,
        *,
        queue: Optional[str] = None,
        state: Optional[TaskState] = None,
        after: Optional[int] = None,
        limit: int = 100,
        consistency: Consistency = Consistency.LINEARIZABLE,
        omit_payload: bool = False,
    ) -> TaskPage:
        """One page of tasks with id greater than ``after``, in id order."""
        request = pb.ListTasksRequest(
            queue=queue or "",
            state=state.value if state is not None else 0,
            after_id=after or 0,
            limit=limit,
            consistency=consistency.value,
            omit_payload=omit_payload,
        )
        resp = self._flotilla("list", "ListTasks", request)
        return TaskPage([Task.from_pb(t) for t in resp.tasks], resp.next_after_id or None)

    def iter_tasks(self, *, page_size: int = 500, **filters) -> Iterator[Task]:
        """Every matching task, following the pagination cursor page by page."""
        after = filters.pop("after", None)
        while True:
            page = self.list(after=after, limit=page_size, **filters)
            yield from page.tasks
            if page.next_after is None:
                return
            after = page.next_after

    # -- cluster -----------------------------------------------------------------------------

    def cluster_status(self, addr: Optional[str] = None) -> ClusterStatus:
        """What one replica says about itself and the cluster: the one at ``addr``, else the
        first in the endpoint list that answers. Never redirected, never retried."""
        last: Optional[errors.FlotillaError] = None
        for a in [addr] if addr else list(self.endpoints):
            try:
                stub = pb_grpc.FlotillaStub(self._channel(a))
                resp = stub.ClusterStatus(pb.ClusterStatusRequest(), timeout=self.request_timeout)
                return ClusterStatus.from_pb(resp)
            except grpc.RpcError as e:
                last = errors.UnavailableError(f"{a}: {e.details()}", e.code())
        assert last is not None
        raise last

    def list_workers(self) -> List[WorkerInfo]:
        """Registered workers with capacity, load and lease age (asked of the leader)."""
        resp = self._flotilla("workers", "ListWorkers", pb.ListWorkersRequest())
        return [WorkerInfo.from_pb(w) for w in resp.workers]

    def set_queue_policy(
        self, queue: str, policy: str, aging_ms: int = 0, create: bool = False
    ) -> None:
        """How a queue orders its pending tasks: "fifo", "priority" (optionally aging) or "sjf".

        A queue no task was submitted to yet is refused as unknown unless ``create`` is set.
        """
        request = pb.SetQueuePolicyRequest(
            queue=queue, policy=policy, aging_ms=aging_ms, create=create
        )
        self._flotilla("set-policy", "SetQueuePolicy", request)

    def set_queue_max_running(self, queue: str, limit: Optional[int], create: bool = False) -> None:
        """At most ``limit`` tasks of the queue running at once; ``None`` removes the limit.
        A limit of 0 is refused (``InvalidArgumentError``, field ``max_running``). Admin."""
        if limit is None:
            request = pb.SetQueueLimitRequest(queue=queue, create=create, no_max_running=True)
        else:
            request = pb.SetQueueLimitRequest(queue=queue, create=create, max_running=limit)
        self._flotilla("set-limit", "SetQueueLimit", request)

    def set_queue_max_per_key(self, queue: str, limit: Optional[int], create: bool = False) -> None:
        """At most ``limit`` tasks of the queue sharing a concurrency key running at once;
        ``None`` removes the limit. 0 is refused (field ``max_per_key``). Admin."""
        if limit is None:
            request = pb.SetQueueLimitRequest(queue=queue, create=create, no_max_per_key=True)
        else:
            request = pb.SetQueueLimitRequest(queue=queue, create=create, max_per_key=limit)
        self._flotilla("set-limit", "SetQueueLimit", request)

    def set_queue_weight(self, queue: str, weight: int, create: bool = False) -> None:
        """The queue's share of free slots against other queues with pending tasks (default
        1). A weight of 0 is refused (field ``weight``). Admin."""
        request = pb.SetQueueLimitRequest(queue=queue, create=create, weight=weight)
        self._flotilla("set-limit", "SetQueueLimit", request)

    def set_queue_rate(
        self, queue: str, per_sec: Optional[int], burst: Optional[int] = None, create: bool = False
    ) -> None:
        """At most ``per_sec`` tasks of the queue started per second, ``burst`` (default
        ``per_sec``) at once; ``None`` removes the limit. 0 is refused (fields
        ``rate.per_sec``, ``rate.burst``). Admin."""
        if per_sec is None:
            if burst is not None:
                raise ValueError("burst without a rate: per_sec=None removes the limit")
            request = pb.SetQueueLimitRequest(queue=queue, create=create, no_rate=True)
        else:
            rate = pb.RateLimit(per_sec=per_sec, burst=per_sec if burst is None else burst)
            request = pb.SetQueueLimitRequest(queue=queue, create=create, rate=rate)
        self._flotilla("set-limit", "SetQueueLimit", request)

    # -- the worker protocol (used by flotilla.Worker) ---------------------------------------

    def _workers(self, what: str, method: str, request, **kw):
        def op(channel: grpc.Channel, timeout: float):
            return getattr(pb_grpc.WorkersStub(channel), method)(request, timeout=timeout)

        return self._call(what, op, **kw)

    def register_worker(
        self, spec: pb.WorkerSpec, abort: Optional[threading.Event] = None
    ) -> Tuple["grpc.Call", str]:
        """Registers a worker with the leader; returns its open assignment stream (iterate it;
        ``cancel()`` it to close) and the leader's address.

        A try succeeds when the leader's response headers arrive, which it sends only after the
        registration is committed; a try without them within ``request_timeout`` is cancelled
        and retried like any unavailable call.
        """

        def op(channel: grpc.Channel, timeout: float):
            call = pb_grpc.WorkersStub(channel).Register(pb.ConnectRequest(worker=spec))
            timer = threading.Timer(timeout, call.cancel)
            timer.daemon = True
            timer.start()
            try:
                headers = call.initial_metadata()
            finally:
                timer.cancel()
            if not headers:
                # A refusal is a trailers-only response: no headers, then the status, which
                # gRPC may hand over a moment after the (empty) headers. Real headers carry at
                # least hyper's `date`; should they ever be empty, a short wait tells.
                ended = threading.Event()
                call.add_done_callback(lambda _: ended.set())
                ended.wait(REGISTER_REFUSAL_WAIT_S)
            if call.done() and call.code() != grpc.StatusCode.OK:
                raise call  # the call is its own RpcError: code, details, metadata (hint)
            return call

        return self._call("register", op, abort=abort)

    def heartbeat(
        self,
        worker_id: str,
        session: str,
        running: Iterable[Tuple[int, int]],
        *,
        call_timeout: Optional[float] = None,
    ) -> Tuple[List[Tuple[int, int]], str]:
        """Renews the worker's lease, reporting its running (task, attempt)s; returns the
        attempts it must stop and the address that answered. NotFoundError: the registration
        is gone (expired); register again."""
        request = pb.HeartbeatRequest(
            worker_id=worker_id,
            session=session,
            running=[pb.RunningAttempt(task_id=t, attempt=a) for t, a in running],
        )
        resp, addr = self._workers("heartbeat", "Heartbeat", request, call_timeout=call_timeout)
        return [(c.task_id, c.attempt) for c in resp.cancel], addr

    def complete_task(
        self,
        worker_id: str,
        session: str,
        task_id: int,
        attempt: int,
        result: bytes,
        *,
        abort: Optional[threading.Event] = None,
    ) -> None:
        """Reports an attempt's success from the worker's own ``session`` (the one it registered
        with); FailedPreconditionError when the attempt is stale, PermissionDeniedError from
        another session or (with tokens on) another token than the worker registered with."""
        request = pb.CompleteTaskRequest(
            worker_id=worker_id, session=session, task_id=task_id, attempt=attempt, result=result
        )
        self._workers("complete", "CompleteTask", request, abort=abort)

    def fail_task(
        self,
        worker_id: str,
        session: str,
        task_id: int,
        attempt: int,
        error: str,
        retryable: bool,
        *,
        abort: Optional[threading.Event] = None,
    ) -> None:
        """Reports an attempt's failure; the task runs again if ``retryable`` and attempts
        remain. Refused as :meth:`complete_task` is."""
        request = pb.FailTaskRequest(
            worker_id=worker_id,
            session=session,
            task_id=task_id,
            attempt=attempt,
            error=error,
            retryable=retryable,
        )
        self._workers("fail", "FailTask", request, abort=abort)

    def checkpoint(
        self,
        worker_id: str,
        session: str,
        task_id: int,
        attempt: int,
        progress_permille: int,
        data: bytes,
    ) -> None:
        """Saves progress for a later attempt, fenced by ``attempt``; refused as
        :meth:`complete_task` is."""
        request = pb.CheckpointRequest(
            worker_id=worker_id,
            session=session,
            task_id=task_id,
            attempt=attempt,
            progress_permille=progress_permille,
            data=data,
        )
        self._workers("checkpoint", "Checkpoint", request)
