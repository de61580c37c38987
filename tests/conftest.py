"""Shared fixtures: a throw-away sshd on 127.0.0.1 with its own keys (device and harness tests)."""

from __future__ import annotations

import getpass
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
from sshd_helpers import Sshd, free_port, keygen

SSHD = Path("/usr/sbin/sshd")


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models train far faster on one torch thread than on two contended ones (same numbers)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def digits_checkpoint(tmp_path_factory):
    """A digits MLP (64 → 16 → 16 → 10) trained a few epochs, as a checkpoint (pipeline and order CLI tests)."""
    import torch

    from edgepack.compression import save_checkpoint
    from edgepack.compression.stages import fine_tune
    from edgepack.demo import digits_mlp
    from edgepack.pipeline_data import load_data_spec

    torch.manual_seed(0)
    model = fine_tune(digits_mlp(16), load_data_spec("digits"), epochs=8, lr=1e-2, progress=False)
    return save_checkpoint(model, tmp_path_factory.mktemp("digits") / "digits.safetensors",
                           "edgepack.demo:digits_mlp", {"hidden": 16})


@pytest.fixture(scope="session")
def sshd(tmp_path_factory) -> Sshd:
    """An sshd on 127.0.0.1:PORT that accepts one throw-away key; stopped at the end."""
    if not SSHD.exists() or shutil.which("ssh") is None or shutil.which("ssh-keygen") is None:
        pytest.skip("openssh-server / openssh-client are not installed (scripts/setup-system.sh)")
    folder = tmp_path_factory.mktemp("sshd")
    host_key = keygen(folder / "host_key")
    client_key = keygen(folder / "client_key")
    shutil.copy(folder / "client_key.pub", folder / "authorized_keys")
    port = free_port()
    config = folder / "sshd_config"
    config.write_text(f"""Port {port}
ListenAddress 127.0.0.1
HostKey {host_key}
PidFile {folder}/sshd.pid
AuthorizedKeysFile {folder}/authorized_keys
UsePAM no
StrictModes no
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
""")
    try:
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    except PermissionError:
        pass
    log = open(folder / "sshd.log", "w")
    server = subprocess.Popen([str(SSHD), "-D", "-e", "-f", str(config)], stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 20
    while True:
        if server.poll() is not None:
            pytest.fail(f"sshd exited with {server.returncode}: {(folder / 'sshd.log').read_text()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if time.monotonic() > deadline:
                server.kill()
                pytest.fail(f"sshd did not listen on {port}: {(folder / 'sshd.log').read_text()}")
            time.sleep(0.1)
    host_public = (folder / "host_key.pub").read_text().split()
    known_hosts = folder / "known_hosts"
    known_hosts.write_text(f"[127.0.0.1]:{port} {host_public[0]} {host_public[1]}\n")
    yield Sshd(port, getpass.getuser(), folder, client_key, known_hosts)
    server.terminate()
    try:
        server.wait(10)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()
    log.close()
    if os.environ.get("EDGEPACK_SHOW_SSHD_LOG"):
        print((folder / "sshd.log").read_text())
