#!/usr/bin/env python3
"""Turns README.md's ```cpp blocks into C++ files the build compiles, so that
the snippets keep compiling against the current headers.

  readme_snippets.py README.md RAW_OUT.cc TORCH_OUT.cc

Each block becomes the body of its own function; its #include lines are
hoisted to the top of the file. A block that includes <torch/torch.h> goes to
TORCH_OUT.cc (compiled only when LibTorch is found), the others to RAW_OUT.cc.
Names a fragment uses but does not declare come from a comment on the line
right above its fence:

  <!-- readme-test: cpp-context DECLARATIONS -->

DECLARATIONS are placed before the block in its function (e.g. `int r = 0;`).
The functions are never called: the blocks are compiled, not run (the example
programs in examples/ run against a server in the tests).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

CONTEXT = re.compile(r"^<!--\s*readme-test:\s*cpp-context\s+(.*?)\s*-->\s*$")


def main() -> int:
    readme, raw_out, torch_out = sys.argv[1:4]
    lines = Path(readme).read_text().split("\n")
    outputs = {"raw": ([], []), "torch": ([], [])}  # includes, bodies
    i = 0
    n = 0
    while i < len(lines):
        if lines[i].rstrip() != "```cpp":
            i += 1
            continue
        context = ""
        m = CONTEXT.match(lines[i - 1]) if i > 0 else None
        if m:
            context = m.group(1)
        j = i + 1
        while j < len(lines) and lines[j].rstrip() != "```":
            j += 1
        body = lines[i + 1:j]
        includes = [l for l in body if l.startswith("#include")]
        code = [l for l in body if not l.startswith("#include")]
        kind = "torch" if any("<torch/" in l for l in includes) else "raw"
        incs, bodies = outputs[kind]
        incs.extend(l for l in includes if l not in incs)
        bodies.append(f"// README.md line {i + 1}\n[[maybe_unused]] void ReadmeSnippet{n}() {{\n"
                      f"{context}\n#line {i + 2} \"README.md\"\n" + "\n".join(code) + "\n}\n")
        n += 1
        i = j + 1
    for kind, path in (("raw", raw_out), ("torch", torch_out)):
        incs, bodies = outputs[kind]
        text = ("// Generated from README.md by tests/integration/readme_snippets.py.\n"
                "#include <memory>\n#include <string>\n#include <vector>\n" + "\n".join(incs) +
                "\n\n#pragma GCC diagnostic ignored \"-Wunused-variable\"\n"
                "#pragma GCC diagnostic ignored \"-Wunused-result\"\n"
                "namespace readme_snippets {\n" + "\n".join(bodies) +
                "}  // namespace readme_snippets\n")
        old = Path(path).read_text() if Path(path).exists() else None
        if old != text:
            Path(path).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
