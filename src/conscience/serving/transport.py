"""The HTTP server under the app: uvicorn, with a deadline for each request's headers.

uvicorn times out idle keep-alive connections but not a client that opens a connection and
sends its headers a byte at a time (or not at all): each such connection holds a socket and a
slot for ever. :class:`HeaderDeadlineProtocol` gives every request ``header_timeout`` seconds,
counted from the connection, or from the first byte of a keep-alive connection's next request,
to finish its headers; past it the client gets ``408`` and the connection closes. The body has
its own deadline in the app (``body_timeout``), where the body is read.
"""

from __future__ import annotations

import asyncio

from .config import ServeConfig

REQUEST_TIMEOUT_REPLY = (b"HTTP/1.1 408 Request Timeout\r\nContent-Type: application/json\r\nConnection: close\r\n"
                         b"Content-Length: %d\r\n\r\n%s")
_BODY = (b'{"error": {"message": "the request headers did not arrive in time", "type": "invalid_request_error", '
         b'"param": null, "code": "request_timeout"}}')


def header_deadline_protocol(header_timeout: float):
    """uvicorn's h11 protocol class with a deadline of ``header_timeout`` seconds on each request's headers."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeaderDeadlineProtocol(H11Protocol):
        _deadline: asyncio.TimerHandle | None = None

        def _arm(self) -> None:
            if self._deadline is None:
                self._deadline = self.loop.call_later(header_timeout, self._headers_too_slow)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def connection_made(self, transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()  # a connection that never sends a byte is timed out too

        def data_received(self, data: bytes) -> None:
            waiting = self.conn.their_state is h11.IDLE
            if waiting:
                self._arm()  # the first byte of a keep-alive connection's next request
            super().data_received(data)
            if self.conn.their_state is not h11.IDLE or self.transport.is_closing():
                self._disarm()  # the headers are in (or the connection is gone)

        def on_response_complete(self) -> None:
            super().on_response_complete()
            # a kept-alive connection: uvicorn's keep-alive timeout covers it until its next byte
            self._disarm()

        def connection_lost(self, exc) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _headers_too_slow(self) -> None:
            self._deadline = None
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                self.transport.write(REQUEST_TIMEOUT_REPLY % (len(_BODY), _BODY))
                self.transport.close()

    return HeaderDeadlineProtocol


def uvicorn_config(app, cfg: ServeConfig, **overrides):
    """The uvicorn config ``conscience serve`` runs: the header deadline, quiet logs, no access log."""
    import uvicorn

    settings = dict(host=cfg.host, port=cfg.port, log_level="warning", access_log=False,
                    http=header_deadline_protocol(cfg.header_timeout))
    return uvicorn.Config(app, **{**settings, **overrides})


def run(app, cfg: ServeConfig) -> None:
    import uvicorn

    uvicorn.Server(uvicorn_config(app, cfg)).run()
