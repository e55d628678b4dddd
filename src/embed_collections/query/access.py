"""Who may talk to `serve`, and how much: one policy applied to every endpoint (the JSON API and
MCP alike) by an ASGI middleware, and limits on slow or huge requests at the connection.

- `Host` must name the server (loopback names by default, `--allowed-hosts` to widen), and a
  browser's `Origin` must be one of those hosts or the `--cors-origin`: a DNS-rebinding page
  reads nothing.
- With an API key, every request carries `Authorization: Bearer KEY`; a non-loopback address
  needs one (or an explicit `--no-auth`, which logs a warning).
- The request head must arrive within `header_timeout` (408, then closed: slow-loris clients are
  dropped), the body within `body_timeout` (408) and under `max_body_bytes` (413); beyond
  `max_connections` open connections a new one is answered 429 and closed.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import logging
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from embed_collections.errors import UsageError

log = logging.getLogger(__name__)

LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")
API_KEY_ENV = "EMBED_COLLECTIONS_API_KEY"
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


def is_loopback(host: str) -> bool:
    """Whether binding `host` is reachable from this machine only."""
    if host.strip("[]").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def host_name(header: str) -> str:
    """The host of a `Host` header or an origin's netloc, without port or IPv6 brackets."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1 : header.find("]")] if "]" in header else header
    return header.rpartition(":")[0] if header.count(":") == 1 else header


@dataclass(frozen=True)
class AccessPolicy:
    """What `serve` accepts; `for_bind` builds it from the command line's options."""

    allowed_hosts: tuple[str, ...] = LOOPBACK_NAMES
    api_key: str | None = None
    cors_origin: str | None = None
    max_body_bytes: int = 1 << 20
    header_timeout: float = 10.0
    body_timeout: float = 10.0
    keep_alive_timeout: float = 5.0
    max_connections: int = 2048

    @classmethod
    def for_bind(
        cls,
        host: str,
        allowed_hosts: tuple[str, ...] = (),
        api_key: str | None = None,
        no_auth: bool = False,
        cors_origin: str | None = None,
        **limits: Any,
    ) -> AccessPolicy:
        """The policy for a server listening on `host`: a non-loopback address without a key is
        a UsageError unless `no_auth` (then a warning)."""
        if not is_loopback(host) and not api_key:
            if not no_auth:
                raise UsageError(
                    f"--host {host} is reachable from other machines and no API key is set; "
                    f"pass --api-key KEY (or set {API_KEY_ENV}), or --no-auth to serve "
                    "without one"
                )
            log.warning(
                "Serving on %s without authentication (--no-auth): anyone who can reach it "
                "can read every served document",
                host,
            )
        names = [*LOOPBACK_NAMES]
        if host not in ("0.0.0.0", "::", ""):
            names.append(host_name(host))
        names.extend(host_name(name) for name in allowed_hosts if name.strip())
        if cors_origin:
            cors_origin = cors_origin.rstrip("/")
            if not urlsplit(cors_origin).scheme or not urlsplit(cors_origin).netloc:
                raise UsageError(
                    f'--cors-origin "{cors_origin}" is not an origin; give scheme and host, '
                    "e.g. https://app.example.com"
                )
        return cls(tuple(dict.fromkeys(names)), api_key or None, cors_origin, **limits)

    def host_allowed(self, header: str | None) -> bool:
        if not header:
            return False
        return "*" in self.allowed_hosts or host_name(header) in self.allowed_hosts

    def origin_allowed(self, origin: str) -> bool:
        """A browser's Origin: one of the served hosts, or the CORS origin."""
        if self.cors_origin and origin.rstrip("/") == self.cors_origin:
            return True
        parts = urlsplit(origin)
        return parts.scheme in ("http", "https") and self.host_allowed(parts.netloc)

    def key_given(self, authorization: str | None) -> bool:
        if self.api_key is None:
            return True
        scheme, _, token = (authorization or "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(
            token.strip().encode(), self.api_key.encode()
        )

    def mcp_security(self) -> Any:
        """The MCP SDK's own DNS-rebinding settings, for the same hosts and origins."""
        from mcp.server.transport_security import TransportSecuritySettings

        if "*" in self.allowed_hosts:
            return TransportSecuritySettings(enable_dns_rebinding_protection=False)
        hosts = [f"[{name}]" if ":" in name else name for name in self.allowed_hosts]
        origins = [
            f"{scheme}://{h}{port}"
            for h in hosts
            for scheme in ("http", "https")
            for port in ("", ":*")
        ]
        return TransportSecuritySettings(
            allowed_hosts=[*hosts, *(f"{h}:*" for h in hosts)],
            allowed_origins=[*origins, *([self.cors_origin] if self.cors_origin else [])],
        )


def error_body(status: int, message: str) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    body = json.dumps({"error": message}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    return body, headers


async def refuse(send: Any, status: int, message: str) -> None:
    """Answer an ASGI request with `{"error": message}`."""
    body, headers = error_body(status, message)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class AccessGuard:
    """ASGI middleware: Host, Origin and API key on every request, then the body read whole
    within the timeout and the size cap, and handed on."""

    def __init__(self, app: Any, policy: AccessPolicy) -> None:
        self.app, self.policy = app, policy

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        problem = self.check(scope, headers)
        if problem is not None:
            await refuse(send, *problem)
            return
        if scope["method"] not in BODY_METHODS:
            await self.app(scope, receive, send)
            return
        try:
            body = await self.read_body(receive, headers)
        except _Refused as refused:
            await refuse(send, refused.status, refused.message)
            return
        if body is None:  # the client went away
            return
        await self.app(scope, replay(body, receive), send)

    def check(self, scope: dict, headers: dict[str, str]) -> tuple[int, str] | None:
        policy = self.policy
        if not policy.host_allowed(headers.get("host")):
            return 421, (
                f'Host "{headers.get("host", "")}" is not served here (allowed: '
                f"{', '.join(policy.allowed_hosts)}; widen with --allowed-hosts)"
            )
        origin = headers.get("origin")
        if origin is not None and not policy.origin_allowed(origin):
            return 403, (
                f'Origin "{origin}" may not use this server (allow one with --cors-origin)'
            )
        preflight = scope["method"] == "OPTIONS" and "access-control-request-method" in headers
        if not preflight and not policy.key_given(headers.get("authorization")):
            return 401, "This server needs its API key: send Authorization: Bearer KEY"
        return None

    async def read_body(self, receive: Any, headers: dict[str, str]) -> bytes | None:
        limit = self.policy.max_body_bytes
        declared = headers.get("content-length")
        if declared is not None:
            if not declared.strip().isdigit():
                raise _Refused(400, f'Content-Length "{declared}" is not a number of bytes')
            if int(declared) > limit:
                raise _Refused(413, self.too_large(int(declared)))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.policy.body_timeout
        body = bytearray()
        while True:
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - loop.time()))
            except TimeoutError:
                raise _Refused(
                    408,
                    f"The request body did not arrive within {self.policy.body_timeout:g} s",
                ) from None
            if message["type"] == "http.disconnect":
                return None
            body += message.get("body", b"")
            if len(body) > limit:
                raise _Refused(413, self.too_large(len(body)))
            if not message.get("more_body", False):
                return bytes(body)

    def too_large(self, size: int) -> str:
        return (
            f"The request body is {size:,} bytes or more, over the limit of "
            f"{self.policy.max_body_bytes:,} (send a shorter query)"
        )


class _Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def replay(body: bytes, receive: Any) -> Any:
    """A `receive` that hands over the body read already, then waits on the real one (for the
    disconnect that ends a stream)."""
    sent = False

    async def receive_again() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return receive_again
