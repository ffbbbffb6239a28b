"""The README's example runs as written against a real cluster and prints what it says."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def example_blocks():
    """The first ```python block under "## Example" and the ```text block after it."""
    text = README.read_text()
    section = text.split("\n## Example\n", 1)[1].split("\n## ", 1)[0]
    code = re.search(r"```python\n(.*?)```", section, re.S)
    output = re.search(r"```text\n(.*?)```", section, re.S)
    assert code and output, "README's Example section lost its python or text block"
    return code.group(1), output.group(1)


def test_readme_example_runs_as_written(cluster, tmp_path):
    code, expected = example_blocks()
    script = tmp_path / "example.py"
    script.write_text(code)
    env = dict(os.environ, FLOTILLA_CLUSTER=",".join(cluster.addrs))
    run = subprocess.run(
        [sys.executable, str(script)], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout == expected


def test_top_level_readme_snippet_runs_with_a_command_worker(cluster, tmp_path):
    """The repository README's Python snippet, pointed at the test cluster, with a Rust
    `flotilla worker` serving the default queue as `flotilla dev`'s workers do."""
    text = (README.parent.parent.parent / "README.md").read_text()
    section = text.split("\n## Python\n", 1)[1].split("\n## ", 1)[0]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    dev = "127.0.0.1:7401,127.0.0.1:7402,127.0.0.1:7403"
    assert dev in code
    script = tmp_path / "snippet.py"
    script.write_text(code.replace(dev, ",".join(cluster.addrs)))
    worker = cluster.spawn(
        ["worker", "--cluster", ",".join(cluster.addrs), "--id", "readme-default", "--queue", "default"],
        "worker-readme-default.log",
    )
    try:
        run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    finally:
        worker.kill()
        worker.wait()
    assert run.returncode == 0, run.stderr
    assert run.stdout == "SUCCEEDED\n"
