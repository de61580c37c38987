# Sourced: arm_exec CMD ARGS... runs an aarch64 program natively on an aarch64 host, else under
# qemu-user. ORT's CPU detection parses /proc/cpuinfo; under qemu on x86 it sees the host's and
# crashes, so (as root) an ARM-looking cpuinfo, written to $ARM_CPUINFO, is bind-mounted in a
# private mount namespace. Needs SYSROOT (the aarch64 sysroot for qemu -L).
ARM_CPUINFO=${ARM_CPUINFO:-$(mktemp -t edgepack-cpuinfo.XXXXXX)}
ncpu=$(( $(sed 's/.*-//' /sys/devices/system/cpu/possible 2>/dev/null || echo 0) + 1 ))
for ((i = 0; i < ncpu; i++)); do
  printf 'processor\t: %d\nBogoMIPS\t: 100.00\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp\nCPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x3\nCPU part\t: 0xd0c\nCPU revision\t: 1\n\n' "$i"
done > "$ARM_CPUINFO"

arm_exec() {
  if [ "$(uname -m)" = aarch64 ]; then "$@"; return; fi
  if [ "$(id -u)" = 0 ] && command -v unshare >/dev/null; then
    unshare -m sh -c 'mount --bind "$0" /proc/cpuinfo && exec "$@"' "$ARM_CPUINFO" \
      qemu-aarch64 -L "$SYSROOT" "$@"
  else
    echo "arm_exec: not root: running without an ARM /proc/cpuinfo (ORT may crash in cpuinfo)" >&2
    qemu-aarch64 -L "$SYSROOT" "$@"
  fi
}
