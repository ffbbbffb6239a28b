"""The web dashboard in a real headless browser (Debian's chromium, driven over the DevTools
protocol), against a real 3-replica cluster of the `flotilla` binary.

Checks, failing with one line naming what was wrong:
- the leader's page loads with no console error, no uncaught exception and no failed request;
- it shows the leader, every member, the queue, the schedule and the tasks this test submitted
  (a pending one with why it does not run), and its throughput chart gets points (it refreshes by
  itself);
- it is read-only until an admin token is entered; with one, its cancel button cancels a task,
  and the CLI then reports that task cancelled;
- a follower's page says it follows the leader; the HTTP actions refuse no token, a read token,
  and (on a follower) name the leader.
A screenshot of the leader's page is saved to $FLOTILLA_ARTIFACTS/dashboard.png (default
artifacts/ at the repository root).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import websocket  # websocket-client

ROOT = Path(__file__).resolve().parents[2]
TARGET = Path(os.environ.get("CARGO_TARGET_DIR", "/var/tmp/flotilla-target"))
BIN = Path(os.environ.get("FLOTILLA_BIN", TARGET / "release" / "flotilla"))
ARTIFACTS = Path(os.environ.get("FLOTILLA_ARTIFACTS", ROOT / "artifacts"))
DEADLINE_S = 30


def fail(message: str) -> None:
    raise SystemExit(f"dashboard test: FAILED: {message}")


def free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def await_true(what: str, probe, timeout: float = DEADLINE_S):
    """Calls `probe` until it returns something truthy; fails naming `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = probe()
            if last:
                return last
        except (OSError, urllib.error.URLError, ValueError) as e:
            last = e
        time.sleep(0.1)
    fail(f"timed out after {timeout} s waiting for {what} (last: {last!r})")


def http(method: str, url: str, token: str | None = None) -> tuple[int, dict]:
    req = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


class Cluster:
    """Three `flotilla server` processes with HTTP listeners and a tokens file."""

    def __init__(self, base: Path):
        self.base = base
        self.tokens_file = base / "tokens"
        self.admin = self.new_token("ops", "admin")
        self.reader = self.new_token("viewer", "read")
        self.runner = self.new_token("runner", "worker")
        grpc, web = free_ports(3), free_ports(3)
        self.grpc = {i + 1: f"127.0.0.1:{p}" for i, p in enumerate(grpc)}
        self.web = {i + 1: f"http://127.0.0.1:{p}" for i, p in enumerate(web)}
        self.procs: dict[int, subprocess.Popen] = {}
        peers = ",".join(f"{i}={a}" for i, a in self.grpc.items())
        for i, addr in self.grpc.items():
            log = open(base / f"replica-{i}.log", "wb")
            self.procs[i] = subprocess.Popen(
                [str(BIN), "server", "--id", str(i), "--listen", addr,
                 "--data-dir", str(base / f"replica-{i}"), "--peers", peers,
                 "--cluster-name", "dashboard-test", "--tokens-file", str(self.tokens_file),
                 "--http-listen", self.web[i].removeprefix("http://")],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)

    def start_worker(self, queue: str) -> None:
        """A worker serving `queue` only, with 4 slots."""
        log = open(self.base / "worker.log", "wb")
        self.procs[0] = subprocess.Popen(
            [str(BIN), "worker", "--cluster", ",".join(self.grpc.values()), "--id", "w-dashboard",
             "--slots", "4", "--queue", queue],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            env={**os.environ, "FLOTILLA_TOKEN": self.runner})

    def new_token(self, name: str, role: str) -> str:
        out = subprocess.run(
            [str(BIN), "token", "new", "--name", name, "--role", role,
             "--tokens-file", str(self.tokens_file)],
            capture_output=True, text=True, check=True)
        return out.stdout.strip()

    def cli(self, *args: str) -> str:
        out = subprocess.run(
            [str(BIN), "--cluster", ",".join(self.grpc.values()), *args],
            capture_output=True, text=True, env={**os.environ, "FLOTILLA_TOKEN": self.admin})
        if out.returncode != 0:
            fail(f"flotilla {' '.join(args)} exited {out.returncode}: {out.stderr.strip()}")
        return out.stdout.strip()

    def leader(self) -> int:
        """The replica every replica's overview names as leader, once they agree."""
        def agreed():
            seen = {http("GET", f"{u}/api/overview")[1]["replica"]["leader"] for u in self.web.values()}
            return seen.pop() if len(seen) == 1 and None not in seen else None
        return await_true("the replicas to agree on a leader", agreed)

    def close(self) -> None:
        for p in self.procs.values():
            p.kill()
        for p in self.procs.values():
            p.wait()


class Browser:
    """Headless chromium and one page, over the DevTools protocol. Records every console error,
    uncaught exception and failed request the page produces."""

    def __init__(self, base: Path):
        exe = shutil.which("chromium") or shutil.which("chromium-browser")
        if exe is None:
            fail("no chromium on PATH (scripts/setup.sh installs Debian's chromium)")
        port = free_ports(1)[0]
        self.proc = subprocess.Popen(
            [exe, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--disable-dev-shm-usage", f"--remote-debugging-port={port}",
             f"--user-data-dir={base / 'chromium'}", "--window-size=1400,1800", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=open(base / "chromium.log", "wb"))
        pages = await_true("chromium's DevTools endpoint", lambda: [
            t for t in json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/json", timeout=2).read())
            if t.get("type") == "page"])
        self.ws = websocket.create_connection(pages[0]["webSocketDebuggerUrl"], timeout=10)
        self.next_id = 0
        self.errors: list[str] = []
        for domain in ("Runtime", "Log", "Page", "Network"):
            self.call(f"{domain}.enable")

    def _record(self, event: dict) -> None:
        method, p = event.get("method"), event.get("params", {})
        if method == "Runtime.exceptionThrown":
            d = p["exceptionDetails"]
            self.errors.append(f"uncaught: {d.get('exception', {}).get('description') or d.get('text')}")
        elif method == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
            self.errors.append("console.error: " + " ".join(str(a.get("value", a.get("description"))) for a in p["args"]))
        elif method == "Log.entryAdded" and p["entry"]["level"] == "error":
            self.errors.append(f"log: {p['entry']['text']} ({p['entry'].get('url', '')})")
        elif method == "Network.loadingFailed" and not p.get("canceled"):
            self.errors.append(f"request failed: {p.get('errorText')}")

    def call(self, method: str, **params):
        self.next_id += 1
        want = self.next_id
        self.ws.send(json.dumps({"id": want, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == want:
                if "error" in msg:
                    fail(f"DevTools {method}: {msg['error']}")
                return msg.get("result", {})
            self._record(msg)

    def eval(self, expression: str):
        r = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in r:
            fail(f"evaluating {expression!r}: {r['exceptionDetails']}")
        return r["result"].get("value")

    def open(self, url: str) -> None:
        self.call("Page.navigate", url=url)

    def screenshot(self, path: Path) -> None:
        data = self.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))

    def close(self) -> None:
        try:
            self.ws.close()
        finally:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def main() -> None:
    if not os.access(BIN, os.X_OK):
        fail(f"no flotilla binary at {BIN} (cargo build --release, or set FLOTILLA_BIN)")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="flotilla-dashboard-") as tmp:
        base = Path(tmp)
        cluster = Cluster(base)
        browser = None
        try:
            leader = cluster.leader()
            follower = next(i for i in cluster.grpc if i != leader)
            # No worker serves this queue: the tasks stay pending, to be seen and cancelled.
            kept = int(cluster.cli("submit", "--queue", "dashboard-test", "--", "echo", "kept"))
            doomed = int(cluster.cli("submit", "--queue", "dashboard-test", "--", "echo", "doomed"))
            # A worker runs another queue's tasks meanwhile, for the workers table and the chart.
            cluster.start_worker("dashboard-run")
            ran = [int(cluster.cli("submit", "--queue", "dashboard-run", "--", "sleep", "0.5"))
                   for _ in range(12)]

            # A schedule far from its first tick: listed, never firing during the test.
            cluster.cli("schedule", "add", "dash-yearly", "--cron", "0 0 1 1 *",
                        "--queue", "dashboard-test", "--", "echo", "new year")

            browser = Browser(base)
            browser.open(cluster.web[leader] + "/")
            text = lambda sel: browser.eval(f"document.querySelector({json.dumps(sel)})?.textContent ?? ''")
            await_true("the page to load its overview", lambda: browser.eval("document.body?.dataset.loaded === 'true'"))
            await_true("the page to name this replica the leader",
                       lambda: f"replica {leader} (leader)" in text("#replica"))
            await_true("the members table to list 3 replicas with the leader marked", lambda: browser.eval(
                "document.querySelectorAll('#members tbody tr').length === 3 && "
                f"document.querySelector('#members tr[data-member=\"{leader}\"] .badge.leader') !== null"))
            for tid in (kept, doomed):
                await_true(f"task {tid} listed as pending", lambda: browser.eval(
                    f"document.querySelector('#tasks tr[data-task-id=\"{tid}\"]')?.dataset.state === 'pending'"))
            if "dashboard-test" not in text("#queues tbody"):
                fail(f"the queues table does not list the test's queue: {text('#queues tbody')!r}")
            await_true("the schedules table to list the schedule with its next tick", lambda: (
                "dash-yearly" in text('#schedules tr[data-schedule="dash-yearly"]')
                and "0 0 1 1 *" in text('#schedules tr[data-schedule="dash-yearly"]')
                and "-01-01T00:00:00Z" in text('#schedules tr[data-schedule="dash-yearly"]')))
            # Why a task does not run, as `flotilla why` says it.
            await_true(f"task {kept} to say why it does not run", lambda: (
                'no registered worker serves queue "dashboard-test"'
                in text(f'#tasks tr[data-task-id="{kept}"]')))
            await_true("the workers table to show the worker with its lease renewed", lambda: (
                "w-dashboard" in text("#workers tbody") and " ago" in text("#workers tbody")
                and "(leader only)" not in text("#workers tbody")))
            await_true(f"the tasks the worker ran to show as succeeded", lambda: browser.eval(
                f"document.querySelector('#tasks tr[data-task-id=\"{ran[-1]}\"]')?.dataset.state === 'succeeded'"),
                timeout=60)
            await_true("the summary to count the finished tasks", lambda: int(browser.eval(
                "document.querySelector('[data-card=\"succeeded\"] b')?.textContent || '0'")) == len(ran))
            await_true("the throughput chart to get points as the page refreshes",
                       lambda: int(browser.eval("document.getElementById('chart').dataset.points || '0'")) >= 2)
            if browser.eval("getComputedStyle(document.querySelector('#tasks tbody td.admin-only')).display") != "none":
                fail("the cancel buttons show before an admin token was entered")

            # The HTTP actions, outside the browser: refused without an admin token.
            url = f"{cluster.web[leader]}/api/tasks/{kept}/cancel"
            code, body = http("POST", url)
            if code != 401 or "no token" not in body["error"]:
                fail(f"cancel without a token answered {code} {body}")
            code, body = http("POST", url, cluster.reader)
            if code != 403 or "admin" not in body["error"]:
                fail(f"cancel with a read token answered {code} {body}")
            code, body = http("POST", f"{cluster.web[follower]}/api/tasks/{kept}/cancel", cluster.admin)
            if code != 503 or f"leader is {leader}" not in body["error"]:
                fail(f"cancel on follower {follower} answered {code} {body}")
            code, body = http("POST", f"{cluster.web[leader]}/api/tasks/abc/cancel", cluster.admin)
            if code != 400 or "abc" not in body["error"]:
                fail(f"cancel of task 'abc' answered {code} {body}")

            # An admin token enables the cancel buttons; one cancels the doomed task.
            browser.eval(f"document.getElementById('token').value = {json.dumps(cluster.admin)};"
                         "document.getElementById('token-form').requestSubmit(); true")
            await_true("the admin token to enable actions", lambda: browser.eval("document.body.classList.contains('admin')"))
            browser.eval(f"document.querySelector('#tasks tr[data-task-id=\"{doomed}\"] button').click(); true")
            await_true(f"the page to show task {doomed} cancelled", lambda: browser.eval(
                f"document.querySelector('#tasks tr[data-task-id=\"{doomed}\"]')?.dataset.state === 'cancelled'"))
            if f"task {doomed} cancelled" not in text("#admin-status"):
                fail(f"the page did not confirm the cancel: {text('#admin-status')!r}")
            status = json.loads(cluster.cli("--json", "status", str(doomed)))
            if status.get("state") != "cancelled":
                fail(f"the CLI reports task {doomed} as {status}, not cancelled")
            status = json.loads(cluster.cli("--json", "status", str(kept)))
            if status.get("state") != "pending":
                fail(f"task {kept}, not cancelled, is {status}")

            shot = ARTIFACTS / "dashboard.png"
            browser.screenshot(shot)

            # A follower's page names the leader it follows.
            browser.open(cluster.web[follower] + "/")
            await_true("the follower's page to say whom it follows", lambda: (
                f"replica {follower} (follower)" in text("#replica") and f"leader {leader}" in text("#replica")))
            browser.call("Runtime.evaluate", expression="1")  # drain the events so far
            if browser.errors:
                fail("the page logged errors:\n  " + "\n  ".join(browser.errors))
            print(f"dashboard test: ok in {time.monotonic() - started:.1f} s "
                  f"(leader {leader}, tasks {kept} and {doomed}); screenshot {shot}")
        finally:
            if browser is not None:
                browser.close()
            cluster.close()


if __name__ == "__main__":
    try:
        main()
    except SystemExit:
        raise
    except Exception as e:  # one line, non-zero exit, for anything unexpected
        print(f"dashboard test: FAILED: {type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(1)
