"""The tutorial (reference/pytorch-save-load-guide) with ckpt in place of torch.save/torch.load,
load_state_dict in place, map_location and key selection."""

from __future__ import annotations

import collections
import io

import pytest
import torch
from torch import nn

import ckpt
from ckpt import _tree


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.hidden = nn.Linear(3, 2)
        self.act = nn.ReLU()
        self.output = nn.Linear(2, 1)

    def forward(self, x):
        return self.output(self.act(self.hidden(x)))


class Net(nn.Module):
    """The tutorial's TheModelClass, smaller."""

    def __init__(self, extra: bool = False) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.fc1 = nn.Linear(4 * 3 * 3, 8)
        self.fc2 = nn.Linear(8, 2)
        if extra:
            self.fc3 = nn.Linear(2, 2)

    def forward(self, x):
        x = torch.relu(self.bn(self.conv1(x)))
        x = nn.functional.max_pool2d(x, 2).flatten(1)
        x = self.fc2(torch.relu(self.fc1(x)))
        return self.fc3(x) if hasattr(self, "fc3") else x


def train(model, optimizer, steps, seed):
    losses = []
    for step in range(steps):
        g = torch.Generator().manual_seed(seed + step)
        x = torch.randn(8, 3, 8, 8, generator=g)
        y = torch.randn(8, 2, generator=g)
        optimizer.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def test_state_dict_round_trip_like_the_tutorial(client, name):
    torch.manual_seed(0)
    net = MLP()
    client.save(net.state_dict(), name)
    net1 = MLP()
    net1.load_state_dict(client.load(name))
    for k, v in net.state_dict().items():
        assert torch.equal(net1.state_dict()[k], v)
    x = torch.randn(4, 3)
    assert torch.equal(net1(x), net(x))


@pytest.mark.parametrize("opt", ["sgd", "adam", "adamw", "adagrad", "rmsprop"])
def test_general_checkpoint_resumes_bit_identically(client, name, opt):
    make = {
        "sgd": lambda p: torch.optim.SGD(p, lr=0.01, momentum=0.9),
        "adam": lambda p: torch.optim.Adam(p, lr=0.01),
        "adamw": lambda p: torch.optim.AdamW(p, lr=0.01),
        "adagrad": lambda p: torch.optim.Adagrad(p, lr=0.01),
        "rmsprop": lambda p: torch.optim.RMSprop(p, lr=0.01, momentum=0.5),
    }[opt]
    torch.manual_seed(0)
    reference = Net()
    ref_opt = make(reference.parameters())
    expected = train(reference, ref_opt, 6, seed=100)

    torch.manual_seed(0)
    model = Net()
    optimizer = make(model.parameters())
    losses = train(model, optimizer, 3, seed=100)
    ckpt_value = {"epoch": 3, "model_state_dict": model.state_dict(),
                  "optimizer_state_dict": optimizer.state_dict(), "loss": losses[-1]}
    client.save(ckpt_value, name, step=3, epoch=3, metadata={"loss": losses[-1]})

    fresh = Net()
    fresh_opt = make(fresh.parameters())
    checkpoint = client.load(name)
    assert checkpoint["epoch"] == 3 and checkpoint["loss"] == losses[-1]
    fresh.load_state_dict(checkpoint["model_state_dict"])
    fresh_opt.load_state_dict(checkpoint["optimizer_state_dict"])
    # The optimizer state has PyTorch's layout: int keys, params lists.
    saved = optimizer.state_dict()
    assert list(checkpoint["optimizer_state_dict"]["state"]) == list(saved["state"])
    assert checkpoint["optimizer_state_dict"]["param_groups"] == saved["param_groups"]
    fresh.train()
    assert losses + train(fresh, fresh_opt, 3, seed=103) == expected
    for a, b in zip(fresh.parameters(), reference.parameters()):
        assert torch.equal(a, b)
    info = client.versions(name)[-1]
    assert (info.step, info.epoch, info.metadata["loss"]) == (3, 3, str(losses[-1]))


def test_load_state_dict_in_place_with_prefix(client, name):
    torch.manual_seed(1)
    model = Net()
    client.save({"epoch": 1, "model_state_dict": model.state_dict()}, name)
    fresh = Net()
    pointers = {k: v.data_ptr() for k, v in fresh.state_dict().items()}
    keys = client.load_state_dict(fresh, name, prefix="model_state_dict")
    assert keys.missing_keys == [] and keys.unexpected_keys == []
    assert type(keys).__name__ == "_IncompatibleKeys"
    for k, v in fresh.state_dict().items():
        assert v.data_ptr() == pointers[k], f"{k} was not filled in place"
        assert torch.equal(v, model.state_dict()[k])
    assert fresh.fc1.weight.requires_grad


