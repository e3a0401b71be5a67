"""The HTTP server in a process of its own, fed with the bytes the poller prepared.

Polling is CPU work in Python (HTTP clients, JSON, encoding the exposition), and in one process
every scrape would wait for the interpreter lock behind it: tens of milliseconds at a thousand
datasets. So the daemon serves from a child process that only copies bytes. The parent sends it,
over a socket pair:

- each snapshot's exposition (full and stale views, both formats, identity), family by family
  as the parent encodes it, so neither process holds a body twice; the child compresses as parts
  arrive and serves the snapshot once its last part is in;
- every :data:`HEARTBEAT` seconds, its own metrics (identity, both formats) and its status.

The child answers ``/healthz`` with 503 when the parent has not reported for
:data:`SILENT_AFTER` seconds (a wedged or stopped parent), and exits when the parent does (the
socket closes). It ignores SIGINT and SIGTERM: the parent stops it gracefully.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection

import structlog

from . import logs
from .allocator import release_freed_memory
from .collector import Format, Part, Prepared, PreparedBuilder, View, gzip_member
from .logs import LogFormat
from .server import SHUTDOWN_GRACE, BindError, HttpServer, NotReady, Status
from .web_config import LiveWebConfig, WebConfigError

log = structlog.get_logger(__name__)

#: how often the parent sends its own metrics and status
HEARTBEAT = 1.0
#: a parent silent this long is reported not live
SILENT_AFTER = 30.0
#: how long a scrape waits for the first snapshot after the child started
FIRST_SNAPSHOT_WAIT = 10.0
#: how long the parent waits for the child to bind and start
START_TIMEOUT = 60.0
#: how long a published snapshot may take to go live in the child (it compresses it)
PUBLISH_TIMEOUT = 30.0


@dataclass(frozen=True)
class ServingOptions:
    """What the child needs to serve: where to listen, the web config file, how to log."""

    listen_address: str
    port: int
    web_config_file: str | None
    log_level: str
    log_format: LogFormat
    #: a parent silent this long is reported not live (tests shorten it)
    silent_after: float = SILENT_AFTER


class ServerExited(Exception):
    """The serving process ended on its own; the exporter stops (its supervisor restarts it)."""


# --------------------------------------------------------------------------- the child


class Mirror:
    """The serving process's copy of what the parent sent: a :class:`MetricsSource`."""

    def __init__(
        self,
        silent_after: float = SILENT_AFTER,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._silent_after = silent_after
        self._clock = clock
        self._monotonic = monotonic
        self._prepared: Prepared | None = None
        self._live: Mapping[tuple[Format, bool], bytes] | None = None
        # Alive but not ready until the parent reports: a liveness probe must not kill a
        # process in its first second; the silence check below catches a parent that never does.
        self._status = Status(
            True, "starting", False, "starting: no word from the main process yet"
        )
        self._heard_at = monotonic()
        self._first = threading.Event()

    def snapshot(self, prepared: Prepared) -> None:
        """A new snapshot's bytes, all of them: they go live now."""
        self._prepared = prepared
        self._ready()

    def heartbeat(self, live: Mapping[Format, bytes], status: Status) -> None:
        """The parent's own metrics and status, sent every :data:`HEARTBEAT` seconds."""
        self._live = {
            (fmt, gzipped): gzip_member(body) if gzipped else body
            for fmt, body in live.items()
            for gzipped in (False, True)
        }
        self._status = status
        self._heard_at = self._monotonic()
        self._ready()

    def _ready(self) -> None:
        if self.is_prepared():
            self._first.set()

    def is_prepared(self) -> bool:
        """Whether a snapshot and the parent's metrics have arrived."""
        return self._prepared is not None and self._live is not None

    def prepare(self) -> None:
        """Wait (bounded) for the first snapshot."""
        if not self._first.wait(FIRST_SNAPSHOT_WAIT):
            raise NotReady("starting: no snapshot received yet")

    def chunks(self, fmt: Format, gzipped: bool = False) -> Sequence[bytes]:
        """The parent's metrics, then the snapshot's view of now."""
        prepared, live = self._prepared, self._live
        assert prepared is not None and live is not None, "prepare() first"
        return (live[(fmt, gzipped)], *prepared.variants(self._clock()).chunks(fmt, gzipped))

    def body(self, fmt: Format, gzipped: bool = False) -> bytes:
        """:meth:`chunks`, joined."""
        return b"".join(self.chunks(fmt, gzipped))

    def status(self) -> Status:
        """The parent's last status, unless it has gone silent."""
        silent = self._monotonic() - self._heard_at
        if silent > self._silent_after:
            reason = f"the exporter's main process has not reported for {silent:.0f}s"
            return Status(False, f"stalled: {reason}", False, reason, self._status.details)
        return self._status


def _receive(conn: Connection, mirror: Mirror) -> None:
    building: PreparedBuilder | None = None
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            log.info("serving.parent_gone")
            return
        kind = message[0]
        if kind == "stop":
            return
        if kind == "snapshot":  # parts follow, with heartbeats between them
            building = PreparedBuilder(message[2])
        elif kind == "part" and building is not None:
            formats = tuple(Format(f) for f in message[2])
            building.add(Part(View(message[1]), formats, conn.recv_bytes()))
        elif kind == "end" and building is not None:
            mirror.snapshot(building.finish())
            building = None
            release_freed_memory()  # the snapshot just replaced
            conn.send(("served", message[1]))  # the parent swaps it in once it is served here
        elif kind == "heartbeat":
            mirror.heartbeat(message[1], message[2])


def child_main(fd: int) -> int:
    """The serving process: serve what the parent sends until it says stop or goes away."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)  # the parent stops us, gracefully
    conn = Connection(fd)
    options: ServingOptions = conn.recv()
    logs.configure(options.log_level, options.log_format)
    mirror = Mirror(options.silent_after)
    try:
        web = LiveWebConfig.from_file(options.web_config_file)
        server = HttpServer(
            mirror, mirror.status, options.listen_address, options.port, web_config=web
        )
        server.start()
    except BindError as exc:
        conn.send(("error", exc.setting, exc.message))
        return 2
    except WebConfigError as exc:
        conn.send(("error", "web_config_file", str(exc)))
        return 2
    conn.send(("ready", server.port, server.addresses, server.scheme))
    try:
        _receive(conn, mirror)
    finally:
        server.stop()
    return 0


# --------------------------------------------------------------------------- the parent

_CHILD = (
    "import sys; from iceprod_exporter.serving import child_main; "
    "sys.exit(child_main(int(sys.argv[1])))"
)


class ServingProcess:
    """Starts the serving process and feeds it: snapshots on publish, a heartbeat every second.

    ``heartbeat`` returns the parent's own metrics (identity, per format) and its status.
    ``on_exit`` is called (from a background thread) if the child ends without being stopped.
    """

    def __init__(
        self,
        options: ServingOptions,
        heartbeat: Callable[[], tuple[Mapping[Format, bytes], Status]],
        on_exit: Callable[[], None] = lambda: None,
    ) -> None:
        self._options = options
        self._heartbeat = heartbeat
        self._on_exit = on_exit
        self._lock = threading.Lock()
        self._published = 0
        self._stopping = threading.Event()
        self._proc: subprocess.Popen[bytes] | None = None
        self._conn: Connection | None = None
        self._thread = threading.Thread(target=self._beat, name="serving-heartbeat", daemon=True)
        self.port = 0
        self.addresses: list[tuple[str, int]] = []
        self.scheme = "http"

    def start(self, stale_after: float, first: Iterable[Part]) -> None:
        """Spawn the child, wait until it listens, and send it a first snapshot and heartbeat.

        Raises :class:`BindError` when the child cannot listen or load the web config, and
        :class:`ServerExited` when it ends or hangs before listening.
        """
        ours, theirs = socket.socketpair()
        self._proc = subprocess.Popen(
            [sys.executable, "-c", _CHILD, str(theirs.fileno())],
            pass_fds=(theirs.fileno(),),
            stdin=subprocess.DEVNULL,
        )
        theirs.close()
        self._conn = Connection(ours.detach())
        self._conn.send(self._options)
        try:
            if not self._conn.poll(START_TIMEOUT):
                raise EOFError
            answer = self._conn.recv()
        except (EOFError, OSError):
            self._kill()
            code = self._proc.poll()
            raise ServerExited(
                f"the HTTP serving process failed to start (exit code {code})"
            ) from None
        if answer[0] == "error":
            self._kill()
            raise BindError(answer[1], answer[2])
        _, self.port, self.addresses, self.scheme = answer
        self.publish(stale_after, first)
        self._send_heartbeat()
        self._thread.start()

    def publish(self, stale_after: float, parts: Iterable[Part]) -> None:
        """Send a snapshot's parts as they are made; wait (bounded) until the child serves them.

        The lock is held per part, not per snapshot, so heartbeats go on while a large snapshot
        is encoded and sent.
        """
        with contextlib.suppress(OSError, EOFError):
            conn = self._conn
            assert conn is not None
            self._published += 1
            with self._lock:
                conn.send(("snapshot", self._published, stale_after))
            for part in parts:
                with self._lock:
                    conn.send(("part", part.view.value, [f.value for f in part.formats]))
                    conn.send_bytes(part.data)
            with self._lock:
                conn.send(("end", self._published))
            deadline = time.monotonic() + PUBLISH_TIMEOUT
            while conn.poll(max(0.0, deadline - time.monotonic())):
                if conn.recv() == ("served", self._published):
                    return
            log.warning("serving.publish_slow", timeout=PUBLISH_TIMEOUT)

    def _send_heartbeat(self) -> None:
        live, status = self._heartbeat()
        with self._lock:
            assert self._conn is not None
            self._conn.send(("heartbeat", live, status))

    def _beat(self) -> None:
        failing = False
        while not self._stopping.wait(HEARTBEAT):
            try:
                self._send_heartbeat()
                failing = False
            except OSError:
                break
            except Exception as exc:  # a bug in status(): the child reports the silence
                if not failing:
                    log.error("serving.heartbeat_failed", error=repr(exc))
                failing = True
            if self._proc is not None and self._proc.poll() is not None:
                break
        if not self._stopping.is_set():
            code = self._proc.poll() if self._proc else None
            log.error("serving.exited", exit_code=code)
            self._on_exit()

    def stop(self) -> None:
        """Ask the child to finish in-flight requests and exit; kill it if it does not."""
        self._stopping.set()
        if self._proc is None:
            return
        with contextlib.suppress(OSError), self._lock:
            assert self._conn is not None
            self._conn.send(("stop",))
        try:
            self._proc.wait(SHUTDOWN_GRACE + 5)
        except subprocess.TimeoutExpired:
            self._kill()
        if self._conn is not None:
            self._conn.close()
        if self._thread.is_alive():
            self._thread.join(HEARTBEAT + 1)

    def _kill(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait(10)
