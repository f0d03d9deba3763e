"""Fixtures: a real ckpt-server per test session, clients, unique names."""

from __future__ import annotations

import os
import re
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

import ckpt  # noqa: E402
from serverproc import ServerProcess  # noqa: E402


@pytest.fixture(scope="session")
def server():
    proc = ServerProcess(["--part-timeout", "60"])
    yield proc
    proc.close()


@pytest.fixture()
def client(server):
    c = ckpt.Client(server.address)
    yield c
    c.close()


@pytest.fixture()
def name(request):
    """A checkpoint name unique to the test."""
    test = re.sub(r"[^A-Za-z0-9._-]", "-", request.node.name)[:100]
    return f"pytest/{test}"
