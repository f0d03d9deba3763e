"""Builds the package's optional C accelerator (src/ckpt/_speedups.c); the rest
is in pyproject.toml. Without a C compiler the package works without it."""

from setuptools import Extension, setup

setup(ext_modules=[Extension("ckpt._speedups", ["src/ckpt/_speedups.c"], optional=True)])
