"""Helpers for the device tests: free ports, throw-away keys, the test sshd's client options."""

from __future__ import annotations

import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on (right now)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def keygen(path: Path) -> Path:
    """A fresh ed25519 key pair without passphrase; returns the private key's path."""
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "edgepack-test", "-f", str(path)],
                   check=True)
    return path


@dataclass
class Sshd:
    port: int
    user: str
    folder: Path
    client_key: Path
    known_hosts: Path

    def options(self, key: Path | None = None, known_hosts: Path | None = None) -> list[str]:
        """Client options: only our key, only our known_hosts, host key checking on."""
        return ["-F", "/dev/null", "-i", str(key or self.client_key), "-o", "IdentitiesOnly=yes",
                "-o", "IdentityAgent=none", "-o", f"UserKnownHostsFile={known_hosts or self.known_hosts}",
                "-o", "GlobalKnownHostsFile=/dev/null", "-o", "StrictHostKeyChecking=yes"]

    @property
    def spec(self) -> str:
        return f"ssh://{self.user}@127.0.0.1:{self.port}"


