"""Helpers for the HTTP server tests: openssl certificates, HTTP(S) requests, Chromium.

Chromium runs headless, driven through the DevTools protocol (Tornado's websocket client).
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import os
import resource
import selectors
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bcrypt

from tests.support.debian import ToolError, apt_install, refuse_in_unit_tier
from tests.support.exporter import wait_for


def need(binary: str, package: str) -> str:
    """The path of a Debian tool, installed when missing (fails loudly otherwise)."""
    refuse_in_unit_tier(f"{binary} (Debian package {package})")
    found = shutil.which(binary)
    if found is None:
        apt_install(package)
        found = shutil.which(binary)
    if found is None:
        raise ToolError(f"{binary}: package {package} installed but {binary} is not on PATH")
    return found


def _openssl(*args: str | Path, cwd: Path) -> None:
    done = subprocess.run(
        [need("openssl", "openssl"), *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr


@dataclass(frozen=True)
class Pki:
    """A test CA with a server certificate (localhost, 127.0.0.1, ::1) and a client one."""

    directory: Path
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def make_cert(directory: Path, name: str, ca: Path, ca_key: Path, server: bool) -> None:
    """``name.crt``/``name.key`` signed by the CA (EC P-256, valid two days)."""
    _openssl(
        "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=directory,
    )  # fmt: skip
    ext = directory / f"{name}.ext"
    ext.write_text(
        "subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1\nextendedKeyUsage=serverAuth\n"
        if server
        else "subjectAltName=DNS:prometheus.test\nextendedKeyUsage=clientAuth\n"
    )
    _openssl(
        "x509", "-req", "-in", f"{name}.csr", "-CA", ca, "-CAkey", ca_key, "-CAcreateserial",
        "-out", f"{name}.crt", "-days", "2", "-extfile", ext, cwd=directory,
    )  # fmt: skip


def make_pki(directory: Path) -> Pki:
    """Make the CA, server and client certificates with the real openssl."""
    directory.mkdir(parents=True, exist_ok=True)
    _openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", "ca.key", "-out", "ca.crt", "-subj", "/CN=iceprod-exporter test CA",
        "-days", "2", "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=directory,
    )  # fmt: skip
    ca, ca_key = directory / "ca.crt", directory / "ca.key"
    make_cert(directory, "server", ca, ca_key, server=True)
    make_cert(directory, "client", ca, ca_key, server=False)
    return Pki(
        directory,
        ca,
        directory / "server.crt",
        directory / "server.key",
        directory / "client.crt",
        directory / "client.key",
    )


def bcrypt_hash(password: str) -> str:
    """A bcrypt hash at a low cost (tests only)."""
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(4)).decode()


def client_context(pki: Pki, client_cert: bool = False) -> ssl.SSLContext:
    """A client context trusting the test CA, optionally presenting the client certificate."""
    ctx = ssl.create_default_context(cafile=str(pki.ca))
    if client_cert:
        ctx.load_cert_chain(str(pki.client_cert), str(pki.client_key))
    return ctx


@dataclass
class Response:
    """One HTTP response."""

    status: int
    headers: dict[str, str]
    body: bytes


def request(
    host: str,
    port: int,
    path: str = "/metrics",
    method: str = "GET",
    headers: dict[str, str] | None = None,
    context: ssl.SSLContext | None = None,
    timeout: float = 10,
) -> Response:
    """One request on a fresh connection (HTTPS when ``context`` is given)."""
    conn: http.client.HTTPConnection = (
        http.client.HTTPSConnection(host, port, timeout=timeout, context=context)
        if context is not None
        else http.client.HTTPConnection(host, port, timeout=timeout)
    )
    try:
        conn.request(method, path, headers=headers or {})
        response = conn.getresponse()
        body = response.read()
        return Response(response.status, {k.lower(): v for k, v in response.getheaders()}, body)
    finally:
        conn.close()


def peer_certificate(host: str, port: int, pki: Pki) -> bytes:
    """The DER certificate the server presents on a new connection."""
    with (
        socket.create_connection((host, port), timeout=5) as raw,
        client_context(pki).wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
        assert der is not None
        return der


# --------------------------------------------------------------------------- demo


DEMO = """
import sys
from iceprod_exporter.cli import main
sys.exit(main(["demo", "--port", "0", "--listen-address", "127.0.0.1", "--datasets", "20",
               "--poll-interval", "2", "--log-format", "json", "--log-level", "debug"]))
