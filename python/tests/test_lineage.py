"""Lineage from Python: a save after a load records the loaded version as its
parent (as a resumed job would), ``parent=`` overrides it or clears it, the
server checks it, and ``ckpt log`` follows the chain across names."""

from __future__ import annotations

import subprocess

import pytest
import torch

import ckpt
from serverproc import cli_binary


def test_saves_after_a_load_record_their_parent(client, name, server):
    first = client.save({"w": torch.ones(2)}, name)
    assert first.info.parent == ""
    client.load(name)
    resumed = client.save({"w": torch.ones(2) * 2}, f"{name}-b")
    assert resumed.info.parent == f"{name}@1"
    assert client.versions(f"{name}-b")[0].parent == f"{name}@1"
    assert client.save({"w": torch.ones(2)}, f"{name}-c", parent="").info.parent == ""
    warm = client.save({"w": torch.ones(2)}, f"{name}-c", parent=f"{name}-b@1")
    assert warm.info.parent == f"{name}-b@1"
    module = torch.nn.Linear(2, 2)
    client.save(module.state_dict(), f"{name}-m")
    client.load_state_dict(module, f"{name}-m")
    assert client.save_async({"w": torch.ones(2)}, f"{name}-d").result().info.parent == \
        f"{name}-m@1"
    with pytest.raises(ckpt.InvalidArgument, match="must be NAME@VERSION"):
        client.save({"w": torch.ones(2)}, f"{name}-c", parent=f"{name}@best")
    log = subprocess.run([cli_binary(), "--server", server.address, "log", f"{name}-c@2"],
                         capture_output=True, text=True, check=True)
    chain = [line.split()[0] for line in log.stdout.splitlines()]
    assert chain == [f"{name}-c@2", f"{name}-b@1", f"{name}@1"]
