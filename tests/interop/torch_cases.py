"""Checkpoints as Python writes them, for the interop round trips.

  python torch_cases.py make OUTDIR
      torch.save()s every case to OUTDIR/<case>.pt and lists the case names
      (one per line) in OUTDIR/cases.txt.
  python torch_cases.py compare ORIG EXPORTED [ORIG EXPORTED ...]
      Loads each pair with torch.load(map_location='cpu') and checks that the
      exported file holds the same value: same keys in the same order, same
      container and scalar types, tensors with equal dtype, shape, values
      (bitwise), requires_grad and Parameter-ness. Checks weights_only=True
      too: when torch.save's own file loads that way, ours must as well.
      For the model cases, also loads the state into fresh modules
      (load_state_dict, strict) and runs them.

Runs under PyTorch 1.13 (Debian's /usr/bin/python3) and 2.x (PyPI).
"""
import collections
import math
import os
import sys

import torch

MAJOR = int(torch.__version__.split(".")[0])
MINOR = int(torch.__version__.split(".")[1])


def cnn():
    torch.manual_seed(1)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
        torch.nn.Flatten(), torch.nn.Linear(4 * 6 * 6, 10), torch.nn.BatchNorm1d(10))


def mlp():
    torch.manual_seed(2)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 4))


def trained_cnn():
    model = cnn()
    model.train()
    model(torch.randn(5, 3, 8, 8))  # BatchNorm running stats and num_batches_tracked move
    return model


def trained_mlp(optimizer_class, **kwargs):
    model = mlp()
    opt = optimizer_class(model.parameters(), **kwargs)
    for _ in range(2):
        opt.zero_grad()
        model(torch.randn(3, 8)).pow(2).sum().backward()
        opt.step()
    return model, opt


def every_dtype():
    torch.manual_seed(3)
    base = torch.randn(2, 3)
    out = collections.OrderedDict()
    for dtype in [torch.float32, torch.float64, torch.float16, torch.bfloat16,
                  torch.complex64, torch.complex128]:
        out[str(dtype)] = (base * 3).to(dtype) if not dtype.is_complex else torch.complex(
            base, -base).to(dtype)
    for dtype in [torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8]:
        out[str(dtype)] = torch.arange(-3, 3).reshape(2, 3).to(dtype)
    out["torch.bool"] = torch.tensor([[True, False, True], [False, False, True]])
    if (MAJOR, MINOR) >= (2, 3):
        for dtype in [torch.uint16, torch.uint32, torch.uint64]:
            out[str(dtype)] = torch.arange(6, dtype=torch.int64).reshape(2, 3).to(dtype)
    out["zero_dim"] = torch.tensor(3.5)
    out["empty"] = torch.zeros(0, 4)
    out["big_int64"] = torch.tensor([2**62, -2**63], dtype=torch.int64)
    out["special_floats"] = torch.tensor([float("inf"), -float("inf"), -0.0, 1e-40])
    return out


def cases():
    """name -> value to torch.save."""
    model, adam = trained_mlp(torch.optim.Adam, lr=1e-3)
    sgd_model, sgd = trained_mlp(torch.optim.SGD, lr=0.1, momentum=0.9)
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    shared = torch.arange(10, dtype=torch.int32)
    return {
        "cnn_state_dict": trained_cnn().state_dict(),
        "mlp_adam": {"model": model.state_dict(), "optimizer": adam.state_dict()},
        "tutorial": {"epoch": 5, "model_state_dict": sgd_model.state_dict(),
                     "optimizer_state_dict": sgd.state_dict(), "loss": 0.25},
        "every_dtype": every_dtype(),
        "views": {"base": base, "row": base[1], "col": base[:, 2], "t": base.t(),
                  "block": base[1:3, 2:5], "same": base, "strided": base[::2, ::3],
                  "pair": [shared[2:], shared[:5]], "expanded": torch.ones(3).expand(2, 3)},
        "nested": [1, [2, [3, (4, 5.5, "x", None, True)]],
                   {"a": [torch.ones(2)], "t": (torch.zeros(1), ())}, b"\x00\xff bytes", [],
                   {}, ("single",)],
        "int_keys": {0: torch.ones(1), 1: {"momentum_buffer": torch.zeros(2)}, -5: "neg",
                     2**40: 1.0, 7: [0, 1, 2]},
        "scalars": {"int": -(2**63), "big": 2**63 - 1, "float": 1e-300, "nan": float("nan"),
                    "inf": float("-inf"), "true": True, "false": False, "none": None,
                    "text": "h\u00e9llo \u20ac \U0001f600", "empty": "",
                    "latin": bytes(range(256))},
        "empty_bytes": {"b": b""},  # pickled as builtins.bytes(): not weights_only in 2.x
        "parameters": {"w": torch.nn.Parameter(torch.randn(2, 2)),
                       "frozen": torch.nn.Parameter(torch.ones(2), requires_grad=False),
                       "plain": torch.randn(2)},
        "tensor_root": torch.arange(5, dtype=torch.int64),
    }


