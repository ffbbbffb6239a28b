"""The worker runtime: runs a Python function per assigned task attempt.

Threads, not asyncio: handlers are ordinary (blocking) functions, run on a pool of ``slots``
threads, so the leader never has more attempts on this worker than there are threads. Around
the pool:

::

    run() ── Register stream (leader) ──▶ assignment ─▶ first time for (task, attempt)? ─▶ pool
      ▲            │ ends / breaks                         (a redelivery is dropped)      │
      │            ▼                                                                      ▼
      └─ register again, same session            handler(ctx) ─▶ still ours? ─▶ CompleteTask /
                                                                                FailTask (attempt)
    heartbeat thread ── every heartbeat_interval: running attempts ─▶ leader ─▶ attempts to stop
                        NotFound (lease expired): stop everything, register again

Python cannot stop a thread, so stopping an attempt (cancelled, reassigned, timed out, worker
stopping) sets ``ctx.cancelled``; a long handler should check it. From then on the attempt is
no longer this worker's: whatever the handler returns is dropped, never reported.

``stop()`` drains: the stream is closed at once (so the leader assigns nothing more), heartbeats
go on while running handlers finish and report, up to ``drain_timeout``; attempts still running
then are cancelled and left to the leader, which runs them again after this worker's lease.
"""

from __future__ import annotations

import collections
import logging
import os
import socket
import threading
import time
import traceback
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Tuple, Union

import grpc

from . import errors
from ._proto import flotilla_pb2 as pb
from .client import Client

log = logging.getLogger("flotilla.worker")

#: (task, highest attempt started) pairs remembered to drop redeliveries; oldest go first.
STARTED_MEMORY = 100_000
#: Heartbeats in a row answered by another replica than the one holding our stream before the
#: stream is taken for stale (a deposed leader that did not close it) and opened again.
STREAM_ELSEWHERE_BEATS = 2
#: Pause before registering again after the stream ended.
REREGISTER_PAUSE_S = 0.1
#: Longest error message reported for a failed attempt, in UTF-8 bytes (the server keeps at
#: most 4096 characters of it; a handler's huge message need not travel).
MAX_ERROR_BYTES = 4096


class TaskFailed(Exception):
    """Raise from a handler to fail the attempt with a message and a chosen retryability.

    Any other exception fails the attempt as retryable.
    """

    def __init__(self, message: str, retryable: bool = False):
        super().__init__(message)
        self.message = message
        self.retryable = retryable


@dataclass
class TaskContext:
    """What a handler gets for one attempt."""

    task_id: int
    attempt: int
    queue: str
    payload: bytes
    #: The checkpoint saved by an earlier attempt, to resume from (None without one).
    checkpoint: Optional[bytes]
    #: The attempt's time limit in seconds (None: none); past it ``cancelled`` is set.
    timeout: Optional[float]
    worker_id: str
    #: Set when the attempt must stop: cancelled, reassigned, timed out, worker stopping.
    cancelled: threading.Event = field(default_factory=threading.Event)
    _client: Optional[Client] = field(default=None, repr=False)
    #: The worker process's session, which its reports carry (a secret of the process).
    _session: str = field(default="", repr=False)

    def save_checkpoint(self, progress_permille: int, data: bytes = b"") -> None:
        """Saves progress (0..=1000) and data for a later attempt of this task, fenced by this
        attempt: FailedPreconditionError once the attempt is no longer current."""
        assert self._client is not None
        self._client.checkpoint(
            self.worker_id, self._session, self.task_id, self.attempt, progress_permille, data
        )


Handler = Callable[[TaskContext], Union[bytes, str, None]]


class _Attempt:
    __slots__ = ("task_id", "attempt", "ctx", "timed_out")

    def __init__(self, ctx: TaskContext):
        self.task_id = ctx.task_id
        self.attempt = ctx.attempt
        self.ctx = ctx
        self.timed_out = False


def _truncate_utf8(text: str, limit: int) -> str:
    """At most ``limit`` bytes of UTF-8, cut on a character boundary."""
    return text.encode()[:limit].decode(errors="ignore")


def _result_bytes(value) -> bytes:
    if value is None:
        return b""
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, str):
        return value.encode()
    raise TaskFailed(
        f"handler returned {type(value).__name__}; expected bytes, str or None", retryable=False
    )


