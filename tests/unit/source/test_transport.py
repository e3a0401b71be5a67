"""The bounded HTTP client (aiohttp) against real sockets: the bounds, keep-alive, TLS, errors."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import gzip
import ipaddress
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from iceprod_exporter.source.labels import Reason
from iceprod_exporter.source.transport import Response, Transport, TransportError, same_origin
from tests.support.scripted_http import Reply, ScriptedServer


def fetch_all(
    transport: Transport, *urls: str, headers: dict[str, str] | None = None
) -> list[Response | TransportError]:
    """GET each URL in turn on one event loop; the answers or the errors."""

    async def run() -> list[Response | TransportError]:
        results: list[Response | TransportError] = []
        for url in urls:
            try:
                results.append(await transport.fetch(url, timeout=2.0, headers=headers))
            except TransportError as exc:
                results.append(exc)
        transport.close()
        return results

    return asyncio.run(run())


def test_sequential_calls_share_one_connection(server: ScriptedServer) -> None:
    server.script["/a"] = [Reply(200, {"n": 1})]
    answers = fetch_all(Transport(max_body=1024, connections=2), *[server.url + "/a"] * 5)
    assert [a.body for a in answers if isinstance(a, Response)] == [b'{"n": 1}'] * 5
    assert server.connections == 1, "kept alive"


def test_a_connection_the_server_dropped_is_not_reused(server: ScriptedServer) -> None:
    server.script["/a"] = [Reply(200, {"n": 1}, hang_up=True)]
    answers = fetch_all(Transport(max_body=1024, connections=2), *[server.url + "/a"] * 3)
    assert all(isinstance(a, Response) and a.status == 200 for a in answers)
    assert server.connections == 3


def test_finite_chunked_body_and_headers(server: ScriptedServer) -> None:
    server.script["/c"] = [
        Reply(201, chunks=lambda: iter([b'{"a":', b" 1}"]), headers={"Retry-After": "3"})
    ]
    [answer] = fetch_all(Transport(max_body=1024, connections=1), server.url + "/c")
    assert isinstance(answer, Response)
    assert (answer.status, answer.body, answer.headers["retry-after"]) == (201, b'{"a": 1}', "3")


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n", Reason.BAD_RESPONSE),
        (b"SSH-2.0-OpenSSH_9.2\r\n\r\n", Reason.BAD_RESPONSE),
        (b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n", Reason.BAD_RESPONSE),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", Reason.BAD_RESPONSE),
        (
            b"HTTP/1.1 200 OK\r\nContent-Encoding: br\r\nContent-Length: 2\r\n\r\n{}",
            Reason.BAD_RESPONSE,
        ),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n{}", Reason.CONNECTION),
    ],
    ids=["huge-header", "not-http", "bad-length", "bad-chunk", "unknown-encoding", "cut-short"],
)
def test_malformed_answers_fail_with_a_reason(raw: bytes, reason: Reason) -> None:
    async def run() -> TransportError:
        async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(raw)
            await writer.drain()
            writer.close()

        listener = await asyncio.start_server(answer, "127.0.0.1", 0)
        port = listener.sockets[0].getsockname()[1]
        transport = Transport(max_body=1024, connections=1)
        try:
            with pytest.raises(TransportError) as err:
                await transport.fetch(f"http://127.0.0.1:{port}/", timeout=2.0)
        finally:
            transport.close()
            listener.close()
        return err.value

    assert asyncio.run(run()).reason == reason


@dataclass
class Seen:
    """What a raw server saw: the request heads, and the connections the client closed."""

    heads: list[bytes] = field(default_factory=list)
    closed: int = 0


@contextlib.asynccontextmanager
async def raw_server(reply: bytes) -> AsyncIterator[tuple[str, Seen]]:
    """Answers every request with ``reply`` on a kept-open connection; its URL and what it saw."""
    seen = Seen()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                seen.heads.append(await reader.readuntil(b"\r\n\r\n"))
                writer.write(reply)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            seen.closed += 1
        finally:
            writer.close()

    listener = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{listener.sockets[0].getsockname()[1]}/", seen
    finally:
        listener.close()


async def closed_within(seen: Seen, count: int, seconds: float = 1.0) -> bool:
    """True once the server saw ``count`` connections closed by the client, within ``seconds``."""
    async with asyncio.timeout(seconds):
        while seen.closed < count:
            await asyncio.sleep(0.01)
    return True


def test_the_deadline_closes_the_socket_of_a_silent_answer() -> None:
    async def run() -> None:
        transport = Transport(max_body=1024, connections=1)
        async with raw_server(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{") as (url, seen):
            started = asyncio.get_running_loop().time()
            with pytest.raises(TransportError) as err:
                await transport.fetch(url, timeout=0.2)
            assert err.value.reason == Reason.TIMEOUT
            assert asyncio.get_running_loop().time() - started < 0.5
            assert await closed_within(seen, 1), "the socket is closed, not pooled"
            transport.close()

    asyncio.run(run())


def test_a_content_length_over_the_cap_is_refused_before_the_body() -> None:
    async def run() -> None:
        transport = Transport(max_body=1024, connections=1)
        head = b"HTTP/1.1 200 OK\r\nContent-Length: 2048\r\n\r\n"  # and no body ever
        async with raw_server(head) as (url, seen):
            with pytest.raises(TransportError) as err:
                await transport.fetch(url, timeout=2.0)  # fails at once, not at the deadline
            assert err.value.reason == Reason.TOO_LARGE
            assert await closed_within(seen, 1, 0.5)
            transport.close()

    asyncio.run(run())


def gzip_reply(body: bytes) -> bytes:
    return (
        b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )


@pytest.mark.parametrize(
    ("body", "answer"),
    [
        (gzip.compress(b'{"a":') + gzip.compress(b" 1}"), b'{"a": 1}'),  # two members
        (gzip.compress(bytes(1025)), Reason.TOO_LARGE),  # 1 KiB after inflating, 29 bytes sent
    ],
    ids=["members", "inflates-past-the-cap"],
)
def test_gzip_is_inflated_here_and_capped_after_inflating(
    body: bytes, answer: bytes | Reason
) -> None:
    async def run() -> tuple[bytes | Reason, Seen]:
        transport = Transport(max_body=1024, connections=1)
        async with raw_server(gzip_reply(body)) as (url, seen):
            try:
                return (await transport.fetch(url, timeout=2.0)).body, seen
            except TransportError as exc:
                return exc.reason, seen
            finally:
                transport.close()

    got, seen = asyncio.run(run())
    assert got == answer
    assert b"\r\naccept-encoding: gzip\r\n" in seen.heads[0].lower(), "only what is inflated here"


def test_close_closes_the_kept_connections_and_keeps_no_cookie() -> None:
    reply = b"HTTP/1.1 200 OK\r\nSet-Cookie: session=abc\r\nContent-Length: 2\r\n\r\n{}"

    async def run() -> Seen:
        transport = Transport(max_body=1024, connections=2)
        async with raw_server(reply) as (url, seen):
            for _ in range(3):  # by name: aiohttp's jar would keep no cookie of an IP address
                await transport.fetch(url.replace("127.0.0.1", "localhost"), timeout=2.0)
            assert seen.closed == 0, "kept alive"
            transport.close()
            assert await closed_within(seen, 1)
            await transport.fetch(url, timeout=2.0)  # a closed transport opens anew
            transport.close()
            assert await closed_within(seen, 2)
        return seen

    seen = asyncio.run(run())
    assert len(seen.heads) == 4
    assert not any(b"\r\ncookie:" in head.lower() for head in seen.heads)


def test_a_header_value_with_a_line_break_is_never_sent(server: ScriptedServer) -> None:
    [error] = fetch_all(
        Transport(max_body=1024, connections=1),
        server.url + "/a",
        headers={"Authorization": "Bearer x\r\nX-Injected: 1"},
    )
    assert isinstance(error, TransportError) and error.reason == Reason.BAD_RESPONSE
    assert server.seen == []


def test_same_origin() -> None:
    assert same_origin("https://h/realm", "https://h:443/token")
    assert not same_origin("https://h/realm", "http://h/realm")
    assert not same_origin("https://h/realm", "https://h.evil/realm")
    assert not same_origin("https://h/realm", "file:///etc/passwd")


def self_signed(directory: Path) -> tuple[ssl.SSLContext, Path]:
    """A server context for 127.0.0.1 and the file of its (self-signed) certificate."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = directory / "cert.pem", directory / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    return context, cert_file


def test_https_verifies_against_requests_ca_bundle(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    context, cert_file = self_signed(tmp_path)
    with ScriptedServer(tls=context) as server:
        server.script["/a"] = [Reply(200, {"tls": True})]
        [untrusted] = fetch_all(Transport(max_body=1024, connections=1), server.url + "/a")
        assert isinstance(untrusted, TransportError) and untrusted.reason == Reason.CONNECTION
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(cert_file))
        [answer] = fetch_all(Transport(max_body=1024, connections=1), server.url + "/a")
        assert isinstance(answer, Response) and answer.body == b'{"tls": true}'