# ----------------------------------------------------------------- compare

def fail(path, message):
    raise AssertionError(f"{path or '<root>'}: {message}")


def kind(x):
    if isinstance(x, torch.Tensor):
        return "tensor"
    if isinstance(x, dict):
        return "dict"
    if isinstance(x, torch.Size):
        return "tuple"
    for t in (bool, int, float, str, bytes, list, tuple, type(None)):
        if type(x) is t:
            return t.__name__
    return type(x).__name__


def same_tensor(a, b, path):
    if a.dtype != b.dtype:
        fail(path, f"dtype {b.dtype} != {a.dtype}")
    if a.shape != b.shape:
        fail(path, f"shape {tuple(b.shape)} != {tuple(a.shape)}")
    if a.requires_grad != b.requires_grad:
        fail(path, f"requires_grad {b.requires_grad} != {a.requires_grad}")
    if isinstance(a, torch.nn.Parameter) and a.requires_grad:
        if not isinstance(b, torch.nn.Parameter):
            fail(path, "not a Parameter")
    if not b.is_contiguous():
        fail(path, "exported tensor is not contiguous")
    # Bitwise: compare the raw bytes (NaN payloads, -0.0 included).
    ab = a.detach().contiguous().reshape(-1).view(torch.uint8)
    bb = b.detach().contiguous().reshape(-1).view(torch.uint8)
    if not torch.equal(ab, bb):
        fail(path, "values differ")
    if not torch.equal(a.detach(), b.detach()) and a.dtype.is_floating_point is False:
        fail(path, "torch.equal is false")


def same(a, b, path="", counts=None):
    ka, kb = kind(a), kind(b)
    if ka != kb:
        fail(path, f"type {kb} != {ka}")
    if ka == "tensor":
        same_tensor(a, b, path)
        if counts is not None:
            counts["tensors"] += 1
    elif ka == "dict":
        if list(a.keys()) != list(b.keys()):
            fail(path, f"keys {list(b.keys())} != {list(a.keys())}")
        for k in a:
            if type(k) is not type(list(b.keys())[list(a.keys()).index(k)]):
                fail(path, f"key type of {k!r}")
            same(a[k], b[k], f"{path}/{k}", counts)
    elif ka in ("list", "tuple"):
        if len(a) != len(b):
            fail(path, f"length {len(b)} != {len(a)}")
        for i, (x, y) in enumerate(zip(a, b)):
            same(x, y, f"{path}/{i}", counts)
    elif ka == "float":
        if not (a == b or (math.isnan(a) and math.isnan(b))) or \
                math.copysign(1, a) != math.copysign(1, b):
            fail(path, f"{b!r} != {a!r}")
        if counts is not None:
            counts["scalars"] += 1
    else:
        if a != b:
            fail(path, f"{b!r} != {a!r}")
        if counts is not None:
            counts["scalars"] += 1


def locations(path):
    """The devices the file's storages were saved on (map_location sees them)."""
    seen = []

    def record(storage, location):
        seen.append(location)
        return storage

    torch.load(path, map_location=record, weights_only=False)
    return sorted(set(seen))