"""


@dataclass(frozen=True)
class Demo:
    """A running ``iceprod-exporter demo``: the exporter, its serving process and its log."""

    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    def serving_pid(self) -> int:
        """The serving process, the exporter's one child."""
        (child,) = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
        return int(child)


@contextlib.contextmanager
def demo(directory: Path, open_files: int) -> Iterator[Demo]:
    """``iceprod-exporter demo`` on a free port, ready, with ``open_files`` as its file limit."""

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (open_files, open_files))

    log = directory / "demo.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", DEMO], stdout=out, stderr=subprocess.STDOUT, preexec_fn=limit
        )
    try:
        port = wait_for(lambda: _demo_port(log), 60, "demo port", diagnose=log.read_text)
        wait_for(lambda: request("127.0.0.1", port, "/readyz").status == 200, 60, "demo ready")
        yield Demo(proc, port, log)
    finally:
        proc.terminate()
        proc.wait(20)


def _demo_port(log: Path) -> int | None:
    for line in log.read_text().splitlines():
        if "open http://localhost:" in line:
            return int(line.split("open http://localhost:")[1].split("/")[0])
    return None


# --------------------------------------------------------------------------- crowds


SLOW_START = b"GET /metrics HTTP/1.1\r\nX: a"


class Crowd:
    """``slow`` connections dripping a never-ending head and ``idle`` ones sending nothing.

    One thread, non-blocking sockets. Every half second each slow one sends one more byte of its
    head, as a slowloris does; connections the server closed are opened again, ``reopen`` a
    second at most (in tenths), for as long as the crowd runs (at most ``seconds``).
    """

    def __init__(self, port: int, slow: int, idle: int, seconds: float, reopen: int = 1000) -> None:
        self.port, self.kinds = port, ["slow"] * slow + ["idle"] * idle
        self.batch = reopen // 10
        self.until = time.monotonic() + seconds
        self.stop = threading.Event()
        self.closed_by_server = 0
        self.opened = 0
        self._thread = threading.Thread(target=self._run)

    def __enter__(self) -> Crowd:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self._thread.join(30)

    def _connect(self, sel: selectors.BaseSelector, kind: str) -> None:
        sock = socket.socket()
        sock.setblocking(False)
        sock.connect_ex(("127.0.0.1", self.port))
        sel.register(sock, selectors.EVENT_READ, kind)
        self.opened += 1

    def _run(self) -> None:
        sel = selectors.DefaultSelector()
        for kind in self.kinds:
            self._connect(sel, kind)
        begun: set[socket.socket] = set()  # slow ones that sent their request line
        closed: list[str] = []  # the kinds to open again
        next_drip = next_reopen = time.monotonic()
        try:
            while not self.stop.is_set() and time.monotonic() < self.until:
                for key, _ in sel.select(0.05):
                    sock = key.fileobj
                    assert isinstance(sock, socket.socket)
                    try:
                        gone = sock.recv(4096) == b""
                    except BlockingIOError:
                        gone = False
                    except OSError:
                        gone = True
                    if gone:
                        self.closed_by_server += 1
                        sel.unregister(sock)
                        begun.discard(sock)
                        sock.close()
                        closed.append(str(key.data))
                if time.monotonic() >= next_reopen:
                    next_reopen += 0.1
                    for kind in closed[: self.batch]:
                        self._connect(sel, kind)
                    del closed[: self.batch]
                if time.monotonic() >= next_drip:
                    next_drip += 0.5
                    for key in list(sel.get_map().values()):
                        sock = key.fileobj
                        assert isinstance(sock, socket.socket)
                        if key.data == "slow":
                            with contextlib.suppress(OSError):
                                sock.send(b"a" if sock in begun else SLOW_START)
                                begun.add(sock)
        finally:
            for key in list(sel.get_map().values()):
                key.fileobj.close()  # type: ignore[union-attr]
            sel.close()


# --------------------------------------------------------------------------- chromium


