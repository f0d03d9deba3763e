"""safetensors files of the reference package (PyPI safetensors).

  python st_cases.py make FILE.safetensors
      save_file() of a tensor of every safetensors dtype torch has, with
      __metadata__ {"format": "pt", "note": "from python"}.
  python st_cases.py compare ORIG.safetensors EXPORTED.safetensors
      Same keys in the same order, same tensors (bitwise), same metadata.
  python st_cases.py compare-pt ORIG.safetensors EXPORTED.pt
      The .pt file (torch.load) holds the same dict of tensors.
"""
import sys

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file


def make(path):
    torch.manual_seed(4)
    base = torch.randn(3, 5)
    tensors = {
        "model.embed.weight": base,
        "f64": base.double(), "f16": base.half(), "bf16": base.bfloat16(),
        "i64": torch.arange(-7, 8).reshape(3, 5), "i32": torch.arange(15, dtype=torch.int32),
        "i16": torch.arange(4, dtype=torch.int16), "i8": torch.tensor([-128, 127], dtype=torch.int8),
        "u8": torch.arange(256, dtype=torch.uint8), "bool": torch.tensor([True, False]),
        "c64": torch.complex(base, base).to(torch.complex64),
        "u16": torch.arange(3, dtype=torch.int64).to(torch.uint16),
        "u32": torch.arange(3, dtype=torch.int64).to(torch.uint32),
        "u64": torch.arange(3, dtype=torch.int64).to(torch.uint64),
        "scalar": torch.tensor(2.5), "empty": torch.zeros(0, 3),
    }
    save_file(tensors, path, metadata={"format": "pt", "note": "from python"})
    print(f"wrote {len(tensors)} tensors")


def raw(t):
    return bytes(t.contiguous().reshape(-1).view(torch.uint8).tolist())


def same_dicts(a, b, what):
    if list(a.keys()) != list(b.keys()):
        raise AssertionError(f"{what}: keys {list(b.keys())} != {list(a.keys())}")
    for k in a:
        if a[k].dtype != b[k].dtype or a[k].shape != b[k].shape or raw(a[k]) != raw(b[k]):
            raise AssertionError(f"{what}: tensor {k} differs")


def main():
    if sys.argv[1] == "make":
        make(sys.argv[2])
    elif sys.argv[1] == "compare":
        a, b = load_file(sys.argv[2]), load_file(sys.argv[3])
        same_dicts(a, b, "safetensors")
        with safe_open(sys.argv[2], "pt") as fa, safe_open(sys.argv[3], "pt") as fb:
            if fa.metadata() != fb.metadata():
                raise AssertionError(f"metadata {fb.metadata()} != {fa.metadata()}")
        print(f"safetensors: {len(a)} tensors and metadata equal")
    elif sys.argv[1] == "compare-pt":
        a = load_file(sys.argv[2])
        for weights_only in (False, True):
            b = torch.load(sys.argv[3], weights_only=weights_only)
            same_dicts(a, b, f"pt (weights_only={weights_only})")
        print(f".pt: {len(a)} tensors equal, also with weights_only=True")
    else:
        sys.exit(f"unknown command {sys.argv[1]}")


if __name__ == "__main__":
    main()
