"""The serving process: an HTTP server that serves the bytes the main process sends it.

It answers ``/healthz`` with 503 when the parent has not reported for ``silent_after`` seconds
(a wedged or stopped parent), and exits when the parent does (the socket closes). It ignores
SIGINT and SIGTERM: the parent stops it gracefully.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from multiprocessing.connection import Connection

import structlog

from iceprod_exporter import logs
from iceprod_exporter.exposition.formats import Format, gzip_member
from iceprod_exporter.http.handlers import NotReady
from iceprod_exporter.http.server import BindError, HttpServer
from iceprod_exporter.http.web_config import LiveWebConfig, WebConfigError
from iceprod_exporter.memory import release_freed_memory
from iceprod_exporter.model.status import Status
from iceprod_exporter.serving import protocol
from iceprod_exporter.serving.store import StoredSnapshot, StoredSnapshotBuilder

log = structlog.get_logger(__name__)

#: how long a scrape waits for the first snapshot after the child started
FIRST_SNAPSHOT_WAIT = 10.0


class Mirror:
    """The serving process's copy of what the parent sent: a :class:`MetricsSource`."""

    def __init__(
        self,
        silent_after: float = protocol.SILENT_AFTER,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._silent_after = silent_after
        self._clock = clock
        self._monotonic = monotonic
        self._stored: StoredSnapshot | None = None
        self._own: Mapping[tuple[Format, bool], bytes] | None = None
        # Alive but not ready until the parent reports: a liveness probe must not kill a
        # process in its first second; the silence check below catches a parent that never does.
        self._status = Status(
            True, "starting", False, "starting: no word from the main process yet"
        )
        self._heard_at = monotonic()
        self._first = threading.Event()

    def serve(self, stored: StoredSnapshot) -> None:
        """A new snapshot's bytes, all of them: served from now on."""
        self._stored = stored
        self._ready()

    def heartbeat(self, own_metrics: Mapping[Format, bytes], status: Status) -> None:
        """The parent's own metrics and status, sent every second."""
        self._own = {
            (fmt, gzipped): gzip_member(body) if gzipped else body
            for fmt, body in own_metrics.items()
            for gzipped in (False, True)
        }
        self._status = status
        self._heard_at = self._monotonic()
        self._ready()

    def _ready(self) -> None:
        if self.has_snapshot():
            self._first.set()

    def has_snapshot(self) -> bool:
        """Whether a snapshot and the parent's metrics have arrived."""
        return self._stored is not None and self._own is not None

    def wait_for_snapshot(self) -> None:
        """Wait (bounded) for the first snapshot."""
        if not self._first.wait(FIRST_SNAPSHOT_WAIT):
            raise NotReady("starting: no snapshot received yet")

    def chunks(self, fmt: Format, gzipped: bool = False) -> Sequence[bytes]:
        """The parent's metrics, then the snapshot's view of now."""
        stored, own = self._stored, self._own
        assert stored is not None and own is not None, "wait_for_snapshot() first"
        return (own[(fmt, gzipped)], *stored.view(self._clock()).chunks(fmt, gzipped))

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


def receive(conn: Connection, mirror: Mirror) -> None:
    """Apply the parent's messages to ``mirror`` until it says stop or goes away."""
    building: StoredSnapshotBuilder | None = None
    while True:
        try:
            message = protocol.to_child(conn)
        except (EOFError, OSError):
            log.info("serving.parent_gone")
            return
        except protocol.ProtocolError as exc:  # a bug: end, and the parent stops with code 1
            log.error("serving.protocol_error", error=str(exc))
            return
        match message:
            case protocol.Stop():
                return
            case protocol.SnapshotBegins(stale_after=stale_after):  # then parts, heartbeats between
                building = StoredSnapshotBuilder(stale_after)
            case protocol.PartHeader() if building is not None:
                building.add(protocol.receive_part(conn, message))
            case protocol.SnapshotEnds(number=number) if building is not None:
                mirror.serve(building.finish())
                building = None
                release_freed_memory()  # the snapshot just replaced
                # the parent swaps the snapshot in once it is served here
                protocol.send(conn, protocol.Served(number))
            case protocol.Heartbeat(own_metrics=own, status=status):
                mirror.heartbeat(own, status)
            case _:
                log.error("serving.protocol_error", error=f"out of turn: {type(message).__name__}")
                return


def _start(options: protocol.ServingOptions, mirror: Mirror) -> HttpServer | protocol.StartFailed:
    try:
        web = LiveWebConfig.from_file(options.web_config_file)
        server = HttpServer(
            mirror, mirror.status, options.listen_address, options.port, web_config=web
        )
        server.start()
    except BindError as exc:
        return protocol.StartFailed(exc.setting, exc.message)
    except WebConfigError as exc:
        return protocol.StartFailed("web_config_file", str(exc))
    return server


def child_main(fd: int) -> int:
    """The serving process: serve what the parent sends until it says stop or goes away."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)  # the parent stops us, gracefully
    conn = Connection(fd)
    options = protocol.to_child(conn)
    assert isinstance(options, protocol.ServingOptions), "the parent sends its options first"
    logs.configure(options.log_level, options.log_format)
    mirror = Mirror(options.silent_after)
    started = _start(options, mirror)
    if isinstance(started, protocol.StartFailed):
        protocol.send(conn, started)
        return 2
    protocol.send(conn, protocol.Listening(started.port, started.addresses, started.scheme))
    try:
        receive(conn, mirror)
    finally:
        started.stop()
    return 0
