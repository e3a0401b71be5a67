"""Start and stop the real IceProd REST server for tests.

Usage::

    with OIDCIssuer(token_ttl=300) as issuer ...:       # any OIDC issuer on 127.0.0.1
        with RealIceProd(issuer.url, audience="iceprod") as api:
            requests.get(api.url + "/healthz")

The server (``iceprod==3.2.43``) runs in its own pinned venv (see ``venv.py``) on
mongomock-motor, with ``OPENID_URL`` set to the issuer, so it validates RS256 tokens through
discovery and JWKS like production. Start the issuer first: the server fetches discovery and
JWKS once at start-up; if that fails it only logs "failed to refresh OpenID keys" and
fetches both again on the first token whose ``kid`` it does not know (verified).

Token claims the server needs (rest_tools ``OpenIDAuth`` + ``iceprod/roles_groups.py``):
header ``kid`` present in the JWKS and ``alg`` RS256/RS512; claims ``exp``, ``iat``, ``iss``
(any value: no issuer check), non-empty ``sub``; ``aud`` containing the audience when one is
configured (empty audience = no aud check); plus the role claims in the constants below.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import requests

from iceprod_simulator.service import Service
from tests.support.debian import refuse_in_unit_tier

from .venv import DEFAULT_VENV_DIR, ensure_venv

HERE = Path(__file__).resolve().parent
SERVER_MAIN = HERE / "server_main.py"
DATASET_MONITOR_MAIN = HERE / "run_dataset_monitor.py"
READY_PREFIX = "ICEPROD_READY "

# role system: Keycloak client role iceprod-system on client "iceprod".
SYSTEM_CLAIMS: dict[str, Any] = {"resource_access": {"iceprod": {"roles": ["iceprod-system"]}}}
# role admin (and group admin). preferred_username is required for every non-system token:
# IceProd's current_user is preferred_username, and without it the server answers
# 403 "authentication failed" even though the token itself is valid.
ADMIN_CLAIMS: dict[str, Any] = {
    "groups": ["/tokens/IceProdAdmins"],
    "preferred_username": "iceprod-admin",
}
# role user (and group users): any /institutions/IceCube... group.
USER_CLAIMS: dict[str, Any] = {
    "groups": ["/institutions/IceCube/UW-Madison"],
    "preferred_username": "alice",
}

# Variables of the calling environment that must not leak into the iceprod venv's process.
_SCRUBBED_ENV = (
    "VIRTUAL_ENV",
    "PYTHONPATH",
    "PYTHONHOME",
    "PROMETHEUS_PORT",
    "CI_TESTING",
    "OPENID_URL",
    "OPENID_AUDIENCE",
    "API_URL",
    "OAUTH_URL",
    "OAUTH_CLIENT_ID",
    "OAUTH_CLIENT_SECRET",
    "HOST",
    "PORT",
    "DB_URL",
)


class RealIceProdError(RuntimeError):
    """The server did not start, or a helper run failed; the message holds the log tail."""


def fetch_token(issuer_url: str, client_id: str, client_secret: str) -> str:
    """Client-credentials access token via the issuer's OIDC discovery."""
    disc = requests.get(issuer_url + "/.well-known/openid-configuration", timeout=10)
    disc.raise_for_status()
    r = requests.post(
        disc.json()["token_endpoint"],
        timeout=10,
        data={
            "grant_type": "client_credentials",
            "client_id": client_id,
            "client_secret": client_secret,
        },
    )
    r.raise_for_status()
    return str(r.json()["access_token"])


def _child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _SCRUBBED_ENV}
    env["PYTHONUNBUFFERED"] = "1"  # keep the log file in order and the ready line prompt
    env.update(extra or {})
    return env


