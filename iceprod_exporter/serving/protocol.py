"""The wire protocol between the exporter's main process and its serving process.

Every message is a frozen dataclass listed here, sent over one socket pair; each side reads what
it receives with ``match``. A snapshot travels as :class:`SnapshotBegins`, its parts (each a
:class:`PartHeader` followed by the part's raw bytes), then :class:`SnapshotEnds`, with
heartbeats between the parts; the child answers :class:`Served` once it serves the snapshot.

Parent to child: :data:`ToChild`. Child to parent: :data:`ToParent`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import TypeAlias

from iceprod_exporter.exposition.encoding import Part, View
from iceprod_exporter.exposition.formats import Format
from iceprod_exporter.logs import LogFormat
from iceprod_exporter.model.status import Status

#: a parent silent this long is reported not live
SILENT_AFTER = 30.0


# --------------------------------------------------------------------------- parent to child


@dataclass(frozen=True)
class ServingOptions:
    """The first message: where to listen, the web config file, how to log."""

    listen_address: str
    port: int
    web_config_file: str | None
    log_level: str
    log_format: LogFormat
    #: a parent silent this long is reported not live (tests shorten it)
    silent_after: float = SILENT_AFTER


@dataclass(frozen=True)
class SnapshotBegins:
    """Snapshot ``number``'s parts follow; its stale view is served after ``stale_after``."""

    number: int
    stale_after: float


@dataclass(frozen=True)
class PartHeader:
    """One part of the snapshot being sent; its bytes follow as a message of their own."""

    view: View
    formats: tuple[Format, ...]


@dataclass(frozen=True)
class SnapshotEnds:
    """Snapshot ``number`` is complete: serve it, then answer :class:`Served`."""

    number: int


@dataclass(frozen=True)
class Heartbeat:
    """The parent's own metrics (identity, per format) and its status, every second."""

    own_metrics: Mapping[Format, bytes]
    status: Status


@dataclass(frozen=True)
class Stop:
    """Finish in-flight requests and exit."""


ToChild: TypeAlias = ServingOptions | SnapshotBegins | PartHeader | SnapshotEnds | Heartbeat | Stop


# --------------------------------------------------------------------------- child to parent


@dataclass(frozen=True)
class Listening:
    """The child listens: on ``port`` (the one chosen, if 0 was asked), at ``addresses``."""

    port: int
    addresses: list[tuple[str, int]]
    scheme: str


@dataclass(frozen=True)
class StartFailed:
    """The child cannot serve; ``setting`` is the one at fault."""

    setting: str
    message: str


@dataclass(frozen=True)
class Served:
    """Snapshot ``number`` is what the child serves now."""

    number: int


ToParent: TypeAlias = Listening | StartFailed | Served

_TO_CHILD = (ServingOptions, SnapshotBegins, PartHeader, SnapshotEnds, Heartbeat, Stop)
_TO_PARENT = (Listening, StartFailed, Served)


class ProtocolError(Exception):
    """The other side sent something that is not a message of this protocol."""


def send(conn: Connection, message: ToChild | ToParent) -> None:
    """Send one message."""
    conn.send(message)


def send_part(conn: Connection, part: Part) -> None:
    """Send one snapshot part: its header, then its bytes unpickled."""
    conn.send(PartHeader(part.view, part.formats))
    conn.send_bytes(part.data)


def receive_part(conn: Connection, header: PartHeader) -> Part:
    """The bytes that follow ``header``, as the part they belong to."""
    return Part(header.view, header.formats, conn.recv_bytes())


def to_child(conn: Connection) -> ToChild:
    """The next message from the parent (raises ``EOFError`` once it has gone)."""
    message = conn.recv()
    if not isinstance(message, _TO_CHILD):
        raise ProtocolError(f"not a message to the serving process: {type(message).__name__}")
    return message


def to_parent(conn: Connection) -> ToParent:
    """The next message from the serving process (raises ``EOFError`` once it has gone)."""
    message = conn.recv()
    if not isinstance(message, _TO_PARENT):
        raise ProtocolError(f"not a message to the main process: {type(message).__name__}")
    return message
