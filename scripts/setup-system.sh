#!/usr/bin/env bash
# Install the Debian packages edgepack's build and tests need, only those that are missing.
set -euo pipefail

packages=(build-essential cmake python3-venv gcc-aarch64-linux-gnu g++-aarch64-linux-gnu
          libc6-dev-arm64-cross qemu-user openssh-server openssh-client adb
          gcc-arm-linux-gnueabihf libc6-dev-armhf-cross  # armv7 (armeabi-v7a ISA) build + qemu-arm
          clang libclang-rt-dev  # clang + libFuzzer/sanitizer runtimes for make fuzz
          espeak-ng sox  # keyword-spotting data: speech synthesis and audio effects
          chromium  # a headless browser: the report test checks report.html's images load
          iproute2)  # ip netns: the two-node Ray test keeps its cluster on loopback
missing=()
for package in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" \
    || missing+=("$package")
done
# npm fetches the arm64 ONNX Runtime (npm package onnxruntime-node) for the aarch64 tests.
command -v npm >/dev/null || missing+=(npm)
[ ${#missing[@]} -eq 0 ] && exit 0

echo "edgepack: installing system packages: ${missing[*]}"
sudo=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "edgepack: need root or sudo to install: ${missing[*]}" >&2; exit 1; }
  sudo="sudo"
fi
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
