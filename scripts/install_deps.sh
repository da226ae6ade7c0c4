#!/usr/bin/env bash
# Installs what ferry needs on Debian 12 (apt-get only), skipping what is already there.
set -euo pipefail
# libpcre2-dev, libutf8proc-dev: the tokenizers' Unicode-aware pre-tokenizer regexes and NFC normalisation;
# libsentencepiece-dev: SentencePiece models (tokenizer.model) for model folders without a tokenizer.json;
# all found through pkg-config (pkgconf); libgloo-dev: the headers torch.distributed's ProcessGroupGloo
# includes (LibTorch ships the library, not them), for pipeline parallelism across processes and hosts
packages=(libgtest-dev nlohmann-json3-dev libsimdjson-dev libcli11-dev libpcre2-dev libutf8proc-dev libsentencepiece-dev
          libgloo-dev pkgconf cmake g++ ninja-build)
# Debian's LibTorch 1.13 unless the build uses PyTorch 2.x's (FERRY_TORCH=pypi, scripts/install_torch2.sh)
[ "${FERRY_TORCH:-debian}" = pypi ] || packages+=(libtorch-dev libopenblas0-pthread)
[ "${FERRY_WITH_FUZZER:-0}" = 1 ] && packages+=(clang)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "ferry: installing ${missing[*]}" >&2
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
