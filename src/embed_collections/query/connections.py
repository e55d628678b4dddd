"""uvicorn's HTTP protocol with the limits it lacks: a request head must arrive within a time
(uvicorn resets its keep-alive timer on every byte, so a client sending one byte at a time held
a connection forever), and connections beyond a cap are turned away at once, before they can
exhaust the process's file descriptors."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from embed_collections.query.access import AccessPolicy

log = logging.getLogger(__name__)

try:  # uvicorn's faster parser when installed (the serve extra), else its pure-Python one
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as BaseProtocol

    PARSER = "httptools"
except ImportError:  # pragma: no cover - depends on the environment
    from uvicorn.protocols.http.h11_impl import H11Protocol as BaseProtocol  # type: ignore

    PARSER = "h11"

REASONS = {408: "Request Timeout", 429: "Too Many Requests"}


def raw_answer(transport: asyncio.Transport, status: int, message: str) -> None:
    """Write a whole `{"error": ...}` response straight to the socket and close it: for a
    connection whose request never (fully) came, so the parser cannot answer it."""
    body = json.dumps({"error": message}).encode()
    head = (
        f"HTTP/1.1 {status} {REASONS[status]}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    ).encode()
    if not transport.is_closing():
        transport.write(head + body)
        transport.close()


def guarded_protocol(policy: AccessPolicy) -> type[asyncio.Protocol]:
    """The protocol class for `uvicorn.Config(http=...)` enforcing `policy`'s head timeout and
    connection cap."""

    class GuardedProtocol(BaseProtocol):  # type: ignore[misc, valid-type]
        head_timer: asyncio.TimerHandle | None = None
        got_bytes = False

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            if len(self.connections) > policy.max_connections:
                log.warning("Refusing a connection: %d open", len(self.connections))
                raw_answer(
                    transport,
                    429,
                    f"The server has {policy.max_connections} connections open; retry later",
                )
                return
            self.arm_head_timer()

        def arm_head_timer(self) -> None:
            self.cancel_head_timer()
            self.got_bytes = False
            self.head_timer = self.loop.call_later(policy.header_timeout, self.head_timed_out)

        def cancel_head_timer(self) -> None:
            if self.head_timer is not None:
                self.head_timer.cancel()
                self.head_timer = None

        def head_timed_out(self) -> None:
            self.head_timer = None
            if self.cycle is not None and not self.cycle.response_complete:
                return  # a pipelined request is being answered: its head came
            if not self.got_bytes:  # an idle kept-alive or unused connection: just close it
                self.transport.close()
                return
            raw_answer(
                self.transport,
                408,
                f"The request head did not arrive within {policy.header_timeout:g} s",
            )

        def data_received(self, data: bytes) -> None:
            self.got_bytes = True
            super().data_received(data)
            cycle = self.cycle  # h11 has no head callback: a cycle under way means a head came
            if PARSER == "h11" and cycle is not None and not cycle.response_complete:
                self.cancel_head_timer()

        def on_headers_complete(self) -> None:  # httptools' callback
            self.cancel_head_timer()
            super().on_headers_complete()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self.arm_head_timer()

        def connection_lost(self, exc: Exception | None) -> None:
            self.cancel_head_timer()
            super().connection_lost(exc)

    return GuardedProtocol


def uvicorn_settings(policy: AccessPolicy) -> dict[str, Any]:
    """uvicorn.Config keywords for `policy`: the guarded protocol and the keep-alive timeout."""
    return {"http": guarded_protocol(policy), "timeout_keep_alive": policy.keep_alive_timeout}
