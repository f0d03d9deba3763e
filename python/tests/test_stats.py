"""Per-tensor statistics and the NaN/Inf guard from Python: the statistics the
client computes with torch match torch's own reductions, the server stores them
(and Client.show returns them), reject_nonfinite refuses a NaN-poisoned version
naming the tensors, a server prefix refuses it whatever the client asks, and the
C++ CLI prints what Python saved."""

from __future__ import annotations

import math
import subprocess

import pytest
import torch

import ckpt
from serverproc import ServerProcess, cli_binary


def _state():
    torch.manual_seed(0)
    return {
        "w": torch.randn(300, 70) * 3 + 1,
        "half": torch.randn(1000).to(torch.float16),
        "bf": torch.randn(257).to(torch.bfloat16),
        "steps": torch.tensor([-5, 10, 40]),
        "mask": torch.tensor([True, False, True, True]),
        "empty": torch.zeros(0),
        "z": torch.zeros(3, dtype=torch.complex64),
    }


def _expect(stats, t):
    x = t.detach().reshape(-1).to(torch.float64)
    assert stats.count == t.numel()
    finite = x[torch.isfinite(x)]
    assert stats.nan == int(torch.isnan(x).sum())
    assert stats.pos_inf == int((x == math.inf).sum())
    assert stats.neg_inf == int((x == -math.inf).sum())
    if finite.numel() == 0:
        return
    assert stats.min == float(finite.min()) and stats.max == float(finite.max())
    assert stats.mean == pytest.approx(float(finite.mean()), rel=1e-5, abs=1e-6)
    assert stats.std == pytest.approx(float(finite.std(unbiased=False)), rel=1e-4)
    assert stats.l2 == pytest.approx(float(finite.norm()), rel=1e-6)


def test_statistics_are_stored_and_shown(client, name, server):
    state = _state()
    client.save(state, name, tensor_stats=True)
    entries = {e.key: e for e in client.show(name).entries}
    for key in ("w", "half", "bf", "steps", "mask", "empty"):
        assert entries[key].stats is not None, key
        _expect(entries[key].stats, state[key])
    assert entries["z"].stats is None  # complex: none
    # Without asking: none (the C++ client computes them by default).
    client.save(state, name)
    assert all(e.stats is None for e in client.show(name).entries)
    # The C++ CLI prints what Python stored.
    cli = subprocess.run([cli_binary(), "--server", server.address, "show", "--stats",
                          f"{name}@1"], capture_output=True, text=True, check=True)
    row = next(line for line in cli.stdout.splitlines() if line.startswith("w "))
    assert row.split()[:4] == ["w", "float32", "[300,", "70]"]
    assert "NON-FINITE" not in cli.stdout


def test_reject_nonfinite_refuses_and_saves_nothing(client, name):
    state = {"model": {"w": torch.ones(10), "b": torch.ones(4)}}
    state["model"]["w"][3] = math.nan
    state["model"]["w"][4] = -math.inf
    with pytest.raises(ckpt.FailedPrecondition) as refused:
        client.save(state, name, reject_nonfinite=True)
    assert str(refused.value).endswith(
        f"refusing '{name}': 1 tensor holds NaN or infinite values: 'model/w' (1 NaN, 1 -Inf "
        "of 10) (the save asked to reject non-finite values); nothing was saved")
    with pytest.raises(ckpt.NotFound):
        client.versions(name)
    # Saved anyway without the guard, the statistics tell.
    client.save(state, name, tensor_stats=True)
    w = {e.key: e for e in client.show(name).entries}["model/w"].stats
    assert (w.nan, w.pos_inf, w.neg_inf, w.nonfinite) == (1, 0, 1, 2)
    assert (w.min, w.max, w.mean) == (1.0, 1.0, 1.0)
    # save_async takes the same options.
    with pytest.raises(ckpt.FailedPrecondition):
        client.save_async(state, name, reject_nonfinite=True).result()


def test_a_server_prefix_refuses_whatever_the_client_asks(name):
    proc = ServerProcess(["--reject-nonfinite", "guarded/"])
    try:
        with ckpt.Client(proc.address) as c:
            poisoned = {"w": torch.tensor([1.0, math.inf])}
            with pytest.raises(ckpt.FailedPrecondition, match="under 'guarded/'"):
                c.save(poisoned, "guarded/x", tensor_stats=True)
            # A float tensor without statistics cannot be vouched for.
            with pytest.raises(ckpt.FailedPrecondition, match="without statistics"):
                c.save({"w": torch.ones(3)}, "guarded/x")
            c.save({"w": torch.ones(3)}, "guarded/x", tensor_stats=True)
            c.save(poisoned, "open/x")
    finally:
        proc.close()
