"""Command tasks: the payload format of ``flotilla submit -- ARGV...`` and a handler that runs it.

The payload is JSON ``{"argv": [...], "env": {...}, "cwd": "..."}`` with ``env`` and ``cwd``
left out when empty, exactly as the Rust worker crate's ``CommandPayload`` writes it
(crates/flotilla-worker/src/command.rs). :class:`CommandHandler` runs it the way ``flotilla
worker`` does: a child process with ``FLOTILLA_TASK_ID``, ``FLOTILLA_ATTEMPT``,
``FLOTILLA_WORKER_ID`` (and ``FLOTILLA_CHECKPOINT`` when resuming) set, the last 4 KiB of its
stdout and stderr kept, SIGTERM then SIGKILL after a grace period on cancellation, and the
result ``{"exit_code": N, "stdout": "...", "stderr": "..."}``.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Dict, List, Optional

if TYPE_CHECKING:
    from .worker import TaskContext

#: Bytes of stdout and of stderr kept in the result.
OUTPUT_TAIL_BYTES = 4096


@dataclass
class CommandPayload:
    """What a command task runs."""

    argv: List[str]
    env: Dict[str, str] = field(default_factory=dict)
    cwd: Optional[str] = None

    def encode(self) -> bytes:
        if not self.argv or not all(isinstance(a, str) for a in self.argv):
            raise ValueError("argv must be a non-empty list of strings")
        obj: dict = {"argv": list(self.argv)}
        if self.env:
            obj["env"] = dict(sorted(self.env.items()))
        if self.cwd is not None:
            obj["cwd"] = self.cwd
        # Compact and unescaped UTF-8, as serde_json writes it.
        return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()

    @classmethod
    def decode(cls, payload: bytes) -> "CommandPayload":
        """Parses a command payload; ValueError if it is not one."""
        try:
            obj = json.loads(payload)
        except (ValueError, UnicodeDecodeError) as e:
            raise ValueError(f"payload is not JSON: {e}") from None
        if not isinstance(obj, dict) or not isinstance(obj.get("argv"), list):
            raise ValueError('payload is not a command (expected JSON {"argv": [...]})')
        argv, env, cwd = obj["argv"], obj.get("env") or {}, obj.get("cwd")
        if not all(isinstance(a, str) for a in argv):
            raise ValueError("argv must hold strings")
        if not isinstance(env, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in env.items()
        ):
            raise ValueError("env must map strings to strings")
        if cwd is not None and not isinstance(cwd, str):
            raise ValueError("cwd must be a string")
        return cls(argv, env, cwd)


def command_payload(argv: List[str], env: Optional[Dict[str, str]] = None, cwd: Optional[str] = None) -> bytes:
    """The payload of a command task running ``argv``."""
    return CommandPayload(list(argv), dict(env or {}), cwd).encode()


class _Tail(threading.Thread):
    """Reads a pipe to its end, keeping the last OUTPUT_TAIL_BYTES."""

    def __init__(self, pipe):
        super().__init__(daemon=True)
        self.pipe = pipe
        self.data = b""

    def run(self) -> None:
        buf = bytearray()
        while True:
            chunk = self.pipe.read(4096)
            if not chunk:
                break
            buf += chunk
            if len(buf) > 2 * OUTPUT_TAIL_BYTES:
                del buf[: len(buf) - OUTPUT_TAIL_BYTES]
        self.data = bytes(buf[-OUTPUT_TAIL_BYTES:])


class CommandHandler:
    """A worker handler for command tasks (pass an instance as the Worker's handler)."""

    def __init__(self, kill_grace: float = 5.0):
        #: Seconds between SIGTERM and SIGKILL when the attempt is cancelled.
        self.kill_grace = kill_grace

    def __call__(self, ctx: "TaskContext") -> bytes:
        from .worker import TaskFailed

        try:
            cmd = CommandPayload.decode(ctx.payload)
        except ValueError as e:
            raise TaskFailed(str(e), retryable=False) from None
        if not cmd.argv:
            raise TaskFailed("empty argv", retryable=False)
        env = dict(os.environ)
        env.update(cmd.env)
        env["FLOTILLA_TASK_ID"] = str(ctx.task_id)
        env["FLOTILLA_ATTEMPT"] = str(ctx.attempt)
        env["FLOTILLA_WORKER_ID"] = ctx.worker_id
        if ctx.checkpoint is not None:
            env["FLOTILLA_CHECKPOINT"] = ctx.checkpoint.decode(errors="replace")
        try:
            child = subprocess.Popen(
                cmd.argv,
                env=env,
                cwd=cmd.cwd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
        except OSError as e:
            raise TaskFailed(f"cannot start {cmd.argv[0]!r}: {e}", retryable=False) from None
        out, err = _Tail(child.stdout), _Tail(child.stderr)
        out.start()
        err.start()
        while True:
            try:
                child.wait(timeout=0.05)
                break
            except subprocess.TimeoutExpired:
                pass
            if ctx.cancelled.is_set():
                child.terminate()
                try:
                    child.wait(timeout=self.kill_grace)
                except subprocess.TimeoutExpired:
                    child.kill()
                    child.wait()
                break
        out.join()
        err.join()
        if ctx.cancelled.is_set():
            raise TaskFailed("cancelled", retryable=False)
        stdout = out.data.decode(errors="replace")
        stderr = err.data.decode(errors="replace")
        code = child.returncode
        result = json.dumps(
            {"exit_code": code if code >= 0 else None, "stdout": stdout, "stderr": stderr},
            separators=(",", ":"),
            ensure_ascii=False,
        ).encode()
        if code == 0:
            return result
        last = stderr.splitlines()[-1] if stderr.splitlines() else ""
        if code > 0:
            raise TaskFailed(f"exit code {code}: {last}", retryable=True)
        raise TaskFailed(f"killed by a signal: {last}", retryable=True)
