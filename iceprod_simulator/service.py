"""Start/stop lifecycle shared by the simulated servers."""

import socketserver
import threading
from abc import ABC, abstractmethod
from types import TracebackType
from typing import Self


class Service(ABC):
    """Something that listens until stopped; a context manager that starts and stops it."""

    @abstractmethod
    def start(self) -> None:
        """Start serving."""

    @abstractmethod
    def stop(self) -> None:
        """Stop serving."""

    def __enter__(self) -> Self:
        """Start."""
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop."""
        self.stop()


class ServerThread:
    """A socketserver (an ``http.server``) serving from a daemon thread until closed."""

    def __init__(self, server: socketserver.BaseServer) -> None:
        """Start serving at once."""
        self.server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def close(self, timeout: float | None = None) -> None:
        """Stop serving, close the listening socket and wait (``timeout``) for the thread."""
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout)