class Worker:
    """Runs ``handler(ctx)`` for each attempt the leader assigns to worker ``id``.

    The handler returns the result (bytes, str as UTF-8, or None for empty) to complete the
    attempt, raises :class:`TaskFailed` to fail it with a chosen retryability, or raises
    anything else to fail it as retryable (the task runs again while attempts remain).

    ``run()`` blocks until ``stop()`` (from another thread or a signal handler); ``start()``
    runs it in a background thread; ``with Worker(...)`` starts it and stops it on exit.
    """

    def __init__(
        self,
        client: Client,
        id: Optional[str],
        handler: Handler,
        *,
        slots: int = 4,
        queues: Iterable[str] = (),
        labels: Optional[Mapping[str, str]] = None,
        cpu_millis: int = 4000,
        mem_mb: int = 8192,
        heartbeat_interval: float = 1.0,
        drain_timeout: float = 30.0,
    ):
        if slots < 1:
            raise ValueError("slots must be at least 1")
        if heartbeat_interval <= 0:
            raise ValueError("heartbeat_interval must be positive")
        self.client = client
        #: The worker's id; None gives HOSTNAME-PID, as ``flotilla worker``.
        self.id = id if id is not None else f"{socket.gethostname()}-{os.getpid()}"
        self.handler = handler
        self.slots = slots
        self.heartbeat_interval = heartbeat_interval
        self.drain_timeout = drain_timeout
        #: One per run of this object: a registration after a broken stream resumes it.
        self.session = str(uuid.uuid4())
        self._spec = pb.WorkerSpec(
            id=self.id,
            session=self.session,
            slots=slots,
            cpu_millis=cpu_millis,
            mem_mb=mem_mb,
            labels=dict(labels or {}),
            queues=list(queues),
        )
        self._lock = threading.Lock()
        # Attempts handed to the pool whose handler or report has not finished yet.
        self._inflight = 0
        self._idle = threading.Condition(self._lock)
        self._running: Dict[int, _Attempt] = {}
        self._started: "collections.OrderedDict[int, int]" = collections.OrderedDict()
        self._stopping = threading.Event()  # stop() was called: no new work
        self._abandon = threading.Event()  # drain over: give up on reports in flight
        self._registered = threading.Event()
        self._stream: Optional[grpc.Call] = None
        self._stream_addr: Optional[str] = None
        self._thread: Optional[threading.Thread] = None
        self._ran = False
        #: Attempts this worker ran to an outcome the leader accepted, by kind (for callers
        #: and tests): "completed", "failed".
        self.reported: Dict[str, int] = {"completed": 0, "failed": 0}
        #: Assignments dropped because this worker had already started that attempt.
        self.redeliveries_ignored = 0
        #: What ended a background run (from ``start()``) early, if anything.
        self.error: Optional[BaseException] = None

    # -- life cycle --------------------------------------------------------------------------

    def start(self) -> "Worker":
        """Runs the worker in a background thread; returns at once. If ``run()`` fails there,
        the error is kept in ``error`` and raised by ``stop()``."""

        def run() -> None:
            try:
                self.run()
            except BaseException as e:  # noqa: BLE001 - handed to stop()
                log.error("worker %s: stopped by an error: %s", self.id, e)
                self.error = e

        self._thread = threading.Thread(target=run, name=f"flotilla-worker-{self.id}", daemon=True)
        self._thread.start()
        return self

    def stop(self, wait: bool = True, timeout: Optional[float] = None) -> None:
        """Asks the worker to stop (safe from a signal handler); with ``wait`` and a background
        thread from ``start()``, waits for it (at most ``timeout`` seconds) and raises the
        error that ended it, if one did."""
        self._stopping.set()
        stream = self._stream
        if stream is not None:
            stream.cancel()
        if wait and self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
            if self.error is not None:
                raise self.error

    def __enter__(self) -> "Worker":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def registered(self) -> bool:
        """Whether the worker has registered with a leader at least once."""
        return self._registered.is_set()

    def running_attempts(self) -> List[Tuple[int, int]]:
        """The (task, attempt)s this worker runs now."""
        with self._lock:
            return [(a.task_id, a.attempt) for a in self._running.values()]

    def run(self) -> None:
        """Registers, runs assignments and heartbeats until ``stop()``; then drains.

        Raises a :class:`~flotilla.errors.RejectedError` if the leader refuses the
        registration for good (e.g. InvalidArgumentError naming ``worker.id``). While another
        session holds the id (a previous run of the same worker until its lease expires, or a
        second live process), it keeps trying, logging a warning.
        """
        if self._ran:
            raise RuntimeError("a Worker runs once; make a new one")
        self._ran = True
        pool = ThreadPoolExecutor(max_workers=self.slots, thread_name_prefix=f"flotilla-{self.id}")
        beats = threading.Thread(target=self._heartbeat_loop, name=f"flotilla-heartbeat-{self.id}", daemon=True)
        beats.start()
        try:
            self._session_loop(pool)
        finally:
            self._drain()
            self._abandon.set()
            beats.join()
            pool.shutdown(wait=False)

    def _session_loop(self, pool: ThreadPoolExecutor) -> None:
        backoff = REREGISTER_PAUSE_S
        while not self._stopping.is_set():
            try:
                stream, addr = self.client.register_worker(self._spec, abort=self._stopping)
            except (errors.UnavailableError, errors.AlreadyExistsError) as e:
                # AlreadyExists: another session holds the id. Either a second live process
                # (which an operator must stop) or this worker's previous run, whose
                # registration lasts until its lease expires: keep trying, as the Rust worker.
                if self._stopping.is_set():
                    return
                log.warning("worker %s: registration failed, retrying: %s", self.id, e)
                self._stopping.wait(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            with self._lock:
                self._stream, self._stream_addr = stream, addr
            if self._stopping.is_set():  # stop() came while registering
                stream.cancel()
            self._registered.set()
            log.info("worker %s: registered with %s", self.id, addr)
            refused = False
            try:
                for event in stream:
                    kind = event.WhichOneof("event")
                    if kind == "assignment":
                        self._on_assignment(event.assignment, pool)
                    elif kind == "cancel":
                        self._cancel_attempt(event.cancel.task_id, event.cancel.attempt)
            except grpc.RpcError as e:
                code, message = e.code(), e.details() or ""
                if not self._stopping.is_set():
                    log.info("worker %s: assignment stream broke: %s", self.id, message)
                # A refusal that came as the stream's end rather than as the answer.
                if code == grpc.StatusCode.INVALID_ARGUMENT:
                    raise errors.rejected(code, message) from None
                refused = code == grpc.StatusCode.ALREADY_EXISTS
            with self._lock:
                self._stream, self._stream_addr = None, None
            if refused:
                self._stopping.wait(backoff)
                backoff = min(backoff * 2, 2.0)
            else:
                backoff = REREGISTER_PAUSE_S
                self._stopping.wait(REREGISTER_PAUSE_S)

    # -- attempts ----------------------------------------------------------------------------

    def _first_start(self, task_id: int, attempt: int) -> bool:
        """Records ``attempt``; False if it or a later one was already started here. Caller
        holds the lock."""
        seen = self._started.get(task_id)
        if seen is not None and seen >= attempt:
            return False
        self._started[task_id] = attempt
        self._started.move_to_end(task_id)
        while len(self._started) > STARTED_MEMORY:
            self._started.popitem(last=False)
        return True

    def _on_assignment(self, a: pb.Assignment, pool: ThreadPoolExecutor) -> None:
        ctx = TaskContext(
            task_id=a.task_id,
            attempt=a.attempt,
            queue=a.queue,
            payload=a.payload,
            checkpoint=a.checkpoint if a.has_checkpoint else None,
            timeout=a.timeout_ms / 1000 if a.timeout_ms else None,
            worker_id=self.id,
            _client=self.client,
            _session=self.session,
        )
        with self._lock:
            if self._stopping.is_set():
                return
            if not self._first_start(a.task_id, a.attempt):
                # A redelivery (a new leader resends what the state says we run, even when it
                # already finished here and its outcome is on its way): never run it twice.
                self.redeliveries_ignored += 1
                return
            older = self._running.get(a.task_id)
            if older is not None:
                older.ctx.cancelled.set()  # superseded by a later attempt
            attempt = self._running[a.task_id] = _Attempt(ctx)
            self._inflight += 1
        log.info("worker %s: task %d attempt %d assigned", self.id, a.task_id, a.attempt)
        pool.submit(self._run_attempt, attempt)

    def _cancel_attempt(self, task_id: int, attempt: int) -> None:
        with self._lock:
            current = self._running.get(task_id)
            if current is None or current.attempt != attempt:
                return
            del self._running[task_id]
        log.info("worker %s: task %d attempt %d cancelled", self.id, task_id, attempt)
        current.ctx.cancelled.set()

    def _run_attempt(self, a: _Attempt) -> None:
        try:
            self._run_and_report(a)
        finally:
            with self._lock:
                self._inflight -= 1
                self._idle.notify_all()

    def _run_and_report(self, a: _Attempt) -> None:
        ctx = a.ctx
        timer = None
        if ctx.timeout is not None:

            def expire() -> None:
                a.timed_out = True
                ctx.cancelled.set()

            timer = threading.Timer(ctx.timeout, expire)
            timer.daemon = True
            timer.start()
        success: Optional[bytes] = None
        failure: Optional[Tuple[str, bool]] = None
        try:
            if ctx.cancelled.is_set():
                return  # cancelled while it waited for a thread
            success = _result_bytes(self.handler(ctx))
        except TaskFailed as e:
            failure = (e.message, e.retryable)
        except BaseException as e:  # noqa: BLE001 - any handler error fails the attempt
            log.warning(
                "worker %s: task %d attempt %d raised:\n%s",
                self.id, ctx.task_id, ctx.attempt, traceback.format_exc(),
            )
            failure = (f"{type(e).__name__}: {e}", True)
        finally:
            if timer is not None:
                timer.cancel()
        if a.timed_out:
            success, failure = None, (f"attempt {ctx.attempt} timed out after {int(ctx.timeout * 1000)} ms", True)
        with self._lock:
            ours = self._running.get(ctx.task_id) is a
            if ours:
                del self._running[ctx.task_id]
        if not ours:
            return  # cancelled or superseded: the leader no longer wants this outcome
        self._report(ctx, success, failure)

    def _report(self, ctx: TaskContext, success: Optional[bytes], failure: Optional[Tuple[str, bool]]) -> None:
        """Reports until a leader accepts or refuses the outcome: it is never dropped while the
        cluster is merely unavailable (unless the worker gave up draining)."""
        while True:
            try:
                if failure is None:
                    assert success is not None
                    self.client.complete_task(
                        self.id, self.session, ctx.task_id, ctx.attempt, success, abort=self._abandon
                    )
                    kind = "completed"
                else:
                    message, retryable = failure
                    self.client.fail_task(
                        self.id, self.session, ctx.task_id, ctx.attempt, _truncate_utf8(message, MAX_ERROR_BYTES), retryable,
                        abort=self._abandon,
                    )
                    kind = "failed"
                with self._lock:
                    self.reported[kind] += 1
                log.info("worker %s: task %d attempt %d %s", self.id, ctx.task_id, ctx.attempt, kind)
                return
            except errors.UnavailableError as e:
                if self._abandon.is_set():
                    log.warning("worker %s: task %d attempt %d outcome dropped at stop: %s", self.id, ctx.task_id, ctx.attempt, e)
                    return
                log.warning("worker %s: task %d attempt %d outcome not delivered yet: %s", self.id, ctx.task_id, ctx.attempt, e)
            except errors.FlotillaError as e:
                # Stale attempt (reassigned, cancelled, timed out) or the like: final.
                log.warning("worker %s: task %d attempt %d outcome not accepted: %s", self.id, ctx.task_id, ctx.attempt, e)
                return

    # -- heartbeats --------------------------------------------------------------------------

    def _heartbeat_loop(self) -> None:
        elsewhere = 0
        while not self._abandon.wait(self.heartbeat_interval):
            if not self._registered.is_set():
                continue
            running = self.running_attempts()
            try:
                cancel, addr = self.client.heartbeat(
                    self.id,
                    self.session,
                    running,
                    call_timeout=max(2 * self.heartbeat_interval, 2.0),
                )
            except errors.NotFoundError:
                self._lose_registration()
                continue
            except errors.FlotillaError as e:
                log.warning("worker %s: heartbeat failed: %s", self.id, e)
                continue
            for task_id, attempt in cancel:
                self._cancel_attempt(task_id, attempt)
            # A leader that lost its leadership without closing our stream (it cannot reach
            # us to) would leave us connected to no leader: heartbeats tell.
            with self._lock:
                stream, stream_addr = self._stream, self._stream_addr
            if stream is not None and stream_addr != addr:
                elsewhere += 1
                if elsewhere >= STREAM_ELSEWHERE_BEATS:
                    log.info("worker %s: leader is %s, stream is on %s; registering again", self.id, addr, stream_addr)
                    stream.cancel()
                    elsewhere = 0
            else:
                elsewhere = 0

    def _lose_registration(self) -> None:
        """The leader no longer knows this worker (its lease expired): everything it ran has
        been reassigned. Stop it all and register again."""
        log.warning("worker %s: registration lost; stopping running attempts and registering again", self.id)
        with self._lock:
            lost, self._running = list(self._running.values()), {}
            stream = self._stream
        for a in lost:
            a.ctx.cancelled.set()
        if stream is not None:
            stream.cancel()

    def _drain(self) -> None:
        """After stop(): let running attempts finish and report, within drain_timeout."""
        deadline = time.monotonic() + self.drain_timeout
        with self._lock:
            while self._inflight > 0:
                left_s = deadline - time.monotonic()
                if left_s <= 0:
                    break
                self._idle.wait(left_s)
            if self._inflight == 0:
                return
            left, self._running = list(self._running.values()), {}
        for a in left:
            a.ctx.cancelled.set()
        if left:
            log.warning("worker %s: %d attempts still running at stop were cancelled", self.id, len(left))
