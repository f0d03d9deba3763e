"""Writes the small golden files under tests/interop/data/ that the C++ unit
tests read (committed; rerun only to regenerate):

  python3 tests/interop/make_golden.py tests/interop/data          # 2.x + safetensors
  /usr/bin/python3 tests/interop/make_golden.py tests/interop/data # 1.13

The values are spelled out in interop_codec_test's GoldenPt tests.
"""
import collections
import os
import sys

import torch


def golden():
    model = collections.OrderedDict()
    model["fc.weight"] = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    model["fc.bias"] = torch.tensor([0.5, -0.5])
    model["bn.num_batches_tracked"] = torch.tensor(7)
    model._metadata = collections.OrderedDict([("", {"version": 1}), ("bn", {"version": 2})])
    base = torch.arange(12, dtype=torch.int16).reshape(3, 4)
    return {
        "model": model,
        "view": base[1:, ::2],
        "base": base,
        "list": [1],
        "tuple": (1.5, None, True, "s\u00e9", 2**40, -3, b"\x00\xff"),
        7: torch.zeros(2, dtype=torch.bfloat16),
        "param": torch.nn.Parameter(torch.ones(2)),
    }


def main():
    out = sys.argv[1]
    major = torch.__version__.split(".")[0]
    name = "torch1.pt" if major == "1" else "torch2.pt"
    torch.save(golden(), os.path.join(out, name))
    if major != "1":
        from safetensors.torch import save_file
        save_file({"b": torch.tensor([1.0, 2.0]), "a": torch.arange(3, dtype=torch.int64)},
                  os.path.join(out, "reference.safetensors"), metadata={"format": "pt"})


if __name__ == "__main__":
    main()
