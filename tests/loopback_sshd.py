"""A real OpenSSH server on 127.0.0.1 for the SSH device path (tests and benchmarks/ssh_device.py): key login
for the current user only, its host key in a known_hosts file, and a device profile that reaches it."""
from __future__ import annotations

import getpass
import os
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

SSHD = "/usr/sbin/sshd"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def keygen(path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)


@contextmanager
def loopback_sshd(d: Path) -> Iterator[dict]:
    """Start sshd with its keys and config in ``d``; yields {"dir", "port"}; stops it on exit."""
    keygen(d / "host_key")
    keygen(d / "id")
    keygen(d / "other_id")  # a key the server does not know
    (d / "authorized_keys").write_text((d / "id.pub").read_text())
    port = free_port()
    (d / "known_hosts").write_text(f"[127.0.0.1]:{port} {(d / 'host_key.pub').read_text()}")
    (d / "sshd_config").write_text(f"""Port {port}
ListenAddress 127.0.0.1
HostKey {d / 'host_key'}
AuthorizedKeysFile {d / 'authorized_keys'}
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PermitRootLogin prohibit-password
PidFile {d / 'sshd.pid'}
Subsystem sftp internal-sftp
LogLevel ERROR
""")
    if os.geteuid() == 0:
        os.makedirs("/run/sshd", exist_ok=True)  # privilege separation directory
    proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(d / "sshd_config")], stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError(f"sshd did not start: {proc.stderr.read() if proc.poll() is not None else ''}")
                time.sleep(0.1)
        yield {"dir": d, "port": port}
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def profile(sshd: dict, **over) -> dict:
    """A device profile (as a mapping) for ONNX Runtime on the loopback server; ``over`` replaces fields
    (ssh fields by their own names)."""
    d = sshd["dir"]
    prof = {"name": "loopback-ort", "kind": "ssh", "runtime": "onnxruntime", "threads": 1, "warmup": 2, "iters": 20,
            "throughput_batch": 8, "eval_images": 100, "python": sys.executable, "work_dir": str(d),
            "ssh": {"host": "127.0.0.1", "port": sshd["port"], "user": getpass.getuser(),
                    "key_file": str(d / "id"), "known_hosts": str(d / "known_hosts"), "connect_timeout_s": 3,
                    "timeout_s": 120}}
    for k, v in over.items():
        if k in prof["ssh"]:
            prof["ssh"][k] = v
        else:
            prof[k] = v
    return prof