class RealIceProd(Service):
    """The real IceProd REST server in a subprocess on 127.0.0.1 (context manager)."""

    def __init__(
        self,
        issuer_url: str,
        audience: str = "iceprod",
        *,
        log_dir: Path | None = None,
        prometheus: bool = True,
        startup_timeout: float = 60.0,
        venv_dir: Path = DEFAULT_VENV_DIR,
    ) -> None:
        self.issuer_url = issuer_url.rstrip("/")
        self.audience = audience
        self.prometheus = prometheus
        self.startup_timeout = startup_timeout
        self.venv_dir = venv_dir
        self.log_path = Path(log_dir or tempfile.mkdtemp(prefix="real-iceprod-")) / "server.log"
        self.startup_seconds: float | None = None  # launch -> /healthz 200 (venv excluded)
        self._port: int | None = None
        self._prometheus_port: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._python: Path | None = None
        self._returncode: int | None = None

    # -- lifecycle ---------------------------------------------------------------------
    def start(self) -> None:
        """Ensure the venv, launch the server, wait for the ready line and /healthz."""
        if self._proc is not None:
            raise RealIceProdError("already started")
        refuse_in_unit_tier("the real IceProd server (its pinned venv)")
        self._python = ensure_venv(self.venv_dir)
        cmd = [
            str(self._python),
            str(SERVER_MAIN),
            "--issuer-url",
            self.issuer_url,
            "--audience",
            self.audience,
        ]
        if self.prometheus:
            cmd.append("--prometheus")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        t0 = time.monotonic()
        with self.log_path.open("wb") as log:
            # Own session: a Ctrl-C in the test terminal reaches pytest, which stops us cleanly.
            self._proc = subprocess.Popen(
                cmd,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=_child_env(),
                start_new_session=True,
            )
        try:
            self._wait_ready(t0)
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - t0

    def _wait_ready(self, t0: float) -> None:
        assert self._proc is not None
        while time.monotonic() - t0 < self.startup_timeout:
            if self._proc.poll() is not None:
                raise RealIceProdError(
                    f"server exited with {self._proc.returncode} before ready:\n{self.log_tail()}"
                )
            for line in self.log_text().splitlines():
                if line.startswith(READY_PREFIX):
                    info = json.loads(line[len(READY_PREFIX) :])
                    self._port, self._prometheus_port = info["port"], info["prometheus_port"]
            if self._port is not None:
                try:
                    if requests.get(self.url + "/healthz", timeout=2).status_code == 200:
                        return
                except requests.RequestException:
                    pass
            time.sleep(0.05)
        raise RealIceProdError(
            f"server not ready after {self.startup_timeout}s:\n{self.log_tail()}"
        )

    def stop(self) -> None:
        """SIGTERM the server (SIGKILL after 15 s); safe to call twice."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=15)
        self._returncode = proc.returncode

    # -- accessors ---------------------------------------------------------------------
    @property
    def url(self) -> str:
        """Base URL of the REST API, e.g. ``http://127.0.0.1:40123``."""
        if self._port is None:
            raise RealIceProdError("server not started")
        return f"http://127.0.0.1:{self._port}"

    @property
    def prometheus_url(self) -> str | None:
        """The server's own /metrics URL, or None when prometheus is disabled."""
        if self._prometheus_port is None:
            return None
        return f"http://127.0.0.1:{self._prometheus_port}/metrics"

    @property
    def pid(self) -> int | None:
        """The server process id while it runs (e.g. to list its sockets)."""
        return self._proc.pid if self._proc is not None else None

    @property
    def returncode(self) -> int | None:
        """Exit code after stop() (0 = clean SIGTERM shutdown); None before."""
        return self._returncode

    def log_text(self) -> str:
        """The whole server log so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 60) -> str:
        """The last ``lines`` lines of the server log."""
        return "\n".join(self.log_text().splitlines()[-lines:])

    # -- helpers that run inside the iceprod venv --------------------------------------
    def run_dataset_monitor(
        self, client_id: str, client_secret: str, timeout: float = 120.0
    ) -> str:
        """Run IceProd's dataset_monitor once against this server; return its metrics text."""
        return self.run_iceprod(
            [str(DATASET_MONITOR_MAIN)], client_id, client_secret, timeout, "dataset_monitor"
        )

    def run_cron(
        self, name: str, client_id: str, client_secret: str, timeout: float = 120.0
    ) -> str:
        """Run one of IceProd's housekeeping crons (``scheduled_tasks.<name>``) once.

        ``--debug`` makes an API or auth failure raise (exit 1) instead of being logged and
        swallowed, as the cron does without it. Returns what it logged.
        """
        module = ["-m", f"iceprod.scheduled_tasks.{name}", "--debug", "--log-level", "info"]
        return self.run_iceprod(module, client_id, client_secret, timeout, name, stderr=True)

    def run_iceprod(
        self,
        argv: list[str],
        client_id: str,
        client_secret: str,
        timeout: float,
        what: str,
        *,
        stderr: bool = False,
    ) -> str:
        """Run IceProd code against this server with client credentials.

        The secret goes through the environment, so it never shows in ``ps``. Returns stdout,
        or stderr with ``stderr``.
        """
        python = self._python or ensure_venv(self.venv_dir)
        auth = ["--rest-url", self.url, "--oauth-url", self.issuer_url]
        proc = subprocess.run(
            [str(python), *argv, *auth, "--oauth-client-id", client_id],
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            env=_child_env({"OAUTH_CLIENT_SECRET": client_secret}),
            check=False,
        )
        if proc.returncode != 0:
            raise RealIceProdError(f"{what} exited {proc.returncode}:\n{proc.stderr[-4000:]}")
        return proc.stderr if stderr else proc.stdout
