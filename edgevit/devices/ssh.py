"""Talk to a device over OpenSSH: run a command, copy files, with strict host keys and clear errors.

Every call is an argv list (no local shell). The remote side always hands a command to the user's
shell, so the remote command is built from ``shlex.quote``-d words: profile fields (host, paths)
never reach a shell unquoted. ``BatchMode`` makes ssh fail instead of prompting for a password or
a host key; ``StrictHostKeyChecking=yes`` with the profile's known-hosts file refuses unknown hosts.
"""
from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

from edgevit.errors import BadInput, RunFailure
from edgevit.paths import user_path


class DeviceError(RunFailure):
    """A device could not be reached or could not run the benchmark (one line, says what to fix)."""


def _diagnose(where: str, stderr: str) -> str:
    """One line from ssh's stderr: what failed and what to do about it."""
    e = stderr.strip()
    if "Host key verification failed" in e or "REMOTE HOST IDENTIFICATION HAS CHANGED" in e:
        return (f"{where}: host key not accepted (unknown or changed host key); add the device's key to the "
                "profile's known_hosts file, e.g. ssh-keyscan -p PORT HOST >> KNOWN_HOSTS, after checking it")
    if "Connection refused" in e:
        return f"{where}: connection refused; is sshd running on the device and is the port right?"
    if "Permission denied" in e:
        return f"{where}: authentication failed (Permission denied); check ssh.user and ssh.key_file"
    if "timed out" in e.lower():
        return f"{where}: connection timed out; is the host reachable (ssh.connect_timeout_s)?"
    if "Could not resolve hostname" in e or "Name or service not known" in e:
        return f"{where}: unknown host name; check ssh.host"
    last = e.splitlines()[-1] if e else "no message"
    return f"{where}: ssh failed: {last}"


class SshDevice:
    """One SSH target of a device profile (``DeviceConfig.ssh``)."""

    def __init__(self, name: str, ssh):
        self.name, self.cfg = name, ssh
        for key in ("key_file", "known_hosts"):
            p = user_path(getattr(ssh, key))
            if not p.is_file():
                raise BadInput(f"device {name}: ssh.{key} not found: {p}")
        self.key, self.known = str(user_path(ssh.key_file)), str(user_path(ssh.known_hosts))
        self.where = f"device {name} ({ssh.user}@{ssh.host}:{ssh.port})"

    def _options(self) -> list[str]:
        return ["-i", self.key, "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-o", "StrictHostKeyChecking=yes",
                "-o", f"UserKnownHostsFile={self.known}", "-o", "GlobalKnownHostsFile=/dev/null",
                "-o", f"ConnectTimeout={self.cfg.connect_timeout_s}", "-o", "LogLevel=ERROR"]

    def run(self, argv: list[str], timeout: float | None = None, check: bool = True) -> subprocess.CompletedProcess:
        """Run ``argv`` on the device (each word quoted for the remote shell)."""
        cmd = ["ssh", *self._options(), "-p", str(self.cfg.port), f"{self.cfg.user}@{self.cfg.host}", "--",
               shlex.join(argv)]
        try:
            res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout or self.cfg.timeout_s)
        except subprocess.TimeoutExpired as e:
            raise DeviceError(f"{self.where}: `{argv[0]}` did not finish within {timeout or self.cfg.timeout_s} s "
                              "(ssh.timeout_s)") from e
        if res.returncode == 255:  # ssh's own failure: connection, host key, authentication
            raise DeviceError(_diagnose(self.where, res.stderr))
        if check and res.returncode != 0:
            raise DeviceError(f"{self.where}: `{shlex.join(argv)[:120]}` failed ({res.returncode}): "
                              f"{(res.stderr.strip().splitlines() or ['no message'])[-1]}")
        return res

    def put(self, files: list[Path], remote_dir: str) -> None:
        """Copy files (and folders, e.g. .mlpackage) into ``remote_dir`` on the device (scp, SFTP mode)."""
        cmd = ["scp", "-q", "-r", *self._options(), "-P", str(self.cfg.port), *[str(f) for f in files],
               f"{self.cfg.user}@{self.cfg.host}:{remote_dir}/"]
        try:
            res = subprocess.run(cmd, capture_output=True, text=True, timeout=self.cfg.timeout_s)
        except subprocess.TimeoutExpired as e:
            raise DeviceError(f"{self.where}: copying {len(files)} file(s) took more than {self.cfg.timeout_s} s") from e
        if res.returncode != 0:
            raise DeviceError(_diagnose(f"{self.where}, copying to {remote_dir}", res.stderr))
