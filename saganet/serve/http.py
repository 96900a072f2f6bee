"""uvicorn's HTTP protocols with a deadline for a request's headers: uvicorn has none, so a client that
sends its request line and headers a byte at a time (slowloris) held a connection open for good.

httptools (C, the faster parser) is used where it is installed, h11 (pure Python) otherwise; both get
the same deadline."""
from __future__ import annotations

import importlib.util

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol


def header_deadline_protocol(seconds: float, parser: str = "auto"):
    """A uvicorn protocol class that closes a connection whose request headers are not complete within
    `seconds` of its first byte (or of the connection, for the first request). `parser`: "httptools",
    "h11" or "auto" (httptools when importable)."""
    if parser == "auto":
        parser = "httptools" if importlib.util.find_spec("httptools") else "h11"
    if parser == "httptools":
        return _httptools_protocol(seconds)
    if parser == "h11":
        return _h11_protocol(seconds)
    raise ValueError(f"unknown HTTP parser {parser!r}; use httptools, h11 or auto")


class _Deadline:
    """The timer shared by both protocols: armed when a request begins, cancelled when its headers
    are complete; when it fires the connection is closed."""
    seconds: float
    _deadline = None

    def _arm(self) -> None:
        if self._deadline is None:
            self._deadline = self.loop.call_later(self.seconds, self._too_slow)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _too_slow(self) -> None:
        self._deadline = None
        if self._headers_pending() and not self.transport.is_closing():
            self.transport.close()


def _h11_protocol(seconds: float):
    class H11HeaderDeadline(_Deadline, H11Protocol):
        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            if self.conn.their_state is h11.IDLE:  # a new request begins
                self._arm()
            super().data_received(data)
            if self.conn.their_state is not h11.IDLE:  # headers complete
                self._disarm()

        def connection_lost(self, exc) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _headers_pending(self) -> bool:
            return self.conn.their_state is h11.IDLE

    H11HeaderDeadline.seconds = seconds
    return H11HeaderDeadline


def _httptools_protocol(seconds: float):
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class HttpToolsHeaderDeadline(_Deadline, HttpToolsProtocol):
        _pending = True  # the parser calls on_headers_complete; until then the headers are pending

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._arm()

        def on_message_begin(self) -> None:
            self._pending = True
            self._arm()
            super().on_message_begin()

        def on_headers_complete(self) -> None:
            self._pending = False
            self._disarm()
            super().on_headers_complete()

        def connection_lost(self, exc) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _headers_pending(self) -> bool:
            return self._pending

    HttpToolsHeaderDeadline.seconds = seconds
    return HttpToolsHeaderDeadline
