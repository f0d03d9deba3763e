"""Regenerates src/ckpt/v1/checkpoint_pb2*.py(i) from proto/ckpt/v1/checkpoint.proto.

    python3 python/gen_stubs.py        (needs grpcio-tools==1.85.1, the version pinned in
                                        pyproject.toml's "test" extra)

tests/test_api.py::test_generated_stubs_are_up_to_date fails when they are stale.
"""

import os
import sys
from pathlib import Path

import grpc_tools
from grpc_tools import protoc

here = Path(__file__).resolve().parent
proto = here.parent / "proto"
out = here / "src"
include = Path(grpc_tools.__file__).parent / "_proto"
rc = protoc.main(["protoc", f"-I{proto}", f"-I{include}", f"--python_out={out}",
                  f"--grpc_python_out={out}", f"--pyi_out={out}",
                  str(proto / "ckpt" / "v1" / "checkpoint.proto")])
sys.exit(rc)
