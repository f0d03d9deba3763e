"""Versions move both ways between the Python package, the C++ client (the CLI and
the LibTorch example programs) and .pt files."""

from __future__ import annotations

import collections
import os
import subprocess

import pytest
import torch
from torch import nn

import ckpt
from serverproc import ROOT, cli_binary


def cli(server, *args, check=True):
    out = subprocess.run([cli_binary(), "--server", server.address, *args], capture_output=True,
                         text=True, timeout=120)
    if check:
        assert out.returncode == 0, out.stderr
    return out


def same_values(a, b, path="root"):
    """Equal values; dict flavours (dict/OrderedDict) may differ, containers may not."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor), path
        assert a.dtype == b.dtype and a.shape == b.shape, path
        assert torch.equal(a.detach(), b.detach()), path
        assert a.requires_grad == b.requires_grad, path
    elif isinstance(a, dict):
        assert isinstance(b, dict) and list(a) == list(b), path
        for k in a:
            same_values(a[k], b[k], f"{path}/{k}")
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            same_values(x, y, f"{path}/{i}")
    else:
        assert type(a) is type(b) and a == b, path


def test_python_save_exports_to_pt_equal_under_torch_load(client, server, name, tmp_path):
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    model(torch.randn(6, 4))
    opt = torch.optim.Adam(model.parameters())
    model(torch.randn(6, 4)).sum().backward()
    opt.step()
    value = {"epoch": 5, "loss": 0.25, "model_state_dict": model.state_dict(),
             "optimizer_state_dict": opt.state_dict(),
             "dtypes": {"bf16": torch.randn(3, 2).to(torch.bfloat16),
                        "bool": torch.tensor([True, False]),
                        "c64": torch.randn(2, dtype=torch.complex64),
                        "i8": torch.tensor([-3, 4], dtype=torch.int8),
                        "half": torch.randn(2).half(),
                        "empty": torch.zeros(0, 5), "scalar": torch.tensor(7)},
             "misc": [None, "s", (1, 2.5), b"raw", True]}
    client.save(value, name)
    path = tmp_path / "out.pt"
    cli(server, "export", name, str(path))
    exported = torch.load(path, weights_only=False)
    back = client.load(name)
    same_values(back, exported)
    same_values(exported["model_state_dict"], model.state_dict())
    assert type(exported["model_state_dict"]) is collections.OrderedDict
    fresh = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    fresh.load_state_dict(torch.load(path, weights_only=True)["model_state_dict"])
    fresh_opt = torch.optim.Adam(fresh.parameters())
    fresh_opt.load_state_dict(exported["optimizer_state_dict"])
    # The C++ client core reads one tensor's raw bytes.
    raw = tmp_path / "bf16.bin"
    cli(server, "get", name, str(raw), "--key", "dtypes/bf16")
    assert raw.read_bytes() == value["dtypes"]["bf16"].view(torch.uint8).numpy().tobytes()


def test_pt_file_imported_by_the_cli_loads_equal_in_python(client, server, name, tmp_path):
    model = nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(2, 3)).sum().backward()
    opt.step()
    value = {"epoch": 2, "model_state_dict": model.state_dict(),
             "optimizer_state_dict": opt.state_dict(), "tokens": [1, 2, 3],
             "half": torch.randn(4).half(), "name": "run"}
    path = tmp_path / "in.pt"
    torch.save(value, path)
    cli(server, "import", str(path), name)
    back = client.load(name)
    same_values(back, torch.load(path, weights_only=True))
    fresh = nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 2))
    keys = client.load_state_dict(fresh, name, prefix="model_state_dict")
    assert keys.missing_keys == [] and keys.unexpected_keys == []
    assert torch.equal(fresh[2].weight, model[2].weight)


class MlpNet(nn.Module):
    """examples/mlp_checkpoint.cc's Net."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(3, 2)
        self.fc2 = nn.Linear(2, 1)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


def example(name: str) -> str:
    path = os.environ.get("CKPT_EXAMPLES_DIR") or str(ROOT / "build" / "examples")
    return os.path.join(path, name)


def test_libtorch_client_checkpoint_loads_in_python(client, server, tmp_path):
    binary = example("mlp_checkpoint")
    if not os.access(binary, os.X_OK):
        pytest.fail(f"{binary} is not built (scripts/build.sh builds it with LibTorch)")
    run = subprocess.run([binary, server.address], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    name = "examples/tutorial/mlp"
    checkpoint = client.load(name)
    assert checkpoint["epoch"] == 5 and isinstance(checkpoint["loss"], float)
    path = tmp_path / "mlp.pt"
    cli(server, "export", name, str(path))
    same_values(checkpoint, torch.load(path, weights_only=False))
    net = MlpNet()
    net.load_state_dict(checkpoint["model_state_dict"])
    opt = torch.optim.SGD(net.parameters(), lr=0.001, momentum=0.9)
    opt.load_state_dict(checkpoint["optimizer_state_dict"])
    assert set(opt.state_dict()["state"]) == {0, 1, 2, 3}
    assert opt.state_dict()["param_groups"][0]["momentum"] == 0.9
    in_place = MlpNet()
    client.load_state_dict(in_place, name, prefix="model_state_dict")
    assert torch.equal(in_place.fc2.weight, checkpoint["model_state_dict"]["fc2.weight"])
    # And the client-core example (raw nodes).
    run = subprocess.run([example("raw_save_load"), server.address], capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    raw = client.load("examples/mlp")
    assert raw["epoch"] == 5
    assert raw["model_state_dict"]["hidden.weight"].dtype == torch.float32
    assert raw["model_state_dict"]["hidden.weight"].shape == (2, 3)
