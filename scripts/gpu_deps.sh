#!/usr/bin/env bash
# Fills .gpu-deps/ (carry it to the GPU machine, under 64 MiB) with what a GPU machine that has
# PyTorch 2.x and the CUDA toolkit but no Debian -dev packages and no network lacks:
#   usr/    nlohmann_json, CLI11, GoogleTest, simdjson, copied from this machine's Debian packages in
#           their /usr layout (scripts/gpu_check.sh builds with CMAKE_PREFIX_PATH=.gpu-deps/usr);
#   wheels/ transformers, accelerate and their pure dependencies (not torch), pinned to the versions in
#           .venv, for the side-by-side with the real Accelerate (pip install --no-index there).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install_deps.sh
bash scripts/install_torch2.sh
.venv/bin/python -c 'import transformers, accelerate' 2>/dev/null ||
  .venv/bin/pip install -q --disable-pip-version-check transformers accelerate "torch==$(.venv/bin/python -c 'import torch; print(torch.__version__.split("+")[0])')"
d=.gpu-deps/usr
rm -rf .gpu-deps
mkdir -p "$d/include" "$d/share/cmake" "$d/lib/x86_64-linux-gnu/cmake" .gpu-deps/wheels
cp -r /usr/include/nlohmann /usr/include/CLI /usr/include/gtest /usr/include/gmock /usr/include/simdjson.h "$d/include/"
cp -r /usr/share/cmake/nlohmann_json /usr/share/cmake/CLI11 "$d/share/cmake/"
cp -r /usr/lib/x86_64-linux-gnu/cmake/GTest /usr/lib/x86_64-linux-gnu/cmake/simdjson "$d/lib/x86_64-linux-gnu/cmake/"
cp /usr/lib/x86_64-linux-gnu/libgtest*.a /usr/lib/x86_64-linux-gnu/libgmock*.a "$d/lib/x86_64-linux-gnu/"
cp -P /usr/lib/x86_64-linux-gnu/libsimdjson.so* "$d/lib/x86_64-linux-gnu/"
# Everything pip put in .venv except torch and what torch itself brings (present wherever torch is),
# as wheels for the Pythons a GPU machine is likely to have (its own version is not known here).
# NumPy (16 MB per Python) is left out to stay under the 64 MiB a run can carry: machines with
# PyTorch have it.
.venv/bin/pip freeze --disable-pip-version-check \
  | grep -viE '^((torch|triton|sympy|mpmath|networkx|jinja2|markupsafe|filelock|fsspec|typing.extensions|setuptools|pip)[=_-]|(nvidia|cuda)[-_]|numpy==)' \
  > .gpu-deps/wheels/requirements.txt
for py in 3.11 3.12 3.13; do
  .venv/bin/pip download -q --disable-pip-version-check --no-deps --only-binary=:all: --python-version "$py" \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .gpu-deps/wheels -r .gpu-deps/wheels/requirements.txt
done
du -sh .gpu-deps
