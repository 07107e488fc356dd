#!/usr/bin/env bash
# Installs what cross-building edgeverify for ARM boards and running it under qemu needs, on
# Debian or Ubuntu: the aarch64 and armv7 (hard-float) cross C compilers and C libraries
# (cargo links with them, and mozjpeg-sys compiles libjpeg-turbo with them), lld (the armv7
# static link: see .cargo/config.toml), qemu-user, nasm
# (libjpeg-turbo's SIMD on the x86 host build), and rustup's two targets for the pinned
# toolchain. Idempotent: it installs only what is missing, so running it again is quick.
#
# The targets are installed here rather than listed in rust-toolchain.toml: rustup tries to
# download a listed target that is missing on *every* cargo call, the plain x86 `cargo test`
# included, and where that download cannot happen every build fails. Here, only this script
# needs the download.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(gcc-aarch64-linux-gnu gcc-arm-linux-gnueabihf libc6-dev-arm64-cross
  libc6-dev-armhf-cross lld qemu-user nasm)
targets=(aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf)

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
if ((${#missing[@]})); then
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "setup-arm: apt-get not found; install the equivalents of ${missing[*]} by hand" >&2
    exit 1
  fi
  sudo=()
  if [ "$(id -u)" -ne 0 ]; then sudo=(sudo); fi
  echo "setup-arm: installing ${missing[*]}" >&2
  "${sudo[@]}" apt-get -o DPkg::Lock::Timeout=600 update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get -o DPkg::Lock::Timeout=600 install -y -qq \
    --no-install-recommends "${missing[@]}" >/dev/null
fi

installed=$(rustup target list --installed)
for t in "${targets[@]}"; do
  if ! grep -qx "$t" <<<"$installed"; then
    echo "setup-arm: rustup target add $t" >&2
    rustup target add "$t"
  fi
done

echo "setup-arm: ready: $(aarch64-linux-gnu-gcc --version | head -1);" \
  "$(qemu-aarch64 --version | head -1); targets ${targets[*]}" >&2
