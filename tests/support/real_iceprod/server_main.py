"""Run the real IceProd REST server on an in-memory MongoDB stand-in (mongomock-motor).

Executed by the interpreter of the pinned iceprod venv (see ``requirements.txt``), never by
the project venv. IceProd 3.2.x talks to pymongo's native ``AsyncMongoClient``; the bridges
in :func:`install_mongomock_bridges` close the gaps between that client and mongomock-motor
and must be installed before ``iceprod.rest.server`` is imported.

Prints one line ``ICEPROD_READY {"port": ..., "prometheus_port": ...}`` on stdout once the
server accepts requests, then serves until SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import logging
import math
import os
import signal
import socket
import sys
from collections.abc import Callable
from typing import Any

READY_PREFIX = "ICEPROD_READY "


def _stddev(values: list[Any], *, sample: bool) -> float | None:
    """Mongo's $stdDevSamp/$stdDevPop: numbers only, null when too few values."""
    nums = [float(v) for v in values if isinstance(v, int | float) and not isinstance(v, bool)]
    n = len(nums)
    if n == 0 or (sample and n < 2):
        return None
    mean = sum(nums) / n
    return math.sqrt(sum((x - mean) ** 2 for x in nums) / (n - 1 if sample else n))


def install_mongomock_bridges() -> None:
    """Patch mongomock/mongomock-motor/iceprod so the real server runs on mongomock.

    The numbers match section 8 of docs/iceprod-api.md.
    """
    import iceprod.common.mongo
    import mongomock.aggregate
    import mongomock.collection
    import mongomock_motor
    import pymongo

    motor_coll = mongomock_motor.AsyncMongoMockCollection
    motor_client = mongomock_motor.AsyncMongoMockClient

    # 1. One shared in-memory client for every Mongo() IceProd builds, whatever its URL, so
    #    all handler modules see the same data for the life of the process.
    #    It stays a class because IceProd uses it in annotations (`AsyncMongoClient | None`).
    class SharedMockClient:
        instance: Any = None

        def __new__(cls, *_args: Any, **_kwargs: Any) -> Any:
            if cls.instance is None:
                cls.instance = motor_client()
            return cls.instance

    iceprod.common.mongo.AsyncMongoClient = SharedMockClient

    # 2. pymongo async awaits aggregate() and gets a cursor; mongomock-motor returns the cursor
    #    directly. Making the cursor awaitable (to itself) serves both call styles.
    def _await_self(self: Any) -> Any:
        return self
        yield  # pragma: no cover - makes this a generator, as __await__ must return one

    mongomock_motor.AsyncLatentCommandCursor.__await__ = _await_self
    mongomock_motor.AsyncCommandCursor.__await__ = _await_self

    # 3. Mongo.close() awaits client.close(); mongomock's close() is synchronous.
    async def _close(self: Any) -> None:
        return None

    motor_client.close = _close

    # 4. IceProd calls create_index(name=..., keys=...) (pymongo's keyword); mongomock wants
    #    key_or_list.
    orig_create_index = motor_coll.create_index

    async def _create_index(self: Any, *args: Any, **kwargs: Any) -> Any:
        if "keys" in kwargs:
            kwargs["key_or_list"] = kwargs.pop("keys")
        return await orig_create_index(self, *args, **kwargs)

    motor_coll.create_index = _create_index

    # 5. $stdDevSamp/$stdDevPop group accumulators (mongomock lists them but raises).
    ops = mongomock.aggregate._GROUPING_OPERATOR_MAP
    ops["$stdDevSamp"] = functools.partial(_stddev, sample=True)
    ops["$stdDevPop"] = functools.partial(_stddev, sample=False)

    # 6. mongomock's _find_and_modify only narrows the update to the found document when the
    #    projection keeps _id. With {'_id': False} it updates the first match of the raw query
    #    (ignoring sort) and re-reads with that query, which returns None when the update
    #    changed a queried field. Resolve the target's _id first (honouring sort).
    orig_fam = mongomock.collection.Collection._find_and_modify

    def _find_and_modify(
        self: Any,
        query: Any,
        projection: Any = None,
        update: Any = None,
        upsert: bool = False,
        sort: Any = None,
        return_document: Any = pymongo.ReturnDocument.BEFORE,
        session: Any = None,
        **kwargs: Any,
    ) -> Any:
        target = self.find_one(query, projection={"_id": True}, sort=sort)
        if target is not None:
            query, sort = {"_id": target["_id"]}, None
        return orig_fam(
            self,
            query,
            projection=projection,
            update=update,
            upsert=upsert,
            sort=sort,
            return_document=return_document,
            **kwargs,
        )

    mongomock.collection.Collection._find_and_modify = _find_and_modify

    # 7. Sessions and transactions: a no-op session whose with_transaction() just runs the
    #    callback (no isolation; the in-memory store is single-threaded anyway).
    class _FakeSession:
        async def __aenter__(self) -> _FakeSession:
            return self

        async def __aexit__(self, *exc: object) -> None:
            return None

        async def with_transaction(
            self, callback: Callable[..., Any], *args: Any, **kwargs: Any
        ) -> Any:
            return await callback(self)

        async def end_session(self) -> None:
            return None

    motor_client.start_session = lambda self, *a, **kw: _FakeSession()

    # 8. with_options() must return an async-wrapped collection (mongomock-motor forwards it to
    #    the sync mongomock collection), and the fake session must not reach mongomock, which
    #    raises NotImplementedError for any truthy session.
    def _with_options(self: Any, *args: Any, **kwargs: Any) -> Any:
        inner = self.__dict__["_AsyncMongoMockCollection__collection"]
        return motor_coll(self.database, inner.with_options(*args, **kwargs))

    motor_coll.with_options = _with_options

    def _drop_session(method: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(method)
        def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
            kwargs.pop("session", None)
            return method(self, *args, **kwargs)

        return wrapper

    for name in (
        "find",
        "aggregate",
        "find_one",
        "find_one_and_update",
        "find_one_and_replace",
        "find_one_and_delete",
        "insert_one",
        "insert_many",
        "update_one",
        "update_many",
        "delete_one",
        "delete_many",
        "replace_one",
        "count_documents",
        "bulk_write",
        "distinct",
    ):
        setattr(motor_coll, name, _drop_session(getattr(motor_coll, name)))


def _parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--issuer-url", required=True, help="OIDC realm URL (OPENID_URL)")
    p.add_argument("--audience", default="", help="OPENID_AUDIENCE; empty disables aud check")
    p.add_argument("--port", type=int, default=0, help="API port on 127.0.0.1; 0 = ephemeral")
    p.add_argument(
        "--prometheus",
        action="store_true",
        help="serve the server's own metrics on an ephemeral 127.0.0.1 port",
    )
    p.add_argument("--log-level", default="INFO")
    return p.parse_args(argv)


async def _serve(args: argparse.Namespace) -> None:
    # IceProd reads its whole config from the environment (wipac_dev_tools dataclass).
    os.environ.update(
        {
            "HOST": "127.0.0.1",
            "PORT": str(args.port),
            "OPENID_URL": args.issuer_url,
            "OPENID_AUDIENCE": args.audience,
            "DB_URL": "mongodb://in-memory/iceprod",
            # IceProd only starts its metrics server for PROMETHEUS_PORT > 0; the patched
            # start_http_server below ignores this value and binds an ephemeral port.
            "PROMETHEUS_PORT": "1" if args.prometheus else "0",
        }
    )
    os.environ.pop("CI_TESTING", None)  # must never fall back to HS512 test auth

    install_mongomock_bridges()
    import iceprod.rest.server as rest_server
    import prometheus_client

    prom: dict[str, int] = {}

    def _start_http_server(_port: int, *_a: Any, **_kw: Any) -> Any:
        # Upstream binds 0.0.0.0; the harness must only listen on loopback.
        httpd, thread = prometheus_client.start_http_server(0, addr="127.0.0.1")
        prom["port"] = httpd.server_address[1]
        return httpd, thread

    rest_server.start_http_server = _start_http_server

    server = rest_server.Server()
    await server.start()
    sockets = server.server.http_server._sockets.values()
    port = next(s.getsockname()[1] for s in sockets if s.family == socket.AF_INET)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    watchdog = asyncio.create_task(_stop_when_orphaned(stop))
    print(
        READY_PREFIX + json.dumps({"port": port, "prometheus_port": prom.get("port")}), flush=True
    )
    try:
        await stop.wait()
    finally:
        logging.info("stopping IceProd REST server")
        watchdog.cancel()
        _drop_dead_async_monitor(server)
        await server.stop()


async def _stop_when_orphaned(stop: asyncio.Event) -> None:
    """Stop when the launching process dies (e.g. pytest was SIGKILLed): no stray servers."""
    parent = os.getppid()
    while os.getppid() == parent:
        await asyncio.sleep(1.0)
    logging.warning("parent process %d is gone; stopping", parent)
    stop.set()


def _drop_dead_async_monitor(server: Any) -> None:
    """Forget IceProd's AsyncMonitor if its task already died, so stop() can finish.

    Upstream bug (iceprod 3.2.43 + wipac-dev-tools 1.21.1): AsyncMonitor._monitor reads
    ``self.prometheus``, which GlobalLabels never sets, so the task dies with AttributeError
    on its first run (the ``asyncio_tasks_running`` gauge never appears) and
    ``Server.stop()`` re-raises it before closing the database.
    """
    monitor = server.async_monitor
    task = getattr(monitor, "_task", None)
    if task is not None and task.done() and not task.cancelled() and task.exception():
        logging.warning("IceProd AsyncMonitor had died: %r", task.exception())
        server.async_monitor = None


def main(argv: list[str] | None = None) -> int:
    """Parse args, configure logging and serve until signalled."""
    args = _parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s %(module)s:%(lineno)s - %(message)s",
    )
    asyncio.run(_serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
