#!/usr/bin/env bash
# The install_consumer test: installs this build into a temporary prefix, builds the worked
# example as an outside project with find_package(ferry) (tests/consumer/CMakeLists.txt), runs it.
# Usage: run.sh BUILD_DIR SOURCE_DIR GENERATOR [PREFIX_PATH of the build's dependencies]
set -euo pipefail
build=$1 source=$2 generator=$3 deps=${4:-}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cmake --install "$build" --prefix "$tmp/prefix" >/dev/null
cmake -S "$source/tests/consumer" -B "$tmp/build" -G "$generator" -DCMAKE_PREFIX_PATH="$tmp/prefix${deps:+;$deps}" \
  -DFERRY_EXAMPLE="$source/examples/big_model_example.cpp" >/dev/null
cmake --build "$tmp/build" >/dev/null
"$tmp/build/consumer"
