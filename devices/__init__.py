"""Where a benchmark runs (local, ssh, adb, qemu) and how power is read. Not built yet."""
