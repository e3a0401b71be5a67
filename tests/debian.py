"""Installs the Debian packages a test runs for real (as root), or says loudly why it cannot."""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
from pathlib import Path

_LOCK = Path("/tmp/iceprod-exporter-apt.lock")
_TIMEOUT = 900


class ToolError(RuntimeError):
    """A tool a test runs is missing and could not be installed, or is unusable."""


def apt_install(*packages: str) -> None:
    """Install ``packages`` with apt-get, one installer at a time, updating the lists first."""
    names = " ".join(packages)
    if shutil.which("apt-get") is None:
        raise ToolError(f"{names} missing and this machine has no apt-get")
    if os.geteuid() != 0:
        raise ToolError(f"{names} missing; run: sudo apt-get install -y {names}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    _LOCK.touch(exist_ok=True)
    with _LOCK.open("r+") as lock:
        # tests in parallel sessions may both find the tool missing
        fcntl.flock(lock, fcntl.LOCK_EX)
        for command in (
            ["apt-get", "update", "-q"],
            [
                "apt-get",
                "-o",
                "DPkg::Lock::Timeout=300",
                "install",
                "-y",
                "-q",
                "--no-install-recommends",
                *packages,
            ],
        ):
            done = subprocess.run(
                command, env=env, capture_output=True, text=True, timeout=_TIMEOUT, check=False
            )
            if done.returncode != 0:
                raise ToolError(
                    f"`{' '.join(command)}` failed ({done.returncode}):\n"
                    f"{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
                )
