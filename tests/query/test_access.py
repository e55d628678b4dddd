"""Who may talk to `serve`, and how much, on real parts: uvicorn on a real socket (loopback, and
0.0.0.0 with a key) driven by httpx, the MCP SDK's client and raw sockets for slow clients."""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from typing import Any

import httpx
import pytest
from helpers import invoke
from test_serve import garden_service

from embed_collections.errors import UsageError
from embed_collections.query.access import AccessPolicy
from embed_collections.query.mcp_tools import build_mcp
from embed_collections.query.server import BackgroundServer, create_app
from embed_collections.query.service import SearchService

KEY = "s3cret-key"
SEARCH = {"query": "pruning roses", "top_k": 2}


@pytest.fixture(scope="module")
def service(tmp_path_factory, tiny_models):
    served = garden_service(tmp_path_factory.mktemp("access"), tiny_models["tiny32"])
    yield served
    served.close()


def serve(service: SearchService, policy: AccessPolicy, host: str = "127.0.0.1"):
    app = create_app(service, build_mcp(service), host, policy)
    return BackgroundServer(app, host, policy=policy)


def mcp_tools(url: str, headers: dict[str, str] | None = None) -> Any:
    """The tool names over streamable HTTP (the SDK's own client), or the error it raised."""
    import httpx2
    from mcp import ClientSession
    from mcp.client.streamable_http import streamable_http_client

    async def talk() -> Any:
        async with (
            httpx2.AsyncClient(headers=headers or {}, timeout=30) as client,
            streamable_http_client(url + "/mcp/", http_client=client) as streams,
            ClientSession(streams[0], streams[1]) as session,
        ):
            await session.initialize()
            return sorted(tool.name for tool in (await session.list_tools()).tools)

    return asyncio.run(talk())


def test_foreign_host_and_origin_are_refused_on_every_endpoint(service):
    with serve(service, AccessPolicy.for_bind("127.0.0.1")) as server:
        url = server.url
        for method, path, body in [
            ("GET", "/healthz", None),
            ("POST", "/search", SEARCH),
            ("GET", "/docs", None),
            ("POST", "/mcp/", {}),
            ("GET", "/nowhere", None),
        ]:
            evil = httpx.request(method, url + path, json=body, headers={"host": "evil.example"})
            assert evil.status_code == 421, path
            assert evil.json()["error"].startswith('Host "evil.example" is not served here')
            foreign = httpx.request(
                method, url + path, json=body, headers={"origin": "http://evil.example"}
            )
            assert foreign.status_code == 403, path
            assert "may not use this server" in foreign.json()["error"]
        assert "access-control-allow-origin" not in foreign.headers  # CORS off
        for host in (f"localhost:{server.port}", f"127.0.0.1:{server.port}"):
            ok = httpx.post(
                url + "/search", json=SEARCH, headers={"host": host, "origin": f"http://{host}"}
            )
            assert ok.status_code == 200 and len(ok.json()["hits"]) == 2
        assert mcp_tools(url) == ["list_collections", "read", "search"]


def test_a_non_loopback_bind_needs_a_key_checked_on_http_and_mcp(service, caplog):
    with pytest.raises(UsageError, match="--host 0.0.0.0 is reachable from other machines"):
        AccessPolicy.for_bind("0.0.0.0")
    with caplog.at_level(logging.WARNING, logger="embed_collections.query.access"):
        AccessPolicy.for_bind("0.0.0.0", no_auth=True)
    assert "without authentication (--no-auth)" in caplog.text

    policy = AccessPolicy.for_bind("0.0.0.0", ("search.internal",), api_key=KEY)
    with serve(service, policy, "0.0.0.0") as server:
        url = f"http://127.0.0.1:{server.port}"
        bearer = {"authorization": f"Bearer {KEY}"}
        for path in ("/healthz", "/collections", "/mcp/"):
            refused = httpx.get(url + path)
            assert refused.status_code == 401, path
            assert refused.headers["www-authenticate"] == "Bearer"
            assert "API key" in refused.json()["error"]
            wrong = httpx.get(url + path, headers={"authorization": "Bearer nope"})
            assert wrong.status_code == 401
        assert httpx.post(url + "/search", json=SEARCH, headers=bearer).status_code == 200
        named = {**bearer, "host": f"search.internal:{server.port}"}
        assert httpx.post(url + "/search", json=SEARCH, headers=named).status_code == 200
        evil = {**bearer, "host": "evil.example"}
        assert httpx.post(url + "/search", json=SEARCH, headers=evil).status_code == 421
        foreign = {**bearer, "origin": "https://evil.example"}
        assert httpx.post(url + "/mcp/", json={}, headers=foreign).status_code == 403
        assert mcp_tools(url, bearer) == ["list_collections", "read", "search"]
        with pytest.raises(Exception):  # noqa: B017 - the SDK wraps the 401 in its own groups
            mcp_tools(url)


