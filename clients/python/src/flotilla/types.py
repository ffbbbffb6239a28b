"""Typed values of the API: what a caller submits and what it reads back.

They mirror `flotilla.v1` messages in proto/flotilla.proto but speak Python: ``None`` for an
absent optional value where the wire uses 0 or "", enums for states, bytes for payloads.
Conversions to and from the generated messages live here and nowhere else.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

from ._proto import flotilla_pb2 as pb

#: Attempts a task gets when the spec does not say (the server's default too).
DEFAULT_MAX_ATTEMPTS = 3


class TaskState(enum.Enum):
    """Life cycle of a task: waiting (on dependencies) → pending → running → a terminal state."""

    WAITING = pb.TASK_STATE_WAITING
    PENDING = pb.TASK_STATE_PENDING
    RUNNING = pb.TASK_STATE_RUNNING
    SUCCEEDED = pb.TASK_STATE_SUCCEEDED
    FAILED = pb.TASK_STATE_FAILED
    CANCELLED = pb.TASK_STATE_CANCELLED

    @property
    def terminal(self) -> bool:
        """Whether the state never changes again."""
        return self in (TaskState.SUCCEEDED, TaskState.FAILED, TaskState.CANCELLED)

    @classmethod
    def from_pb(cls, value: int) -> "TaskState":
        try:
            return cls(value)
        except ValueError:
            raise ValueError(f"unknown task state {value}") from None


class Consistency(enum.Enum):
    """How fresh a read must be."""

    #: Served by the leader after it confirms its leadership with a quorum.
    LINEARIZABLE = pb.READ_CONSISTENCY_LINEARIZABLE
    #: Served by whichever replica answers, from its applied state; may lag.
    STALE = pb.READ_CONSISTENCY_STALE


@dataclass
class TaskSpec:
    """What to run. Only ``queue`` and ``payload`` are needed; the rest has defaults."""

    queue: str = "default"
    #: Opaque bytes handed to the worker (a command task's payload is ``{"argv": [...]}``).
    payload: bytes = b""
    #: Higher runs first under the queue's ``priority`` policy (-1000..=1000).
    priority: int = 0
    #: A resubmission with the same key returns the original task and creates nothing. The
    #: client sets a fresh uuid4 when this is None, so its own retries never double a task.
    idempotency_key: Optional[str] = None
    #: Estimated run time, for the shortest-job-first policy.
    estimate_ms: Optional[int] = None
    cpu_millis: int = 0
    mem_mb: int = 0
    #: Labels a worker must carry to run the task.
    labels: Dict[str, str] = field(default_factory=dict)
    #: Ids of tasks that must succeed first; they must exist.
    depends_on: List[int] = field(default_factory=list)
    #: Attempts before the task fails for good (1..=100).
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    #: Do not start before this time, in ms since the Unix epoch.
    not_before_ms: Optional[int] = None
    #: An attempt running longer is failed (and retried while attempts remain).
    timeout_ms: Optional[int] = None
    #: Tasks of the queue sharing this key run at most the queue's ``max_per_key`` at once
    #: (e.g. one running task per customer).
    concurrency_key: Optional[str] = None

    def to_pb(self) -> pb.TaskSpec:
        if not isinstance(self.payload, (bytes, bytearray)):
            raise TypeError(f"payload must be bytes, not {type(self.payload).__name__}")
        return pb.TaskSpec(
            queue=self.queue,
            payload=bytes(self.payload),
            priority=self.priority,
            idempotency_key=self.idempotency_key or "",
            estimate_ms=self.estimate_ms or 0,
            cpu_millis=self.cpu_millis,
            mem_mb=self.mem_mb,
            labels=dict(self.labels),
            depends_on=list(self.depends_on),
            # 0 on the wire means the server's default; say it explicitly instead.
            max_attempts=self.max_attempts,
            not_before_ms=self.not_before_ms or 0,
            timeout_ms=self.timeout_ms or 0,
            concurrency_key=self.concurrency_key or "",
        )

    @classmethod
    def from_pb(cls, m: pb.TaskSpec) -> "TaskSpec":
        return cls(
            queue=m.queue,
            payload=m.payload,
            priority=m.priority,
            idempotency_key=m.idempotency_key or None,
            estimate_ms=m.estimate_ms or None,
            cpu_millis=m.cpu_millis,
            mem_mb=m.mem_mb,
            labels=dict(m.labels),
            depends_on=list(m.depends_on),
            max_attempts=m.max_attempts or DEFAULT_MAX_ATTEMPTS,
            not_before_ms=m.not_before_ms or None,
            timeout_ms=m.timeout_ms or None,
            concurrency_key=m.concurrency_key or None,
        )


@dataclass
class Task:
    """A task as the cluster keeps it."""

    id: int
    spec: TaskSpec
    state: TaskState
    #: Attempts started so far; the current attempt's number while running.
    attempts: int
    submitted_at_ms: int
    updated_at_ms: int
    #: What the successful attempt returned (None until then).
    result: Optional[bytes] = None
    #: Why the task failed or was cancelled, or the last attempt's error.
    reason: Optional[str] = None
    #: The worker running the current attempt.
    worker: Optional[str] = None
    started_at_ms: Optional[int] = None
    #: Progress of the latest checkpoint in thousandths, None without one.
    checkpoint_progress_permille: Optional[int] = None
    #: For a pending task that no registered worker could ever run: why.
    pending_reason: Optional[str] = None

    @property
    def terminal(self) -> bool:
        return self.state.terminal

    @classmethod
    def from_pb(cls, m: pb.Task) -> "Task":
        return cls(
            id=m.id,
            spec=TaskSpec.from_pb(m.spec),
            state=TaskState.from_pb(m.state),
            attempts=m.attempts,
            submitted_at_ms=m.submitted_at_ms,
            updated_at_ms=m.updated_at_ms,
            result=m.result if m.has_result else None,
            reason=m.reason or None,
            worker=m.worker or None,
            started_at_ms=m.started_at_ms or None,
            checkpoint_progress_permille=(
                m.checkpoint_progress_permille if m.has_checkpoint else None
            ),
            pending_reason=m.pending_reason or None,
        )


@dataclass(frozen=True)
class Submitted:
    """One task of an acknowledged submit."""

    id: int
    #: False when the id is that of an earlier task with the same idempotency key (which may
    #: be an earlier try of this very call whose answer was lost).
    created: bool


@dataclass
class TaskPage:
    """One page of a listing and the cursor of the next (None on the last page)."""

    tasks: List[Task]
    next_after: Optional[int]


@dataclass(frozen=True)
class Member:
    id: int
    addr: str
    #: The leader's view of how far this member's log matches its own (0 if unknown).
    matched_index: int
    voter: bool


@dataclass(frozen=True)
class ClusterStatus:
    """What one replica says about itself and the cluster."""

    node_id: int
    #: "leader", "follower", "candidate", "learner" or "shutdown".
    role: str
    leader_id: Optional[int]
    leader_addr: Optional[str]
    term: int
    applied_index: int
    commit_index: int
    last_log_index: int
    snapshot_index: int
    members: Sequence[Member]
    cluster_name: str
    task_count: int

    @classmethod
    def from_pb(cls, m: pb.ClusterStatusResponse) -> "ClusterStatus":
        return cls(
            node_id=m.node_id,
            role=m.role,
            leader_id=m.leader_id or None,
            leader_addr=m.leader_addr or None,
            term=m.term,
            applied_index=m.applied_index,
            commit_index=m.commit_index,
            last_log_index=m.last_log_index,
            snapshot_index=m.snapshot_index,
            members=tuple(Member(x.id, x.addr, x.matched_index, x.voter) for x in m.members),
            cluster_name=m.cluster_name,
            task_count=m.task_count,
        )


@dataclass(frozen=True)
class WorkerInfo:
    """A registered worker as the leader reports it."""

    id: str
    slots: int
    cpu_millis: int
    mem_mb: int
    labels: Dict[str, str]
    queues: Sequence[str]
    running: int
    #: Time since the leader last heard from the worker (None when not connected).
    lease_age_ms: Optional[int]
    connected: bool
    registered_at_ms: int

    @classmethod
    def from_pb(cls, m: pb.WorkerInfo) -> "WorkerInfo":
        return cls(
            id=m.spec.id,
            slots=m.spec.slots,
            cpu_millis=m.spec.cpu_millis,
            mem_mb=m.spec.mem_mb,
            labels=dict(m.spec.labels),
            queues=tuple(m.spec.queues),
            running=m.running,
            lease_age_ms=m.lease_age_ms if m.connected else None,
            connected=m.connected,
            registered_at_ms=m.registered_at_ms,
        )


@dataclass
class WorkflowTask:
    """One task of a workflow: ``after`` names other tasks of the same workflow."""

    name: str
    spec: TaskSpec
    after: Sequence[str] = ()


@dataclass
class SubmittedWorkflow:
    """The answer to a workflow submit: its id (its first task's) and each task's id by name."""

    id: int
    ids: Dict[str, int]
    #: False where the task existed already (a retried workflow).
    created: Dict[str, bool]


@dataclass
class WorkflowMember:
    name: str
    id: int
    #: The task without its payload; for one removed by retention, what its tombstone
    #: remembers, or None once that is gone too.
    task: Optional[Task]
    removed: bool
    after: List[str]


@dataclass
class Workflow:
    """A workflow's tasks, parents before children."""

    id: int
    submitted_at_ms: int
    members: List[WorkflowMember]

    @property
    def finished(self) -> bool:
        return all(m.removed or (m.task is not None and m.task.terminal) for m in self.members)

    @classmethod
    def from_pb(cls, m: pb.GetWorkflowResponse) -> "Workflow":
        return cls(
            id=m.workflow_id,
            submitted_at_ms=m.submitted_at_ms,
            members=[
                WorkflowMember(
                    name=x.name,
                    id=x.id,
                    task=Task.from_pb(x.task) if x.HasField("task") else None,
                    removed=x.removed,
                    after=list(x.after),
                )
                for x in m.members
            ],
        )


@dataclass
class Schedule:
    """A cron schedule: ``task`` created at every tick of ``cron`` (UTC), each tick at most
    once across leader changes."""

    name: str
    #: Five fields (minute hour day-of-month month day-of-week), or six with seconds first.
    cron: str
    task: TaskSpec
    #: "skip": a tick while the previous tick's task has not finished creates nothing;
    #: "allow": it creates a task anyway.
    overlap: str = "skip"
    paused: bool = False
    next_tick_ms: Optional[int] = None
    last_tick_ms: Optional[int] = None
    last_task_id: Optional[int] = None
    #: Ticks that created a task / created none / passed while no leader could fire them.
    fired: int = 0
    skipped: int = 0
    missed: int = 0
    created_at_ms: int = 0

    @classmethod
    def from_pb(cls, m: pb.Schedule) -> "Schedule":
        return cls(
            name=m.name,
            cron=m.cron,
            task=TaskSpec.from_pb(m.task),
            overlap=m.overlap,
            paused=m.paused,
            next_tick_ms=m.next_tick_ms or None,
            last_tick_ms=m.last_tick_ms or None,
            last_task_id=m.last_task_id or None,
            fired=m.fired,
            skipped=m.skipped,
            missed=m.missed,
            created_at_ms=m.created_at_ms,
        )
