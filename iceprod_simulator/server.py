"""SimulatedIceProd: the simulated REST API served by tornado on its own thread and IOLoop."""

import asyncio
import socket
import threading
from collections.abc import Coroutine
from typing import Any

from tornado.httpserver import HTTPServer
from tornado.ioloop import PeriodicCallback
from tornado.netutil import bind_sockets

from iceprod_simulator.access import TokenValidator
from iceprod_simulator.faults import Faults
from iceprod_simulator.handlers import Context, make_app
from iceprod_simulator.issuer import OIDCIssuer
from iceprod_simulator.model import Simulation
from iceprod_simulator.records import Records
from iceprod_simulator.service import Service
from iceprod_simulator.store import Store


class SimulatedIceProd(Service):
    """IceProd 3.2.43's read API over a Store, on 127.0.0.1, with faults and records.

    With an issuer, requests need its RS256 tokens (60 s leeway, like the real server);
    without one, every request is treated as a system request.
    """

    def __init__(
        self,
        store: Store,
        issuer: OIDCIssuer | None = None,
        *,
        port: int = 0,
        audience: str | None = None,
        simulation: Simulation | None = None,
        tick_seconds: float = 0.0,
    ):
        """Serve `store`; with `simulation` and `tick_seconds` > 0, step it on that period."""
        self.store = store
        self.faults = Faults()
        self.records = Records()
        validator = TokenValidator(issuer.jwks(), audience) if issuer else None
        self._app = make_app(Context(store, validator, self.faults, self.records, simulation))
        self._port = port
        self._simulation = simulation
        self._tick_seconds = tick_seconds
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._http: HTTPServer | None = None

    @property
    def url(self) -> str:
        """Base URL of the API, no trailing slash."""
        return f"http://127.0.0.1:{self._port}"

    @property
    def port(self) -> int:
        """The listening port (ephemeral ports are known once started)."""
        return self._port

    def start(self) -> None:
        """Listen (on the same port again after a stop) and serve from a daemon thread."""
        if self._thread is not None:
            raise RuntimeError("simulator already running")
        sockets = self._bind()
        ready = threading.Event()
        self._thread = threading.Thread(
            target=asyncio.run, args=(self._serve(sockets, ready),), daemon=True
        )
        self._thread.start()
        ready.wait()

    def stop(self) -> None:
        """Close every connection and end the thread."""
        if self._thread is None or self._loop is None or self._stopping is None:
            return
        self._loop.call_soon_threadsafe(self._stopping.set)
        self._thread.join()
        self._thread = self._loop = self._stopping = None

    @property
    def down(self) -> bool:
        """Whether the API is unreachable (connections refused) while the world keeps ticking."""
        return self._thread is not None and self._http is None

    @down.setter
    def down(self, value: bool) -> None:
        """Drop the listener and open connections, or listen again on the same port."""
        if value != self.down:
            self._on_loop(self._close() if value else self._listen(self._bind()))

    def _bind(self) -> list[socket.socket]:
        """Bind the listening socket, remembering an ephemeral port for restarts."""
        sockets = bind_sockets(self._port, "127.0.0.1", family=socket.AF_INET)
        self._port = sockets[0].getsockname()[1]
        return sockets

    def _on_loop(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run `coro` on the server's loop and wait for it."""
        if self._loop is None:
            coro.close()
            raise RuntimeError("simulator not running")
        asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    async def _listen(self, sockets: list[socket.socket]) -> None:
        """Accept connections on `sockets` (HTTP/1.1 keep-alive)."""
        self._http = HTTPServer(self._app, xheaders=True)
        self._http.add_sockets(sockets)

    async def _close(self) -> None:
        """Stop accepting and drop open keep-alive connections."""
        if self._http is not None:
            self._http.stop()
            await self._http.close_all_connections()
            self._http = None

    async def _serve(self, sockets: list[socket.socket], ready: threading.Event) -> None:
        """The thread's main: serve, tick the simulation, until stop()."""
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        await self._listen(sockets)
        ticker = None
        if self._simulation is not None and self._tick_seconds > 0:
            ticker = PeriodicCallback(self._simulation.step, self._tick_seconds * 1000)
            ticker.start()
        ready.set()
        await self._stopping.wait()
        if ticker is not None:
            ticker.stop()
        await self._close()