@dataclass
class PageResult:
    """What Chromium saw on one page."""

    text: str
    html: str
    errors: list[str]


def browse(url: str, timeout: float = 60) -> PageResult:
    """Load ``url`` in headless Chromium; return its text, DOM and every console/log error."""
    chromium = need("chromium", "chromium")
    profile = tempfile.mkdtemp(prefix="chromium-")
    # Its own session, so that stopping it reaches the zygote and renderer helpers too:
    # they outlive the browser process and keep writing into the profile.
    proc = subprocess.Popen(
        [
            chromium, "--headless", "--no-sandbox", "--disable-gpu",
            "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
            "--disable-crash-reporter", "--disable-breakpad",
            f"--user-data-dir={profile}", "--remote-debugging-address=127.0.0.1",
            "--remote-debugging-port=0", "about:blank",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    try:
        port_file = Path(profile) / "DevToolsActivePort"
        deadline = time.monotonic() + timeout
        while not (port_file.exists() and port_file.read_text().strip()):
            assert proc.poll() is None, f"chromium exited with {proc.returncode}"
            assert time.monotonic() < deadline, "chromium did not open its DevTools port"
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as r:
            targets = json.load(r)
        ws = next(t["webSocketDebuggerUrl"] for t in targets if t["type"] == "page")
        return asyncio.run(asyncio.wait_for(_devtools(ws, url), timeout))
    finally:
        _stop_group(proc)
        _remove_profile(Path(profile))


def _stop_group(proc: subprocess.Popen[bytes]) -> None:
    """Stop a process and every process of its group, waiting (bounded) until they are gone."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            continue
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and _group_alive(proc.pid):
            time.sleep(0.05)
        if not _group_alive(proc.pid):
            return


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def _remove_profile(profile: Path) -> None:
    """Remove a Chromium profile; a helper may still flush a file, so retry for a while."""
    deadline = time.monotonic() + 10
    while True:
        try:
            shutil.rmtree(profile)
            return
        except FileNotFoundError:
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


async def _devtools(ws_url: str, url: str) -> PageResult:
    from tornado.websocket import websocket_connect

    conn = await websocket_connect(ws_url, max_message_size=64 * 2**20)
    next_id = 0
    errors: list[str] = []

    async def call(method: str, **params: Any) -> dict[str, Any]:
        nonlocal next_id
        next_id += 1
        wanted = next_id
        await conn.write_message(json.dumps({"id": wanted, "method": method, "params": params}))
        while True:
            message = await conn.read_message()
            assert message is not None, "DevTools connection closed"
            event = json.loads(message)
            _collect(event, errors)
            if event.get("id") == wanted:
                assert "error" not in event, event
                return dict(event.get("result", {}))
            if event.get("method") == "Page.loadEventFired":
                loaded.append(True)

    loaded: list[bool] = []
    for domain in ("Runtime.enable", "Log.enable", "Page.enable", "Network.enable"):
        await call(domain)
    await call("Page.navigate", url=url)
    while not loaded:
        message = await conn.read_message()
        assert message is not None, "DevTools connection closed"
        event = json.loads(message)
        _collect(event, errors)
        if event.get("method") == "Page.loadEventFired":
            loaded.append(True)
    await asyncio.sleep(0.5)  # late console messages
    text = await call("Runtime.evaluate", expression="document.body.innerText")
    dom = await call("Runtime.evaluate", expression="document.documentElement.outerHTML")
    conn.close()
    return PageResult(text["result"]["value"], dom["result"]["value"], errors)


def _collect(event: dict[str, Any], errors: list[str]) -> None:
    method, params = event.get("method"), event.get("params", {})
    if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
        errors.append(f"console: {params.get('args')}")
    elif method == "Runtime.exceptionThrown":
        errors.append(f"exception: {params.get('exceptionDetails')}")
    elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
        errors.append(f"log: {params['entry'].get('text')} {params['entry'].get('url', '')}")
    elif method == "Network.loadingFailed":
        errors.append(f"network: {params.get('errorText')}")
    elif (
        method == "Network.responseReceived"
        and params.get("response", {}).get("status", 200) >= 400
    ):
        errors.append(f"http {params['response']['status']}: {params['response'].get('url')}")
