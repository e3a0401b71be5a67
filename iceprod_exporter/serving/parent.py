"""The main process's side of serving: it starts the serving process and feeds it.

Polling is CPU work in Python (HTTP clients, JSON, encoding the exposition), and in one process
every scrape would wait for the interpreter lock behind it: tens of milliseconds at a thousand
datasets. So the daemon serves from a child process (:mod:`.child`) that only copies bytes. The
parent sends it (:mod:`.protocol`):

- each snapshot's exposition (full and stale views, both formats, identity), family by family
  as the parent encodes it, so neither process holds a body twice; the child compresses as parts
  arrive and serves the snapshot once its last part is in;
- every :data:`HEARTBEAT` seconds, its own metrics (identity, both formats) and its status.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from multiprocessing.connection import Connection

import structlog

from iceprod_exporter.exposition.encoding import Part
from iceprod_exporter.exposition.formats import Format
from iceprod_exporter.http.server import SHUTDOWN_GRACE, BindError
from iceprod_exporter.model.status import Status
from iceprod_exporter.serving import protocol

log = structlog.get_logger(__name__)

#: how often the parent sends its own metrics and status
HEARTBEAT = 1.0
#: how long the parent waits for the child to bind and start
START_TIMEOUT = 60.0
#: how long a published snapshot may take to be served by the child (it compresses it)
PUBLISH_TIMEOUT = 30.0

_CHILD = (
    "import sys; from iceprod_exporter.serving.child import child_main; "
    "sys.exit(child_main(int(sys.argv[1])))"
)


class ServerExited(Exception):
    """The serving process ended on its own; the exporter stops (its supervisor restarts it)."""


class ServingProcess:
    """Starts the serving process and feeds it: snapshots on publish, a heartbeat every second.

    ``heartbeat`` returns the parent's own metrics (identity, per format) and its status.
    ``on_exit`` is called (from a background thread) if the child ends without being stopped.
    """

    def __init__(
        self,
        options: protocol.ServingOptions,
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
        protocol.send(self._conn, self._options)
        match self._started(self._conn):
            case protocol.Listening(port=port, addresses=addresses, scheme=scheme):
                self.port, self.addresses, self.scheme = port, addresses, scheme
            case protocol.StartFailed(setting=setting, message=message):
                self._kill()
                raise BindError(setting, message)
            case _:  # ended, hung, or answered out of turn
                self._kill()
                code = self._proc.poll()
                raise ServerExited(f"the HTTP serving process failed to start (exit code {code})")
        self.publish(stale_after, first)
        self._send_heartbeat()
        self._thread.start()

    @staticmethod
    def _started(conn: Connection) -> protocol.ToParent | None:
        """The child's first answer, or None if it ended or hung before giving one."""
        try:
            if conn.poll(START_TIMEOUT):
                return protocol.to_parent(conn)
        except (EOFError, OSError, protocol.ProtocolError):
            pass
        return None

    def publish(self, stale_after: float, parts: Iterable[Part]) -> None:
        """Send a snapshot's parts as they are made; wait (bounded) until the child serves them.

        The lock is held per part, not per snapshot, so heartbeats go on while a large snapshot
        is encoded and sent.
        """
        with contextlib.suppress(OSError, EOFError, protocol.ProtocolError):
            conn = self._conn
            assert conn is not None
            self._published += 1
            with self._lock:
                protocol.send(conn, protocol.SnapshotBegins(self._published, stale_after))
            for part in parts:
                with self._lock:
                    protocol.send_part(conn, part)
            with self._lock:
                protocol.send(conn, protocol.SnapshotEnds(self._published))
            deadline = time.monotonic() + PUBLISH_TIMEOUT
            while conn.poll(max(0.0, deadline - time.monotonic())):
                if protocol.to_parent(conn) == protocol.Served(self._published):
                    return
            log.warning("serving.publish_slow", timeout=PUBLISH_TIMEOUT)

    def _send_heartbeat(self) -> None:
        own_metrics, status = self._heartbeat()
        with self._lock:
            assert self._conn is not None
            protocol.send(self._conn, protocol.Heartbeat(own_metrics, status))

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
            protocol.send(self._conn, protocol.Stop())
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
