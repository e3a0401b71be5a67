"""The wire protocol between the main process and the serving process, over a real socket pair."""

from __future__ import annotations

import dataclasses
import socket
import threading
import typing
from collections.abc import Iterator
from multiprocessing.connection import Connection

import pytest

from iceprod_exporter.exposition.encoding import Part, View
from iceprod_exporter.exposition.formats import BOTH, Format
from iceprod_exporter.logs import LogFormat
from iceprod_exporter.model.status import Status
from iceprod_exporter.serving import protocol
from iceprod_exporter.serving.child import Mirror, receive

OK = Status(True, "ok", True, "ok", {"version": "1"})
ONE_OF_EACH: list[protocol.ToChild | protocol.ToParent] = [
    protocol.ServingOptions("127.0.0.1", 0, None, "info", LogFormat.JSON, 2.0),
    protocol.SnapshotBegins(1, 1000.0),
    protocol.PartHeader(View.FULL, BOTH),
    protocol.SnapshotEnds(1),
    protocol.Heartbeat({Format.TEXT: b"own 1\n"}, OK),
    protocol.Stop(),
    protocol.Listening(8097, [("127.0.0.1", 8097)], "http"),
    protocol.StartFailed("port", "in use"),
    protocol.Served(1),
]


@pytest.fixture
def pair() -> Iterator[tuple[Connection, Connection]]:
    ours, theirs = socket.socketpair()
    parent, child = Connection(ours.detach()), Connection(theirs.detach())
    yield parent, child
    parent.close()
    child.close()


def test_the_lists_name_every_message_of_the_module() -> None:
    listed = {*typing.get_args(protocol.ToChild), *typing.get_args(protocol.ToParent)}
    defined = {
        cls
        for cls in vars(protocol).values()
        if isinstance(cls, type)
        and dataclasses.is_dataclass(cls)
        and cls.__module__ == protocol.__name__
    }
    assert listed == defined
    assert {type(m) for m in ONE_OF_EACH} == defined
    assert all(cls.__dataclass_params__.frozen for cls in defined)  # type: ignore[attr-defined]


def test_every_message_arrives_equal_and_on_its_side_only(
    pair: tuple[Connection, Connection],
) -> None:
    parent, child = pair
    for message in ONE_OF_EACH:
        to_child = isinstance(message, typing.get_args(protocol.ToChild))
        protocol.send(parent if to_child else child, message)
        read = protocol.to_child if to_child else protocol.to_parent
        assert read(child if to_child else parent) == message
        protocol.send(child if to_child else parent, message)  # the wrong way
        wrong = protocol.to_parent if to_child else protocol.to_child
        with pytest.raises(protocol.ProtocolError):
            wrong(parent if to_child else child)


def test_anything_else_is_refused(pair: tuple[Connection, Connection]) -> None:
    parent, child = pair
    parent.send(("snapshot", 1, 1000.0))  # the string-tagged tuple of old
    with pytest.raises(protocol.ProtocolError, match="tuple"):
        protocol.to_child(child)


def test_a_part_travels_as_its_header_and_its_bytes(pair: tuple[Connection, Connection]) -> None:
    parent, child = pair
    part = Part(View.STALE, (Format.OPENMETRICS,), b"# EOF\n")
    protocol.send_part(parent, part)
    header = protocol.to_child(child)
    assert isinstance(header, protocol.PartHeader)
    assert protocol.receive_part(child, header) == part


def test_the_child_serves_a_snapshot_once_its_end_arrives(
    pair: tuple[Connection, Connection],
) -> None:
    parent, child = pair
    mirror = Mirror(clock=lambda: 999.0)
    reader = threading.Thread(target=receive, args=(child, mirror))
    reader.start()
    protocol.send(parent, protocol.Heartbeat({fmt: b"own 1\n" for fmt in Format}, OK))
    protocol.send(parent, protocol.SnapshotBegins(7, stale_after=1000.0))
    for view in View:
        protocol.send_part(parent, Part(view, BOTH, f"{view.value} 1\n".encode()))
    assert not parent.poll(0.2), "nothing is answered before the snapshot's end"
    assert not mirror.has_snapshot()
    protocol.send(parent, protocol.SnapshotEnds(7))
    assert parent.poll(5)
    assert protocol.to_parent(parent) == protocol.Served(7)
    assert mirror.body(Format.TEXT) == b"own 1\nfull 1\n"
    assert mirror.status() == OK
    protocol.send(parent, protocol.Stop())
    reader.join(5)
    assert not reader.is_alive()


def test_a_part_out_of_turn_ends_the_child(pair: tuple[Connection, Connection]) -> None:
    parent, child = pair
    reader = threading.Thread(target=receive, args=(child, Mirror()))
    reader.start()
    protocol.send(parent, protocol.SnapshotEnds(3))  # no snapshot begun
    reader.join(5)
    assert not reader.is_alive()
    assert not parent.poll(0.1), "no protocol.Served for a snapshot never begun"
