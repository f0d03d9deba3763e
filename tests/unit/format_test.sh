#!/usr/bin/env bash
# The C++ sources follow the committed .clang-format (Debian's clang-format,
# installed by scripts/install-deps.sh). Prints the first differences.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
fmt="$(command -v clang-format || command -v clang-format-14)" || {
  echo "format_test: clang-format is not installed (scripts/install-deps.sh)" >&2; exit 1; }
mapfile -t files < <(git ls-files '*.cc' '*.h' | grep -v '^python/\|^tests/interop/fuzz/\|^third_party/')
bad=0
for f in "${files[@]}"; do
  if ! diff -q "$f" <("$fmt" --style=file "$f") >/dev/null; then
    ((bad < 5)) && { echo "== $f"; diff "$f" <("$fmt" --style=file "$f") | head -20; }
    bad=$((bad + 1))
  fi
done
if ((bad > 0)); then
  echo "format_test: $bad of ${#files[@]} files differ from clang-format --style=file" \
       "(run: clang-format -i \$(git ls-files '*.cc' '*.h'))" >&2
  exit 1
fi
echo "format_test: ${#files[@]} files follow .clang-format"