def save_on_device(value, path, location):
    """torch.save as on a GPU machine: storages tagged with `location`."""
    original = torch.serialization.location_tag
    torch.serialization.location_tag = lambda storage: location
    try:
        torch.save(value, path)
    finally:
        torch.serialization.location_tag = original


def load(path, weights_only):
    if weights_only:
        return torch.load(path, map_location="cpu", weights_only=True)
    return torch.load(path, map_location="cpu", weights_only=False)


def check_usable(name, value):
    """Loads model and optimizer states into fresh objects and runs them."""
    if name == "cnn_state_dict":
        model = cnn()
        model.load_state_dict(value, strict=True)
        model.eval()
        model(torch.randn(2, 3, 8, 8))
        if int(model[1].num_batches_tracked) != 1:
            fail(name, "num_batches_tracked not restored")
    elif name in ("mlp_adam", "tutorial"):
        model = mlp()
        key_model = "model" if name == "mlp_adam" else "model_state_dict"
        key_opt = "optimizer" if name == "mlp_adam" else "optimizer_state_dict"
        model.load_state_dict(value[key_model], strict=True)
        opt = (torch.optim.Adam(model.parameters()) if name == "mlp_adam" else
               torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9))
        opt.load_state_dict(value[key_opt])
        model(torch.randn(3, 8)).sum().backward()
        opt.step()


def compare(pairs):
    total = {"tensors": 0, "scalars": 0}
    weights_only = 0
    for orig, exported in pairs:
        name = os.path.splitext(os.path.basename(orig))[0]
        a = load(orig, False)
        b = load(exported, False)
        counts = {"tensors": 0, "scalars": 0}
        try:
            same(a, b, "", counts)
        except AssertionError as e:
            raise AssertionError(f"{name}: {e}") from None
        check_usable(name, b)
        if locations(orig) != locations(exported):
            raise AssertionError(f"{name}: devices {locations(exported)} != {locations(orig)}")
        for k in total:
            total[k] += counts[k]
        try:
            a_wo = load(orig, True)
        except Exception as e:  # e.g. 1.13's weights_only has no BINFLOAT
            print(f"{name}: torch.save's own file fails weights_only=True "
                  f"({type(e).__name__}); skipped for ours too")
            continue
        b_wo = load(exported, True)
        same(a_wo, b_wo, name)
        weights_only += 1
    print(f"torch {torch.__version__}: {len(pairs)} files equal "
          f"({total['tensors']} tensors, {total['scalars']} scalars), "
          f"{weights_only} also with weights_only=True")


def main():
    if sys.argv[1] == "make":
        out = sys.argv[2]
        names = []
        for name, value in cases().items():
            torch.save(value, os.path.join(out, name + ".pt"))
            names.append(name)
        # Pickle protocol 4 (FRAME, SHORT_BINUNICODE, MEMOIZE, STACK_GLOBAL,
        # BINBYTES).
        torch.manual_seed(6)
        torch.save({"w": torch.randn(2, 2), "b": b"\x01\x02", "n": [1, (2.5, "s")],
                    "sd": mlp().state_dict()},
                   os.path.join(out, "protocol4.pt"), pickle_protocol=4)
        names.append("protocol4")
        # Saved as on GPUs (the location string is all a file records).
        torch.manual_seed(5)
        save_on_device({"w": torch.randn(3), "b": torch.zeros(2)},
                       os.path.join(out, "cuda_tensors.pt"), "cuda:1")
        names.append("cuda_tensors")
        # The legacy (pre-1.6) format, for the refusal test.
        torch.save({"a": torch.ones(1)}, os.path.join(out, "legacy.pt.old"),
                   _use_new_zipfile_serialization=False)
        with open(os.path.join(out, "cases.txt"), "w") as f:
            f.write("\n".join(names) + "\n")
        print(f"torch {torch.__version__}: wrote {len(names)} cases")
    elif sys.argv[1] == "compare":
        args = sys.argv[2:]
        compare(list(zip(args[0::2], args[1::2])))
    else:
        sys.exit(f"unknown command {sys.argv[1]}")


if __name__ == "__main__":
    main()