def test_several_models_in_one_checkpoint(client, name):
    torch.manual_seed(2)
    model_a, model_b = Net(), MLP()
    opt_a = torch.optim.SGD(model_a.parameters(), lr=0.1, momentum=0.9)
    opt_b = torch.optim.Adam(model_b.parameters())
    train(model_a, opt_a, 1, seed=1)
    model_b(torch.randn(2, 3)).sum().backward()
    opt_b.step()
    client.save({"modelA_state_dict": model_a.state_dict(),
                 "modelB_state_dict": model_b.state_dict(),
                 "optimizerA_state_dict": opt_a.state_dict(),
                 "optimizerB_state_dict": opt_b.state_dict()}, name)
    a, b = Net(), MLP()
    oa = torch.optim.SGD(a.parameters(), lr=0.1, momentum=0.9)
    ob = torch.optim.Adam(b.parameters())
    checkpoint = client.load(name)
    a.load_state_dict(checkpoint["modelA_state_dict"])
    b.load_state_dict(checkpoint["modelB_state_dict"])
    oa.load_state_dict(checkpoint["optimizerA_state_dict"])
    ob.load_state_dict(checkpoint["optimizerB_state_dict"])
    for x, y in zip(list(a.parameters()) + list(b.parameters()),
                    list(model_a.parameters()) + list(model_b.parameters())):
        assert torch.equal(x, y)
    assert torch.equal(ob.state_dict()["state"][0]["exp_avg"],
                       opt_b.state_dict()["state"][0]["exp_avg"])
    # In place, from inside the checkpoint.
    b2 = MLP()
    client.load_state_dict(b2, name, prefix="modelB_state_dict")
    assert torch.equal(b2.output.weight, model_b.output.weight)


def test_warm_start_strict_false(client, name):
    torch.manual_seed(3)
    model_a = Net()
    client.save(model_a.state_dict(), name)
    model_b = Net(extra=True)
    expected = model_b.load_state_dict(model_a.state_dict(), strict=False)
    keys = client.load_state_dict(model_b, name, strict=False)
    assert keys.missing_keys == expected.missing_keys == ["fc3.weight", "fc3.bias"]
    assert keys.unexpected_keys == expected.unexpected_keys == []
    assert torch.equal(model_b.fc1.weight, model_a.fc1.weight)
    # And the other way: a checkpoint with more keys than the model.
    client.save(Net(extra=True).state_dict(), name + "-bigger")
    small = Net()
    keys = client.load_state_dict(small, name + "-bigger", strict=False)
    assert keys.unexpected_keys == ["fc3.weight", "fc3.bias"] and keys.missing_keys == []


def test_strict_errors_have_pytorchs_message(client, name):
    client.save(Net(extra=True).state_dict(), name)
    model = MLP()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(RuntimeError) as torch_err:
        model.load_state_dict(Net(extra=True).state_dict())
    with pytest.raises(ckpt.FailedPrecondition) as err:
        client.load_state_dict(model, name)
    assert isinstance(err.value, RuntimeError)
    assert err.value.details == str(torch_err.value)
    assert err.value.details.startswith(
        'Error(s) in loading state_dict for MLP:\n\tMissing key(s) in state_dict: '
        '"hidden.weight", "hidden.bias", "output.weight", "output.bias". \n\t'
        'Unexpected key(s) in state_dict: "conv1.weight"')
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), "nothing is copied on error"


def test_shape_mismatch_names_the_key_even_without_strict(client, name):
    net = MLP()
    sd = net.state_dict()
    sd["output.weight"] = torch.zeros(1, 5)
    client.save(sd, name)
    with pytest.raises(RuntimeError) as torch_err:
        MLP().load_state_dict(sd, strict=False)
    with pytest.raises(ckpt.InvalidArgument) as err:
        client.load_state_dict(MLP(), name, strict=False)
    assert err.value.details == str(torch_err.value)
    assert "size mismatch for output.weight: copying a param with shape torch.Size([1, 5])" \
        in err.value.details


def test_data_parallel_prefix(client, name):
    torch.manual_seed(4)
    parallel = nn.DataParallel(MLP())
    assert list(parallel.state_dict())[0] == "module.hidden.weight"
    client.save(parallel.state_dict(), name)
    plain = MLP()
    keys = client.load_state_dict(plain, name, strip_prefix="module.")
    assert keys.missing_keys == [] and keys.unexpected_keys == []
    assert torch.equal(plain.hidden.weight, parallel.module.hidden.weight)
    stripped = client.load(name, strip_prefix="module.")
    assert list(stripped) == list(plain.state_dict())
    # The tutorial's way: save model.module.state_dict().
    client.save(parallel.module.state_dict(), name + "-module")
    other = MLP()
    other.load_state_dict(client.load(name + "-module"))
    assert torch.equal(other.output.bias, parallel.module.output.bias)


def save_on_fake_device(client, name, device):
    """Saves {"w": tensor} recorded as living on `device` (no such device here)."""
    flat = _tree.flatten({"w": torch.arange(6, dtype=torch.float32).reshape(2, 3)})
    flat.entries[1].device = device
    client._save_flat(name, flat)


