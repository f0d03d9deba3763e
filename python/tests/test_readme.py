"""The README's Python and DCP sections run as written."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from serverproc import ROOT, ServerProcess


def section_blocks(heading: str):
    text = (ROOT / "README.md").read_text()
    start = text.index(heading)
    end = text.find("\n## ", start + len(heading))
    body = text[start:end if end >= 0 else len(text)]
    return re.findall(r"```python\n(.*?)```", body, re.S)


def test_readme_python_tutorial_runs(tmp_path):
    (block,) = section_blocks("## Python: `ckpt.save`")
    script = tmp_path / "tutorial.py"
    script.write_text(block)
    server = ServerProcess()
    try:
        env = dict(os.environ, CKPT_SERVER=server.address)
        env.pop("CKPT_TOKEN", None)
        env.pop("CKPT_TOKEN_FILE", None)
        run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                             timeout=300, env=env, cwd=tmp_path)
        assert run.returncode == 0, run.stdout + run.stderr
        assert "['extra.weight', 'extra.bias']" in run.stdout
        assert "Error(s) in loading state_dict for Bigger:" in run.stdout
        assert "StatusCode.NOT_FOUND" in run.stdout
    finally:
        server.close()


def test_readme_dcp_example_saves_with_4_ranks_and_loads_with_2(tmp_path):
    (block,) = section_blocks("## PyTorch distributed checkpoints (DCP)")
    script = tmp_path / "dcp_example.py"
    script.write_text(block)
    server = ServerProcess()
    try:
        for ranks, mode in ((4, "save"), (2, "load")):
            run = subprocess.run(
                [sys.executable, "-m", "torch.distributed.run", "--standalone",
                 f"--nproc-per-node={ranks}", str(script), mode, server.address],
                capture_output=True, text=True, timeout=300, cwd=tmp_path,
                env=dict(os.environ, OMP_NUM_THREADS="1"))
            assert run.returncode == 0, run.stdout + run.stderr
            if mode == "save":
                assert "version 1" in run.stdout
            else:
                assert run.stdout.count("loaded every value") == 2
    finally:
        server.close()