def test_serve_on_a_public_address_without_a_key_stops_before_loading(tmp_path):
    result = invoke(["serve", "--output-dir", tmp_path / "nothing", "--host", "0.0.0.0"])
    assert result.code == 2
    assert "--host 0.0.0.0 is reachable from other machines and no API key is set" in result.err
    assert "Traceback" not in result.err


def test_one_cors_origin_may_be_allowed(service):
    origin = "https://app.example.com"
    with serve(service, AccessPolicy.for_bind("127.0.0.1", cors_origin=origin)) as server:
        preflight = httpx.options(
            server.url + "/search",
            headers={"origin": origin, "access-control-request-method": "POST"},
        )
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == origin
        answer = httpx.post(server.url + "/search", json=SEARCH, headers={"origin": origin})
        assert answer.status_code == 200
        assert answer.headers["access-control-allow-origin"] == origin
        other = httpx.post(server.url + "/search", json=SEARCH, headers={"origin": "https://x.io"})
        assert other.status_code == 403


def read_all(sock: socket.socket, seconds: float) -> tuple[bytes, float]:
    """What the server sends until it closes the connection, and when it closed it."""
    sock.settimeout(seconds)
    data = b""
    started = time.monotonic()
    while chunk := sock.recv(65536):
        data += chunk
    return data, time.monotonic() - started


LIMITS = {"header_timeout": 1.0, "body_timeout": 1.0, "max_body_bytes": 4096}


def test_slow_clients_are_dropped_within_the_timeout_while_queries_go_on(service):
    policy = AccessPolicy.for_bind("127.0.0.1", **LIMITS)
    with serve(service, policy) as server:
        slow = []
        for _ in range(50):
            sock = socket.create_connection(("127.0.0.1", server.port))
            sock.sendall(b"POST /search HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
            slow.append(sock)
        idle = socket.create_connection(("127.0.0.1", server.port))  # sends nothing at all
        answered = [httpx.post(server.url + "/search", json=SEARCH).status_code for _ in range(5)]
        closed = [read_all(sock, 10) for sock in slow]
        assert answered == [200] * 5
        for data, seconds in closed:
            assert data.startswith(b"HTTP/1.1 408 ") and b"did not arrive within 1 s" in data
            assert seconds < 3
        assert read_all(idle, 10)[0] == b""  # closed without a word

        body = socket.create_connection(("127.0.0.1", server.port))
        body.sendall(
            b"POST /search HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b'Content-Length: 200\r\n\r\n{"query": '
        )
        data, seconds = read_all(body, 10)
        assert data.startswith(b"HTTP/1.1 408 ") and b"request body did not arrive" in data
        assert seconds < 3
        for sock in [*slow, idle, body]:
            sock.close()


def test_huge_bodies_and_too_many_connections_get_a_4xx(service):
    policy = AccessPolicy.for_bind("127.0.0.1", **LIMITS, max_connections=8)
    with serve(service, policy) as server:
        big = httpx.post(server.url + "/search", json={"query": "x" * 10_000})
        assert big.status_code == 413 and "over the limit of 4,096" in big.json()["error"]

        def chunks():
            yield b'{"query": "'
            for _ in range(10):
                yield b"x" * 1000

        streamed = httpx.post(server.url + "/search", content=chunks())  # no Content-Length
        assert streamed.status_code == 413
        held = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(8)]
        extra = socket.create_connection(("127.0.0.1", server.port))
        data, _ = read_all(extra, 5)
        assert data.startswith(b"HTTP/1.1 429 ") and b"8 connections open" in data
        for sock in [*held, extra]:
            sock.close()
        done = threading.Event()
        threading.Timer(3, done.set).start()
        while not done.wait(0.1):  # the held ones close; the server answers again
            try:
                if httpx.get(server.url + "/healthz").status_code == 200:
                    break
            except httpx.HTTPError:
                continue
        assert httpx.get(server.url + "/healthz").status_code == 200


def test_options_reach_the_policy():
    policy = AccessPolicy.for_bind("10.1.2.3", ("a.example",), api_key=KEY)
    assert policy.host_allowed("10.1.2.3:8000") and policy.host_allowed("A.example:80")
    assert policy.host_allowed("[::1]:8000") and not policy.host_allowed("b.example")
    assert AccessPolicy.for_bind("127.0.0.1", ("*",)).host_allowed("anything.example")
    with pytest.raises(UsageError, match="is not an origin"):
        AccessPolicy.for_bind("127.0.0.1", cors_origin="app.example.com")
