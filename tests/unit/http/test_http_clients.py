"""Careless clients over real sockets: bad heads, the connection cap, the bcrypt queue.

Heads are read under a deadline and size limits and get their status, the connection cap closes
the longest-waiting connection to make room, and bcrypt checks wait in a bounded queue that
takes client addresses in turn and drops the clients that have gone.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Mapping, Sequence
from functools import partial

import bcrypt
import pytest

from iceprod_exporter.http.logins import Authenticator, LoginChecks
from tests.support.exporter import wait_for
from tests.support.http import request
from tests.support.http_clients import (
    HEADS,
    exchange,
    serving,
    status_of,
    still_open,
)


class GatedAuth(Authenticator):
    """Checks that wait for the test and record their order; "good" is the password."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Semaphore(0)
        self.order: list[str] = []

    def check(self, users: Mapping[str, bytes], user: str, password: str) -> bool:
        if self.known(users, user, password) is None:
            self.gate.acquire(timeout=5)
            self.order.append(password)
        return super().check(users, user, password)


def run_checks(
    limit: int, logins: Sequence[tuple[str, str, str]]
) -> tuple[list[bool | None], list[str]]:
    """(peer, password, then hangs up) logins 10 ms apart, the first checked at once, then all.

    The results in the order of ``logins``, and the passwords in the order they were checked.
    """
    users = {"u": bcrypt.hashpw(b"good", bcrypt.gensalt(4))}

    async def scenario() -> list[bool | None]:
        checks = LoginChecks(auth, limit)
        gone: set[str] = set()
        tasks = []
        for peer, password, hangs_up in logins:
            gone_yet = partial(set.__contains__, gone, password)
            login = (users, "u", password)
            tasks.append(asyncio.ensure_future(checks.check(login, peer, gone_yet)))
            await asyncio.sleep(0.01)
            gone.add(hangs_up)
        for _ in logins:
            auth.gate.release()
        results = await asyncio.wait_for(asyncio.gather(*tasks), 5)
        again = await checks.check((users, "u", "p1"), "a", lambda: False)  # no check
        checks.shutdown()
        return [*results, again]

    auth = GatedAuth()
    return asyncio.run(scenario()), auth.order


@pytest.mark.parametrize("case", HEADS)
def test_a_bad_head_gets_its_status_at_once(case: str) -> None:
    data, status = HEADS[case]
    with serving() as server:
        response, took = exchange(server.port, data)
        assert status_of(response) == status, response[:100]
        assert took < 1.0, f"{case}: answered after {took:.2f}s"
        tornados = case == "a header line without a colon"  # its own bare answer, after the head
        assert tornados or b"\r\nConnection: close\r\n" in response
        if len(data) > 1000:  # read under the limits, the rest drained: no reset, nothing kept
            wait_for(lambda: server.connections == 0, 2, "closed", interval=0.01)
        assert request("127.0.0.1", server.port, "/healthz").status == 200
        if not tornados:
            counted = server.registry.get_sample_value(
                "iceprod_exporter_http_requests_total", {"handler": "other", "code": str(status)}
            )
            assert counted == 1


def test_a_head_cut_off_before_its_blank_line_gets_408_at_the_deadline() -> None:
    with serving(header_timeout=0.2) as server:
        response, took = exchange(server.port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
        assert status_of(response) == 408
        assert 0.15 < took < 1.0


def test_a_connection_that_sends_nothing_is_closed_silently_at_the_deadline() -> None:
    with serving(header_timeout=0.2) as server:
        response, took = exchange(server.port, b"")
        assert response == b"" and 0.15 < took < 1.0


def test_leading_empty_lines_are_ignored() -> None:
    with serving() as server:
        response, _ = exchange(server.port, b"\r\n\r\nGET /healthz HTTP/1.0\r\n\r\n")
        assert status_of(response) == 200


def test_at_the_cap_the_longest_waiting_new_connection_makes_room() -> None:
    with serving(max_connections=5) as server:
        port = server.port
        kept = socket.create_connection(("127.0.0.1", port))  # a scraper between two scrapes
        kept.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        assert kept.recv(65536).startswith(b"HTTP/1.1 200 OK")
        new = [socket.create_connection(("127.0.0.1", port)) for _ in range(3)]
        new.append(socket.create_connection(("127.0.0.1", port)))  # half-sent: waiting too
        new[-1].sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        try:
            wait_for(lambda: server.connections == 5, 5, "5 connections", interval=0.01)
            # the oldest is the kept-alive one: a connection never answered goes first
            assert request("127.0.0.1", port, timeout=2).status == 200
            assert still_open([kept, *new]) == [True, False, True, True, True]
            wait_for(lambda: server.connections == 4, 5, "the scrape's connection closed", 0.01)
            new.append(socket.create_connection(("127.0.0.1", port)))
            wait_for(lambda: server.connections == 5, 5, "5 connections again", interval=0.01)
            assert request("127.0.0.1", port, timeout=2).status == 200
            assert still_open([kept, *new]) == [True, False, False, True, True, True]
            # once only kept-alive connections wait, the longest-waiting of them goes
            for sock in new[2:]:
                sock.close()
            wait_for(lambda: server.connections == 1, 5, "the new ones closed", interval=0.01)
            others = [socket.create_connection(("127.0.0.1", port)) for _ in range(4)]
            for sock in others:
                sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
                assert sock.recv(65536).startswith(b"HTTP/1.1 200 OK")
            assert request("127.0.0.1", port, timeout=2).status == 200
            assert still_open([kept, *others]) == [False, True, True, True, True]
            for sock in others:
                sock.close()
        finally:
            kept.close()
            for sock in new:
                sock.close()


def test_bcrypt_checks_first_come_bounded_skipping_the_gone_and_the_known() -> None:
    results, order = run_checks(
        3,
        [
            ("a", "p1", ""),  # checked at once
            ("a", "p2", ""),
            ("a", "p3", ""),
            ("a", "p4", ""),
            ("a", "p5", "p2"),  # three waiting, all its address's: 503; then p2 hangs up
            ("a", "good", "p3"),  # room, once p2 is dropped; then p3 hangs up: skipped
        ],
    )
    assert order == ["p1", "p4", "good"]
    assert results == [False, None, None, False, None, True, False]  # p1 again: remembered


def test_bcrypt_checks_take_turns_by_client_address() -> None:
    results, order = run_checks(
        3,
        [
            ("a", "p1", ""),
            ("a", "p2", ""),
            ("a", "p3", ""),
            ("a", "p4", ""),
            ("b", "good", ""),  # full: a's newest (p4) makes room for it
            ("c", "q1", ""),  # full: a's newest again (p3); c's turn comes after b's
        ],
    )
    # one check of each other address before "good": p2, a's turn being first
    assert order == ["p1", "p2", "good", "q1"]
    assert results == [False, False, None, None, True, False, False]
