"""Python client and worker runtime for Flotilla, a highly available task scheduler.

    from flotilla import Client, Worker

    client = Client("127.0.0.1:7401,127.0.0.1:7402,127.0.0.1:7403")
    task_id = client.submit(b"hello", queue="default")
    task = client.wait(task_id, timeout=30)

The gRPC stubs in ``flotilla._proto`` are generated from the repository's proto/ when the
package is built; everything else here is a thin layer over them: leader discovery and hints,
retries under one deadline, idempotency keys on every submitted task (``client``), typed values
(``types``), errors (``errors``), the worker loop (``worker``) and command tasks (``command``).
"""

from .client import Client, Tls
from .command import CommandHandler, CommandPayload, command_payload
from .errors import (
    AlreadyExistsError,
    BadResponseError,
    FailedPreconditionError,
    FlotillaError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    RejectedError,
    UnauthenticatedError,
    UnavailableError,
)
from .types import (
    ClusterStatus,
    Consistency,
    Member,
    Schedule,
    Submitted,
    Task,
    TaskPage,
    TaskSpec,
    TaskState,
    WorkerInfo,
    Workflow,
    WorkflowMember,
    WorkflowTask,
    SubmittedWorkflow,
)
from .worker import TaskContext, TaskFailed, Worker

__all__ = [
    "Tls",
    "AlreadyExistsError",
    "BadResponseError",
    "Client",
    "ClusterStatus",
    "CommandHandler",
    "CommandPayload",
    "Consistency",
    "FailedPreconditionError",
    "FlotillaError",
    "InvalidArgumentError",
    "Member",
    "NotFoundError",
    "PermissionDeniedError",
    "RejectedError",
    "Schedule",
    "Submitted",
    "SubmittedWorkflow",
    "Task",
    "TaskContext",
    "TaskFailed",
    "TaskPage",
    "TaskSpec",
    "TaskState",
    "UnauthenticatedError",
    "UnavailableError",
    "Worker",
    "WorkerInfo",
    "Workflow",
    "WorkflowMember",
    "WorkflowTask",
    "command_payload",
]
