"""Installs the Debian packages a test runs for real (as root), or says loudly why it cannot.

It also keeps the unit tier honest: while a test of ``tests/unit/`` runs,
:func:`refuse_in_unit_tier` (called by every helper that reaches for a Debian tool, the real
IceProd or apt) fails it, so ``make check`` provably needs neither root nor Debian packages.
"""

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


#: the node id of the unit-tier test running now (set by tests/conftest.py), else None
unit_test: str | None = None


def refuse_in_unit_tier(what: str) -> None:
    """Fail when a test of the unit tier needs ``what`` (a Debian tool, the real IceProd)."""
    if unit_test is not None:
        raise ToolError(
            f"{unit_test} needs {what}, which the unit tier (make check) does not have: "
            "move it to tests/integration/ (see tests/conftest.py)"
        )


def apt_install(*packages: str) -> None:
    """Install ``packages`` with apt-get, one installer at a time, updating the lists first."""
    names = " ".join(packages)
    refuse_in_unit_tier(f"apt-get install {names}")
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