def test_map_location_forms(client, name):
    x = torch.randn(3, 4)
    client.save({"x": x}, name)
    for loc in ("cpu", torch.device("cpu"), {"cpu": "cpu"}, lambda storage, loc: storage,
                lambda storage, loc: None):
        back = client.load(name, map_location=loc)
        assert back["x"].device.type == "cpu" and torch.equal(back["x"], x)
    assert client.load(name, map_location="meta")["x"].device.type == "meta"
    seen = []
    client.load(name, map_location=lambda storage, loc: seen.append(loc))
    assert seen == ["cpu"]


def test_tensor_from_a_missing_device_needs_map_location(client, name):
    save_on_fake_device(client, name, "cuda:7")
    assert client.show(name).entries[1].device == "cuda:7"
    with pytest.raises(ckpt.FailedPrecondition, match="map_location") as err:
        client.load(name)
    assert "'w' was saved on cuda:7" in str(err.value)
    for loc in ("cpu", {"cuda:7": "cpu"}, torch.device("cpu"),
                lambda storage, loc: storage if loc == "cuda:7" else None):
        back = client.load(name, map_location=loc)
        assert back["w"].device.type == "cpu"
        assert torch.equal(back["w"], torch.arange(6, dtype=torch.float32).reshape(2, 3))
    with pytest.raises(ckpt.FailedPrecondition):
        client.load(name, map_location={"cuda:0": "cpu"})  # unmapped devices stay


def test_keys_select_only_those_bytes(client, server, name):
    value = {"model_state_dict": {"hidden.weight": torch.randn(256, 1024),
                                  "hidden.bias": torch.randn(1024),
                                  "output.weight": torch.randn(512, 1024)},
             "optimizer_state_dict": {"state": {0: {"momentum_buffer": torch.randn(256, 1024)}},
                                      "param_groups": [{"lr": 0.1, "params": [0]}]},
             "epoch": 3}
    client.save(value, name)
    before = server.metric("ckpt_sent_bytes_total", 'method="Load"')
    back = client.load(name, keys=["model_state_dict/hidden.*"])
    sent = server.metric("ckpt_sent_bytes_total", 'method="Load"') - before
    assert sent == (256 * 1024 + 1024) * 4
    assert list(back) == ["model_state_dict"]
    assert list(back["model_state_dict"]) == ["hidden.weight", "hidden.bias"]
    assert torch.equal(back["model_state_dict"]["hidden.bias"],
                       value["model_state_dict"]["hidden.bias"])
    back = client.load(name, keys=["*/0/momentum_buffer", "epoch"])
    assert back["epoch"] == 3
    assert torch.equal(back["optimizer_state_dict"]["state"][0]["momentum_buffer"],
                       value["optimizer_state_dict"]["state"][0]["momentum_buffer"])
    # load_state_dict with a prefix fetches only that subtree.
    before = server.metric("ckpt_sent_bytes_total", 'method="Load"')
    target = {"hidden.weight": torch.zeros(256, 1024), "hidden.bias": torch.zeros(1024),
              "output.weight": torch.zeros(512, 1024)}
    client.load_state_dict(target, name, prefix="model_state_dict")
    sent = server.metric("ckpt_sent_bytes_total", 'method="Load"') - before
    assert sent == (256 * 1024 + 1024 + 512 * 1024) * 4
    assert torch.equal(target["output.weight"], value["model_state_dict"]["output.weight"])


def test_torchscript_whole_model_as_bytes(client, name):
    net = MLP()
    buf = io.BytesIO()
    torch.jit.save(torch.jit.script(net), buf)
    client.save({"model": buf.getvalue(), "epoch": 1}, name)
    back = client.load(name)
    scripted = torch.jit.load(io.BytesIO(back["model"]))
    x = torch.randn(2, 3)
    assert torch.equal(scripted(x), net(x))
    with pytest.raises(TypeError, match="state_dict"):
        client.save(net, name + "-module")


def test_non_contiguous_destination_is_filled(client, name):
    w = torch.randn(4, 6)
    client.save({"w": w}, name)
    dst = torch.zeros(6, 4).t()
    client.load_state_dict({"w": dst}, name)
    assert torch.equal(dst, w)


def test_failed_loads_leave_no_reader_threads(client, name):
    import threading
    import time
    client.save({"w": torch.randn(512, 1024), "b": torch.randn(3)}, name)
    client.load(name)
    before = threading.active_count()
    for _ in range(5):
        with pytest.raises(ckpt.FailedPrecondition):
            client.load_state_dict({"x": torch.zeros(1)}, name)  # strict: refused at the tree
        with pytest.raises(ckpt.InvalidArgument):
            client.load_state_dict({"w": torch.zeros(2, 2), "b": torch.zeros(3)}, name)
    deadline = time.monotonic() + 10
    while threading.active_count() > before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert threading.active_count() <= before
    assert torch.equal(client.load(name)["b"], client.load(name, keys=["b"])["b"])
