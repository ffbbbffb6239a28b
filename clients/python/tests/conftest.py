"""Fixtures: real 3-replica clusters of the `flotilla` binary ($FLOTILLA_BIN), torn down even
when a test fails."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import flotilla  # noqa: E402 - the installed package, never ../src
from cluster import LocalCluster  # noqa: E402

logging.getLogger("flotilla").setLevel(logging.INFO)


def _start(tmp_path_factory, name: str) -> LocalCluster:
    c = LocalCluster(tmp_path_factory.mktemp(name))
    try:
        c.start_all()
        c.wait_for_leader()
    except BaseException:
        c.close()
        raise
    return c


@pytest.fixture(scope="session")
def cluster(tmp_path_factory):
    """One cluster shared by the tests that do not break it; each uses its own queues."""
    c = _start(tmp_path_factory, "shared")
    yield c
    c.close()


@pytest.fixture
def fresh_cluster(tmp_path_factory):
    """A cluster of the test's own, for tests that kill replicas."""
    c = _start(tmp_path_factory, "fresh")
    yield c
    c.close()


@pytest.fixture
def client(cluster):
    with flotilla.Client(cluster.addrs) as c:
        yield c
