"""Create or reuse the pinned virtual environment that runs the real IceProd server.

IceProd pins many packages and needs Python >=3.12,<3.15, so it lives in its own venv at
``<repo>/.cache/iceprod-venv`` and never touches the project venv. A marker file inside the
venv holds the SHA-256 of ``requirements.txt`` (plus the interpreter version); the venv is
reused while the marker matches and rebuilt from scratch otherwise. Any failure raises
:class:`VenvBuildError` with the tail of pip's output: the harness never skips silently.
"""

from __future__ import annotations

import fcntl
import glob
import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[2]
REQUIREMENTS = HERE / "requirements.txt"
DEFAULT_VENV_DIR = REPO_ROOT / ".cache" / "iceprod-venv"
MARKER_NAME = ".requirements.sha256"
SUPPORTED = ((3, 12), (3, 13), (3, 14))  # iceprod 3.2.43: Requires-Python >=3.12,<3.15
INSTALL_TIMEOUT_S = 900


class VenvBuildError(RuntimeError):
    """The iceprod venv could not be created or installed."""


def _version_of(python: str) -> tuple[int, int] | None:
    try:
        out = subprocess.run(
            [python, "-c", "import sys; print(sys.version_info[0], sys.version_info[1])"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout.split()
        return int(out[0]), int(out[1])
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None


def find_base_python() -> str:
    """Return a Python 3.12-3.14 interpreter to build the venv from.

    Order: $ICEPROD_VENV_PYTHON, the running interpreter, python3.12/3.13/3.14 on PATH,
    then pyenv installs (the machines carry 3.12 only through pyenv).
    """
    candidates: list[str] = []
    if os.environ.get("ICEPROD_VENV_PYTHON"):
        candidates.append(os.environ["ICEPROD_VENV_PYTHON"])
    candidates.append(sys.executable)
    for minor in (12, 13, 14):
        found = shutil.which(f"python3.{minor}")
        if found:
            candidates.append(found)
    pyenv_root = os.environ.get("PYENV_ROOT", str(Path.home() / ".pyenv"))
    for minor in (12, 13, 14):
        candidates += sorted(
            glob.glob(f"{pyenv_root}/versions/3.{minor}.*/bin/python"), reverse=True
        )
    for cand in candidates:
        if _version_of(cand) in SUPPORTED:
            return cand
    raise VenvBuildError(
        "no Python 3.12-3.14 found for the iceprod venv (tried: "
        + ", ".join(candidates)
        + "); set ICEPROD_VENV_PYTHON"
    )


def requirements_hash(base_python: str) -> str:
    """Hash of requirements.txt plus the interpreter version: a change of either rebuilds."""
    h = hashlib.sha256(REQUIREMENTS.read_bytes())
    h.update(repr(_version_of(base_python)).encode())
    return h.hexdigest()


def venv_python(venv_dir: Path = DEFAULT_VENV_DIR) -> Path:
    """Path of the venv's interpreter."""
    return venv_dir / "bin" / "python"


def _run(cmd: list[str], log: Path, what: str) -> None:
    with log.open("a") as fh:
        fh.write(f"\n$ {' '.join(cmd)}\n")
        fh.flush()
        try:
            proc = subprocess.run(
                cmd,
                stdout=fh,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                timeout=INSTALL_TIMEOUT_S,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise VenvBuildError(f"{what} timed out after {INSTALL_TIMEOUT_S}s; see {log}") from exc
    if proc.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-60:])
        raise VenvBuildError(f"{what} failed (exit {proc.returncode}); log {log}:\n{tail}")


def ensure_venv(venv_dir: Path = DEFAULT_VENV_DIR) -> Path:
    """Build the iceprod venv if missing or stale and return its python; idempotent.

    A file lock serialises concurrent callers (e.g. pytest-xdist workers). The marker is
    written last, so an interrupted build is redone on the next call.
    """
    venv_dir.parent.mkdir(parents=True, exist_ok=True)
    lock_path = venv_dir.parent / (venv_dir.name + ".lock")
    with lock_path.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        base = find_base_python()
        want = requirements_hash(base)
        marker = venv_dir / MARKER_NAME
        python = venv_python(venv_dir)
        if marker.exists() and marker.read_text().strip() == want and python.exists():
            return python

        log = venv_dir.parent / (venv_dir.name + ".build.log")
        log.write_text(f"building {venv_dir} from {base} at {time.ctime()}\n")
        shutil.rmtree(venv_dir, ignore_errors=True)
        _run([base, "-m", "venv", str(venv_dir)], log, "python -m venv")
        _run(
            [
                str(python),
                "-m",
                "pip",
                "install",
                "--no-input",
                "--disable-pip-version-check",
                "-r",
                str(REQUIREMENTS),
            ],
            log,
            "pip install -r requirements.txt",
        )
        # Prove the launcher's imports work before declaring the venv good.
        _run(
            [
                str(python),
                "-c",
                "import iceprod.rest.server, mongomock_motor, "
                "iceprod.scheduled_tasks.dataset_monitor",
            ],
            log,
            "import check",
        )
        marker.write_text(want + "\n")
        return python


if __name__ == "__main__":
    start = time.monotonic()
    print(ensure_venv(), f"({time.monotonic() - start:.1f}s)")
