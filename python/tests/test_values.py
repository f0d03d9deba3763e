"""ckpt.save / ckpt.load round trips: what torch.save takes comes back as torch.load returns it."""

from __future__ import annotations

import collections
import io

import pytest
import torch

import ckpt


def assert_same(a, b, path="root"):
    """Equal values, types, dtypes, shapes, devices, key order, Parameter-ness."""
    assert type(a) is type(b), f"{path}: {type(a)} != {type(b)}"
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape and a.device == b.device, path
        assert a.requires_grad == b.requires_grad, path
        assert torch.equal(a.detach(), b.detach()), path
    elif isinstance(a, dict):
        assert list(a.keys()) == list(b.keys()), path
        for k in a:
            assert_same(a[k], b[k], f"{path}/{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{path}/{i}")
    elif isinstance(a, float) and a != a:
        assert b != b, path
    else:
        assert a == b, path


def torch_roundtrip(obj):
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=False)


ALL_DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int8,
              torch.int16, torch.int32, torch.int64, torch.uint8, torch.bool, torch.complex64,
              torch.complex128] + [d for d in (getattr(torch, "uint16", None),
                                                getattr(torch, "uint32", None),
                                                getattr(torch, "uint64", None)) if d is not None]


def sample(dtype, shape):
    g = torch.Generator().manual_seed(7)
    if dtype == torch.bool:
        return torch.randint(0, 2, shape, generator=g).bool()
    if dtype.is_complex:
        return torch.randn(shape, dtype=dtype, generator=g)
    if dtype.is_floating_point:
        return torch.randn(shape, generator=g).to(dtype)
    if dtype in (getattr(torch, "uint16", None), getattr(torch, "uint32", None),
                 getattr(torch, "uint64", None)):
        return torch.randint(0, 250, shape, generator=g, dtype=torch.int64).to(dtype)
    info = torch.iinfo(dtype)
    return torch.randint(max(info.min, -1000), min(info.max, 1000), shape, generator=g,
                         dtype=torch.int64).to(dtype)


def test_every_dtype_and_shape(client, name):
    value = collections.OrderedDict()
    for dtype in ALL_DTYPES:
        tag = str(dtype).split(".")[1]
        value[f"{tag}/matrix"] = sample(dtype, (5, 7))
        value[f"{tag}/scalar"] = sample(dtype, ())
        value[f"{tag}/empty"] = sample(dtype, (0, 3))
    saved = client.save(value, name)
    assert saved.version == 1 and saved.info.num_tensors == 3 * len(ALL_DTYPES)
    back = client.load(name)
    assert_same(back, torch_roundtrip(value))
    for k in value:
        assert back[k].dtype == value[k].dtype and back[k].shape == value[k].shape


def test_non_contiguous_conj_and_views(client, name):
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    value = {
        "transposed": base.t(),
        "strided": base[::2, 1::3],
        "expanded": torch.tensor([1.0, 2.0]).expand(3, 2),
        "conj": torch.tensor([1 + 2j, 3 - 1j], dtype=torch.complex64).conj(),
        "neg_view": torch._neg_view(torch.tensor([1.0, -2.0])) if hasattr(torch, "_neg_view")
        else torch.tensor([-1.0, 2.0]),
        "shared_a": base[0],
        "shared_b": base[1],
    }
    client.save(value, name)
    back = client.load(name)
    for k, v in value.items():
        assert back[k].is_contiguous()
        assert torch.equal(back[k], v.resolve_conj().resolve_neg()), k


def test_containers_scalars_bytes_and_key_order(client, name):
    value = {
        "z_first": 1,
        "a_second": 2.5,
        "int_keys": {3: "three", -1: None, 0: True},
        "nested": [1, (2, [3, (4,)]), {"x": [torch.ones(2)]}],
        "tuple": (None, False, "text", b"\x00\xffbytes"),
        "size": torch.Size([2, 3]),
        "big_int": (1 << 63) - 1,
        "neg_int": -(1 << 63),
        "float_inf": float("inf"),
        "float_nan": float("nan"),
        "empty_dict": {},
        "empty_list": [],
        "empty_tuple": (),
        "unicode": "ümlaut ✓",
        "blob": bytes(range(256)) * 5000,
    }
    client.save(value, name)
    back = client.load(name)
    expected = dict(value)
    expected["size"] = (2, 3)  # torch.Size comes back as a tuple
    assert_same(back, expected)
    assert list(back) == list(value)
    assert list(back["int_keys"]) == [3, -1, 0]


def test_ordered_dict_state_dicts_and_parameters(client, name):
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4),
                                torch.nn.Linear(4, 2))
    model(torch.randn(5, 3))  # running stats, num_batches_tracked
    sd = model.state_dict()
    p = torch.nn.Parameter(torch.randn(3))
    frozen = torch.nn.Parameter(torch.randn(2), requires_grad=False)
    client.save({"sd": sd, "param": p, "params": [p], "frozen": frozen}, name)
    back = client.load(name)
    assert type(back["sd"]) is collections.OrderedDict
    assert list(back["sd"]) == list(sd)
    assert back["sd"]["1.num_batches_tracked"].dtype == torch.int64
    assert_same(back["sd"], torch_roundtrip(sd))
    assert isinstance(back["param"], torch.nn.Parameter) and back["param"].requires_grad
    assert torch.equal(back["param"], p)
    assert isinstance(back["params"][0], torch.nn.Parameter)
    # A frozen Parameter comes back as a plain tensor (the format stores requires_grad only).
    assert not back["frozen"].requires_grad and torch.equal(back["frozen"], frozen)


def test_a_single_tensor_and_a_list(client, name):
    x = torch.arange(10)
    client.save(x, name)
    assert_same(client.load(name), x)
    client.save([x, x * 2], name + "-list")
    assert_same(client.load(name + "-list"), [x, x * 2])


class Custom:
    pass


@pytest.mark.parametrize("bad,where", [
    ({"model": {"act": lambda x: x}}, "'model/act'"),
    ({"list": [1, Custom()]}, "'list/1'"),
    ({"k": {(1, 2): 3}}, "dict 'k' has a key"),
    ({"s": {1, 2}}, "'s'"),
])
def test_unstorable_values_raise_type_error_and_save_nothing(client, name, bad, where):
    with pytest.raises(TypeError) as err:
        client.save(bad, name)
    assert where in str(err.value)
    with pytest.raises(ckpt.NotFound):
        client.versions(name)


def test_out_of_range_values(client, name):
    with pytest.raises(ValueError, match="64 bits"):
        client.save({"x": 1 << 64}, name)
    with pytest.raises(ValueError, match="64 KiB"):
        client.save({"x": "a" * (65 * 1024)}, name)


def test_dedup_second_save_sends_nothing(client, name):
    sd = {f"w{i}": torch.randn(256, 1024) for i in range(4)}  # 1 MiB each
    first = client.save(sd, name)
    assert first.bytes_sent == 4 << 20 and first.new_bytes == 4 << 20
    second = client.save(sd, name, step=2)
    assert second.version == 2 and second.bytes_sent == 0 and second.new_bytes == 0
    with torch.no_grad():
        sd["w1"].add_(1)
    third = client.save(sd, name)
    assert third.bytes_sent == 1 << 20 and third.new_bytes == 1 << 20


def test_large_tensor_multi_chunk(client, name):
    x = torch.randn(3 * (1 << 20) + 17)  # ~12 MiB: 4 chunks, last one partial
    saved = client.save({"x": x}, name)
    assert saved.chunks_total == 4
    assert torch.equal(client.load(name)["x"], x)
