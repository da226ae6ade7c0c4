#!/usr/bin/env bash
# Installs PyTorch 2.x from PyPI into .venv/ (inside the checkout, ignored by git): the CUDA build,
# whose LibTorch (headers, libraries, CMake package) is what C++ users of PyTorch 2.x build against.
# It runs on machines without a GPU too; CUDA is then simply unavailable. Idempotent: does nothing
# when the pinned version is already there. FERRY_TORCH2_VERSION overrides the pin.
set -euo pipefail
cd "$(dirname "$0")/.."
version=${FERRY_TORCH2_VERSION:-2.15.0}
if ! [ -x .venv/bin/python ]; then
  python3 -m venv .venv 2>/dev/null || {
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
    $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq python3-venv >/dev/null
    python3 -m venv .venv
  }
fi
installed=$(.venv/bin/python -c 'import torch; print(torch.__version__.split("+")[0])' 2>/dev/null || true)
if [ "$installed" != "$version" ]; then
  echo "ferry: installing torch==$version into .venv (PyPI, several GB)" >&2
  .venv/bin/pip install -q --disable-pip-version-check "torch==$version"
fi
