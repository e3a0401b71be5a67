"""Basic-auth logins: the credentials a request sends, bcrypt checks and the queue they wait in.

Checks are slow on purpose (bcrypt, ~50-100 ms at cost 10): results are remembered, and the
checks the IOLoop asks for run one at a time in one worker thread, in a bounded queue that takes
client addresses in turn and drops those whose client has gone (:class:`LoginChecks`).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import hashlib
import threading
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor

import bcrypt

#: exporter-toolkit's hash of "fakepassword": unknown users cost a bcrypt check too (no timing
#: oracle for which user names exist)
_FAKE_HASH = b"$2y$10$QOauhQNbBCuQDKes6eFzPeMqBSjb7Mr5DUmpZ/VcEd00UAV/LDeSi"
#: successful checks remembered (bcrypt costs ~50-100 ms at cost 10); as exporter-toolkit's cache
AUTH_CACHE_SIZE = 100
#: failed checks remembered: a client that keeps sending one wrong password (a scraper with a
#: stale one, a fleet of them) costs one check, not one a request
FAILED_CACHE_SIZE = 1000
#: bcrypt checks waiting for the one worker, past which a new one is answered 503: at cost 10
#: (50-100 ms a check) the last waits 3-6 s, within Prometheus' default 10 s scrape timeout
BCRYPT_QUEUE = 64

Login = tuple[Mapping[str, bytes], str, str]  # users, user, password
_Waiting = tuple["asyncio.Future[bool | None]", Callable[[], bool], Login]  # result, gone, login


def basic_credentials(header: str | None) -> tuple[str, str] | None:
    """User and password of an ``Authorization: Basic`` header; ``None`` for anything else."""
    if not header:
        return None
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic" or len(encoded) > 4096:
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, sep, password = decoded.partition(":")
    return (user, password) if sep else None


class Authenticator:
    """Checks basic-auth credentials against bcrypt hashes, remembering the results.

    The cache key is a SHA-256 of user, hash and password (never the password itself), so a
    changed hash invalidates it; successes and failures are kept apart, each bounded. Checks are
    slow on purpose (bcrypt); the caller runs them off its event loop, one at a time like
    exporter-toolkit, so a flood of wrong passwords costs one core at most.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._known: dict[bool, dict[bytes, None]] = {True: {}, False: {}}

    def known(self, users: Mapping[str, bytes], user: str, password: str) -> bool | None:
        """The result of an earlier check of these credentials, if remembered (no bcrypt)."""
        key = self._key(users, user, password)
        for ok, keys in self._known.items():
            if key in keys:
                return ok
        return None

    def check(self, users: Mapping[str, bytes], user: str, password: str) -> bool:
        """Whether ``user`` / ``password`` match (slow when not remembered)."""
        remembered = self.known(users, user, password)
        if remembered is not None:
            return remembered
        hashed = users.get(user)
        with self._lock:
            try:
                ok = bcrypt.checkpw(password.encode(), hashed or _FAKE_HASH)
            except ValueError:
                ok = False
        ok = ok and hashed is not None
        keys = self._known[ok]
        if len(keys) >= (AUTH_CACHE_SIZE if ok else FAILED_CACHE_SIZE):
            keys.pop(next(iter(keys)))  # oldest first
        keys[self._key(users, user, password)] = None
        return ok

    @staticmethod
    def _key(users: Mapping[str, bytes], user: str, password: str) -> bytes:
        hashed = users.get(user, _FAKE_HASH)
        return hashlib.sha256(b"\0".join((user.encode(), hashed, password.encode()))).digest()


class LoginChecks:
    """bcrypt checks for the IOLoop: one at a time in one worker thread, in turn by client address.

    A remembered result answers at once (:meth:`Authenticator.known`). A check waits only while
    its client is connected: one whose client has gone is dropped unchecked, so a storm stops
    costing CPU once its clients go. Waiting checks are queued per client address, first come
    first served, and the addresses take turns: a login from Prometheus' host waits for one check
    per other address with checks waiting, however many one host queues; from a host it shares
    with the storm, for the checks queued before it (newest first would starve it as soon as
    wrong passwords arrive faster than they are checked). At most ``limit`` wait: past that, and
    once the gone are dropped, a new check takes the place of the newest of the address with
    the most waiting, or is answered 503 if that address is its own.
    """

    def __init__(self, auth: Authenticator, limit: int) -> None:
        self._auth = auth
        self._limit = limit
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="http-bcrypt")
        self._waiting: dict[str, deque[_Waiting]] = {}  # in turn order
        self._count = 0
        self._running = False

    async def check(self, login: Login, peer: str, gone: Callable[[], bool]) -> bool | None:
        """Whether the credentials are good; ``None`` when not checked (queue full, or gone)."""
        known = self._auth.known(*login)
        if known is not None:
            return known
        if self._count >= self._limit and not self._make_room(peer):
            return None
        future: asyncio.Future[bool | None] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(peer, deque()).append((future, gone, login))
        self._count += 1
        self._next()
        return await future

    def _make_room(self, peer: str) -> bool:
        for address, queue in list(self._waiting.items()):
            kept = deque(w for w in queue if not _dropped(w))
            self._count -= len(queue) - len(kept)
            if kept:
                self._waiting[address] = kept
            else:
                del self._waiting[address]
        if self._count < self._limit:
            return True
        busiest = max(self._waiting, key=lambda address: len(self._waiting[address]))
        if busiest == peer:
            return False
        queue = self._waiting[busiest]
        queue.pop()[0].set_result(None)
        self._count -= 1
        if not queue:
            del self._waiting[busiest]
        return True

    def _next(self) -> None:
        while self._waiting and not self._running:
            peer = next(iter(self._waiting))
            queue = self._waiting.pop(peer)
            waiting = queue.popleft()
            self._count -= 1
            if queue:
                self._waiting[peer] = queue  # behind the other addresses
            if _dropped(waiting):
                continue
            future, _, login = waiting
            self._running = True
            job = asyncio.get_running_loop().run_in_executor(self._pool, self._auth.check, *login)
            job.add_done_callback(functools.partial(self._done, future))

    def _done(self, future: asyncio.Future[bool | None], job: asyncio.Future[bool]) -> None:
        self._running = False
        if not future.done():
            error = job.exception()
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(job.result())
        self._next()

    def shutdown(self) -> None:
        """Stop the worker (a check running finishes on its own)."""
        self._pool.shutdown(wait=False)


def _dropped(waiting: _Waiting) -> bool:
    """Whether a waiting check is to be skipped: its request ended, or its client has gone."""
    future, gone, _ = waiting
    if not future.done() and gone():
        future.set_result(None)
    return future.done()
