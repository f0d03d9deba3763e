"""Checks a file exported by `ckpt export` against the tree a C++ test saved.

  python check_expected.py FILE.pt|FILE.safetensors EXPECTED.json

EXPECTED.json describes the value (written by interop_e2e_test):
  {"type": "dict", "items": [[key, node], ...]}   key: str or int
  {"type": "list" | "tuple", "items": [node, ...]}
  {"type": "none"} | {"type": "bool" | "int" | "float" | "str", "value": v}
  {"type": "bytes", "hex": "..."}
  {"type": "tensor", "dtype": "float32", "shape": [...], "device": "cuda:1",
   "requires_grad": false, "hex": "..."}   (raw little-endian bytes)
A .pt file is loaded with torch.load under weights_only=False and True, with
a map_location function that records each storage's saved device; a
.safetensors file with the reference safetensors package (flat dict).
"""
import io
import json
import sys

import torch


def fail(path, message):
    raise AssertionError(f"{path or '<root>'}: {message}")


def raw(t):
    return bytes(t.detach().contiguous().reshape(-1).view(torch.uint8).tolist())


def check(node, value, path, devices):
    t = node["type"]
    if t == "dict":
        if not isinstance(value, dict):
            fail(path, f"{type(value).__name__}, expected dict")
        keys = [k for k, _ in node["items"]]
        if list(value.keys()) != keys:
            fail(path, f"keys {list(value.keys())} != {keys}")
        for k, child in node["items"]:
            check(child, value[k], f"{path}/{k}", devices)
    elif t in ("list", "tuple"):
        if type(value).__name__ != t:
            fail(path, f"{type(value).__name__}, expected {t}")
        if len(value) != len(node["items"]):
            fail(path, f"length {len(value)}")
        for i, (child, v) in enumerate(zip(node["items"], value)):
            check(child, v, f"{path}/{i}", devices)
    elif t == "tensor":
        if not isinstance(value, torch.Tensor):
            fail(path, f"{type(value).__name__}, expected tensor")
        if str(value.dtype) != "torch." + node["dtype"]:
            fail(path, f"dtype {value.dtype} != {node['dtype']}")
        if list(value.shape) != node["shape"]:
            fail(path, f"shape {list(value.shape)} != {node['shape']}")
        if raw(value) != bytes.fromhex(node["hex"]):
            fail(path, "values differ")
        if devices is not None:
            if value.requires_grad != node["requires_grad"]:
                fail(path, f"requires_grad {value.requires_grad}")
            if node["requires_grad"] and not isinstance(value, torch.nn.Parameter):
                fail(path, "not a Parameter")
            devices.append(node["device"])
    elif t == "bytes":
        if type(value) is not bytes or value != bytes.fromhex(node["hex"]):
            fail(path, f"{value!r} != bytes {node['hex']}")
    elif t == "none":
        if value is not None:
            fail(path, f"{value!r} != None")
    else:
        want = node["value"]
        if type(value).__name__ != t or value != want:
            fail(path, f"{value!r} != {t} {want!r}")


def main():
    path, expected_path = sys.argv[1], sys.argv[2]
    with open(expected_path) as f:
        expected = json.load(f)
    if path.endswith(".safetensors"):
        from safetensors import safe_open
        from safetensors.torch import load_file
        value = load_file(path)
        check(expected["value"], value, "", None)
        with safe_open(path, "pt") as f:
            if f.metadata() != expected.get("metadata"):
                fail("__metadata__", f"{f.metadata()} != {expected.get('metadata')}")
        print(f"safetensors: {len(value)} tensors equal")
        return
    devices = []
    value = None
    for weights_only in (False, True):
        locations = []

        def record(storage, location):
            locations.append(location)
            return storage

        try:
            value = torch.load(path, map_location=record, weights_only=weights_only)
        except Exception:
            if not weights_only:
                raise
            # PyTorch 1.13's weights_only unpickler lacks BINFLOAT and bytes:
            # accept a refusal only if it refuses torch.save's own file too.
            buffer = io.BytesIO()
            torch.save(value, buffer)
            buffer.seek(0)
            try:
                torch.load(buffer, map_location="cpu", weights_only=True)
            except Exception:
                print(f"torch {torch.__version__}: {len(devices)} tensors equal, devices "
                      f"{sorted(set(devices))}; weights_only=True refuses torch.save's own "
                      "file of this value too")
                return
            raise
        devices = []
        check(expected["value"], value, "", devices)
        if sorted(set(locations)) != sorted(set(devices)):
            fail("", f"saved devices {sorted(set(locations))} != {sorted(set(devices))}")
    print(f"torch {torch.__version__}: {len(devices)} tensors equal, devices "
          f"{sorted(set(devices))}, also with weights_only=True")

if __name__ == "__main__":
    main()
