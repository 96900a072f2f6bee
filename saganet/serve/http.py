"""uvicorn's h11 protocol with a deadline for a request's headers: uvicorn has none, so a client that
sends its request line and headers a byte at a time (slowloris) held a connection open for good."""
from __future__ import annotations

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol


def header_deadline_protocol(seconds: float):
    """An H11Protocol class that closes a connection whose request headers are not complete within
    `seconds` of its first byte (or of the connection, for the first request)."""

    class HeaderDeadline(H11Protocol):
        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._deadline = self.loop.call_later(seconds, self._too_slow)

        def data_received(self, data: bytes) -> None:
            if self.conn.their_state is h11.IDLE and self._deadline is None:  # a new request begins
                self._deadline = self.loop.call_later(seconds, self._too_slow)
            super().data_received(data)
            if self.conn.their_state is not h11.IDLE and self._deadline is not None:  # headers complete
                self._deadline.cancel()
                self._deadline = None

        def connection_lost(self, exc) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
            super().connection_lost(exc)

        def _too_slow(self) -> None:
            self._deadline = None
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                self.transport.close()

    return HeaderDeadline
