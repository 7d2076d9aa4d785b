"""Cross-site protection for a server that a browser on the same machine can reach.

With no API key (the default) any web page could drive a local server (CSRF) or, through DNS
rebinding, read from it. Three checks, before any route runs:

* the ``Host`` header must name the bind address (``localhost`` and the loopback addresses too
  when bound to loopback) or a ``--allowed-host``; bound to every interface, any IP literal is
  accepted, since rebinding needs a host *name*;
* a request with an ``Origin`` is refused unless that origin is the server itself or a
  ``--cors-origin`` (which then gets the CORS headers, preflight included);
* a POST must declare a JSON content type: the content types a page may send cross-site without
  a preflight (``text/plain``, forms) are refused.
"""

from __future__ import annotations

import ipaddress
import json
from urllib.parse import urlsplit

from .schemas import error_body

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
WILDCARD_BINDS = ("0.0.0.0", "::", "")


def host_name(value: str) -> str:
    """The host part of a ``Host`` header or netloc, lower-cased, brackets and port removed."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1:value.find("]")] if "]" in value else value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        return False


def _is_loopback(name: str) -> bool:
    return name == "localhost" or (_is_ip(name) and ipaddress.ip_address(name).is_loopback)


class HostPolicy:
    """Which ``Host`` names and ``Origin`` values the server answers."""

    def __init__(self, bind: str, allowed_hosts=(), cors_origins=()):
        bind = host_name(bind)
        self.any_host = "*" in allowed_hosts
        self.any_ip = bind in WILDCARD_BINDS
        self.names = {bind, *(host_name(h) for h in allowed_hosts)}
        if _is_loopback(bind):
            self.names.update(LOOPBACK_NAMES)
        self.cors_any = "*" in cors_origins
        self.cors_origins = {o.rstrip("/").lower() for o in cors_origins}

    def host_allowed(self, host: str) -> bool:
        name = host_name(host)
        return self.any_host or name in self.names or (self.any_ip and _is_ip(name))

    def cors_allowed(self, origin: str) -> bool:
        return self.cors_any or origin.rstrip("/").lower() in self.cors_origins

    def same_origin(self, origin: str, host: str) -> bool:
        try:
            parts = urlsplit(origin)
        except ValueError:
            return False
        return parts.scheme in ("http", "https") and parts.netloc.lower() == host.strip().lower()


def _is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


class CrossSiteGuard:
    """ASGI middleware applying a :class:`HostPolicy`; refusals are OpenAI-shaped JSON errors."""

    def __init__(self, app, policy: HostPolicy, on_refused=None):
        self.app, self.policy, self.on_refused = app, policy, on_refused

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        host, origin = headers.get("host", ""), headers.get("origin")
        cors = origin is not None and not self.policy.same_origin(origin, host) and self.policy.cors_allowed(origin)
        refusal = None
        if not self.policy.host_allowed(host):
            refusal = (403, f"the Host header {host_name(host)!r} is not this server's (see --allowed-host)",
                       "host_not_allowed")
        elif origin is not None and not cors and not self.policy.same_origin(origin, host):
            refusal = (403, "cross-origin requests are refused (see --cors-origin)", "origin_not_allowed")
        elif scope["method"] == "OPTIONS" and cors:
            return await self._send(send, 204, b"", self._cors_headers(origin, preflight=True))
        elif scope["method"] == "POST" and not _is_json(headers.get("content-type", "")):
            refusal = (415, "the body must be sent as 'Content-Type: application/json'", "unsupported_media_type")
        if refusal is not None:
            status, message, code = refusal
            if self.on_refused is not None:
                self.on_refused(scope.get("path", ""))
            body = json.dumps(error_body(message, "invalid_request_error", None, code)).encode()
            return await self._send(send, status, body, [(b"content-type", b"application/json")])
        if not cors:
            return await self.app(scope, receive, send)
        extra = self._cors_headers(origin)

        async def send_with_cors(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": list(message.get("headers", [])) + extra}
            await send(message)

        return await self.app(scope, receive, send_with_cors)

    @staticmethod
    def _cors_headers(origin: str, preflight: bool = False) -> list[tuple[bytes, bytes]]:
        out = [(b"access-control-allow-origin", origin.encode("latin-1")), (b"vary", b"Origin")]
        if preflight:
            out += [(b"access-control-allow-methods", b"GET, POST, OPTIONS"),
                    (b"access-control-allow-headers", b"Authorization, Content-Type"),
                    (b"access-control-max-age", b"600")]
        return out

    @staticmethod
    async def _send(send, status: int, body: bytes, headers: list) -> None:
        await send({"type": "http.response.start", "status": status,
                    "headers": headers + [(b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
