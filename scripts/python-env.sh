# Sourced by the other scripts (bash): picks the Python that PyPI packages
# (grpcurl's wrapper, torch 2.x, the ckpt package and its test tools) go into.
# That is the python3 first on PATH, unless it is Debian's own
# /usr/bin/python3, into which pip refuses to install (PEP 668: "externally
# managed"): then a virtual environment of this checkout, .venv, made from
# it (Debian's python3-venv) and put first on PATH, for these scripts and the
# build and tests they start. `. .venv/bin/activate` does the same for a shell.
ckpt_python_env() {
  local root="$1"
  if [[ "$(command -v python3 || true)" != /usr/bin/python3 ]]; then return 0; fi
  if [[ ! -x "$root/.venv/bin/python3" ]]; then
    echo "python-env: Debian's python3 is externally managed; creating $root/.venv for PyPI packages" >&2
    /usr/bin/python3 -m venv "$root/.venv"
  fi
  export PATH="$root/.venv/bin:$PATH"
}
