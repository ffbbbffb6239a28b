"""A cluster of real ``flotilla server`` processes on loopback for the tests.

The same command line as crates/flotilla-cli/src/local_cluster.rs (``flotilla server --id N
--listen ADDR --data-dir DIR --peers 1=ADDR,... --cluster-name NAME``), free ephemeral ports,
data and logs in a temporary directory. Every process started here is killed by ``close()``,
which the fixtures call even when a test fails.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Dict, List, Optional

import flotilla


def flotilla_bin() -> Path:
    """$FLOTILLA_BIN, else $CARGO_TARGET_DIR/release/flotilla (target dir defaulting to
    /var/tmp/flotilla-target, as scripts/env.sh)."""
    explicit = os.environ.get("FLOTILLA_BIN")
    if explicit:
        return Path(explicit)
    target = os.environ.get("CARGO_TARGET_DIR", "/var/tmp/flotilla-target")
    return Path(target) / "release" / "flotilla"


def free_ports(n: int) -> List[int]:
    """Ports the OS considers free right now (all bound at once, so they differ)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _die_with_us() -> List[str]:
    """A command prefix that has the child SIGKILLed when the test process dies, however it
    dies, so no replica outlives a test run that was itself killed: util-linux's setpriv, where
    there is one. Not a preexec_fn: that makes subprocess fork() instead of vfork(), and a
    forked child of a process running gRPC can abort before it execs."""
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        return []
    probe = subprocess.run([setpriv, "--pdeathsig", "KILL", "--", "true"], capture_output=True)
    return [setpriv, "--pdeathsig", "KILL", "--"] if probe.returncode == 0 else []


DIE_WITH_US = _die_with_us()


class LocalCluster:
    def __init__(
        self,
        base: Path,
        n: int = 3,
        name: str = "flotilla-python",
        extra_args: Optional[List[str]] = None,
        token: Optional[str] = None,
        tls: Optional["flotilla.Tls"] = None,
    ):
        self.bin = flotilla_bin()
        if not os.access(self.bin, os.X_OK):
            raise RuntimeError(
                f"no flotilla binary at {self.bin}: build it (cargo build --release) or set FLOTILLA_BIN"
            )
        self.base = base
        self.name = name
        self.extra_args = list(extra_args or [])
        #: The token the cluster's own calls (waiting for a leader) send.
        self.token = token
        #: The TLS the cluster's own calls use (replicas given --tls-cert).
        self.tls = tls
        self.peers: Dict[int, str] = {
            i + 1: f"127.0.0.1:{p}" for i, p in enumerate(free_ports(n))
        }
        self.procs: Dict[int, subprocess.Popen] = {}
        self.others: List[subprocess.Popen] = []

    @property
    def addrs(self) -> List[str]:
        return list(self.peers.values())

    def addr(self, node_id: int) -> str:
        return self.peers[node_id]

    def log_path(self, node_id: int) -> Path:
        return self.base / f"node-{node_id}.log"

    def start(self, node_id: int) -> None:
        peers = ",".join(f"{i}={a}" for i, a in self.peers.items())
        cmd = DIE_WITH_US + [
            str(self.bin), "server",
            "--id", str(node_id),
            "--listen", self.peers[node_id],
            "--data-dir", str(self.base / f"node-{node_id}"),
            "--peers", peers,
            "--cluster-name", self.name,
        ] + self.extra_args
        with open(self.log_path(node_id), "ab") as log:
            self.procs[node_id] = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )

    def start_all(self) -> None:
        for i in self.peers:
            self.start(i)

    def kill(self, node_id: int) -> None:
        """SIGKILL: no chance to flush anything."""
        p = self.procs.pop(node_id)
        p.send_signal(signal.SIGKILL)
        p.wait()

    def spawn(self, args: List[str], log_name: str) -> subprocess.Popen:
        """Another process of the binary (e.g. a Rust worker), killed by close()."""
        with open(self.base / log_name, "ab") as log:
            p = subprocess.Popen(
                DIE_WITH_US + [str(self.bin)] + args, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )
        self.others.append(p)
        return p

    def close(self) -> None:
        for p in list(self.procs.values()) + self.others:
            if p.poll() is None:
                p.kill()
            p.wait()
        self.procs.clear()
        self.others.clear()

    def wait_for_leader(self, timeout: float = 20.0) -> int:
        """Waits until every running replica names the same leader, which says it leads."""
        deadline = time.monotonic() + timeout
        last = "no replica answered"
        with flotilla.Client(self.addrs, request_timeout=1.0, token=self.token, tls=self.tls) as c:
            while time.monotonic() < deadline:
                views = []
                for i, p in self.procs.items():
                    if p.poll() is not None:
                        continue
                    try:
                        s = c.cluster_status(self.peers[i])
                        views.append(s.leader_id if s.role != "candidate" else None)
                    except flotilla.FlotillaError as e:
                        last = str(e)
                        views.append(None)
                lead = views[0] if views else None
                if lead is not None and all(v == lead for v in views) and lead in self.procs:
                    try:
                        if c.cluster_status(self.peers[lead]).role == "leader":
                            return lead
                    except flotilla.FlotillaError as e:
                        last = str(e)
                time.sleep(0.05)
        raise AssertionError(f"no leader within {timeout}s: {last}\n{self.log_tails()}")

    def log_tails(self, lines: int = 20) -> str:
        out = []
        for i in self.peers:
            try:
                text = self.log_path(i).read_text(errors="replace").splitlines()
            except OSError:
                text = []
            out.append(f"--- node {i}\n" + "\n".join(text[-lines:]))
        return "\n".join(out)
