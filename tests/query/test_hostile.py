"""Hostile requests over `/search` and the MCP `search` tool of a real server: every one a 4xx
`{"error": ...}` naming the problem (MCP: a tool error), none a 5xx, and the server answers
normally afterwards."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest
from test_serve import garden_service

from embed_collections.query.mcp_tools import build_mcp
from embed_collections.query.server import BackgroundServer, create_app

DEEP = b'{"query": "a", "where": ' + b'{"n": ' * 10_000 + b"1" + b"}" * 10_001
JSON_BODIES: list[tuple[str, Any, int, str]] = [
    ("where key $", {"query": "a", "where": {"$": "x"}}, 400, 'Filter field "$"'),
    ("where key a..b", {"query": "a", "where": {"a..b": "x"}}, 400, 'Filter field "a..b"'),
    ("where key metadata.", {"query": "a", "where": {"metadata.": 1}}, 400, "Filter field"),
    ("where 2**70", {"query": "a", "where": {"n": 2**70}}, 400, "beyond the 64 bits"),
    ("where -2**64", {"query": "a", "where": {"n": -(2**64)}}, 400, "beyond the 64 bits"),
    ("where surrogate", {"query": "a", "where": {"k": "\ud800"}}, 400, "lone surrogate"),
    ("where NaN", {"query": "a", "where": {"k": float("nan")}}, 400, 'Filter "k" has value'),
    ("where null byte key", {"query": "a", "where": {"a\x00": "x"}}, 400, "NUL"),
    ("query surrogate", {"query": "\ud800"}, 400, "lone surrogate"),
    ("query null byte", {"query": "roses\x00"}, 400, "NUL character"),
    ("query NaN", {"query": float("nan")}, 422, 'Field "query"'),
    ("query list", {"query": ["a"]}, 422, 'Field "query"'),
    ("top_k true", {"query": "a", "top_k": True}, 422, 'Field "top_k"'),
    ("top_k string", {"query": "a", "top_k": "3"}, 422, 'Field "top_k"'),
    ("top_k float", {"query": "a", "top_k": 3.0}, 422, 'Field "top_k"'),
    ("top_k NaN", {"query": "a", "top_k": float("nan")}, 422, 'Field "top_k"'),
    ("top_k 2**70", {"query": "a", "top_k": 2**70}, 400, "top_k is"),
    ("top_k 0", {"query": "a", "top_k": 0}, 400, "top_k is 0"),
    ("mode number", {"query": "a", "mode": 5}, 422, 'Field "mode"'),
    ("mode surrogate", {"query": "a", "mode": "\ud800"}, 400, "lone surrogate"),
    ("mode unknown", {"query": "a", "mode": "fuzzy"}, 400, "fuzzy"),
    ("collection surrogate", {"query": "a", "collections": ["\ud800"]}, 400, "lone surrogate"),
    ("collection number", {"query": "a", "collections": [5]}, 422, 'Field "collections'),
    ("unknown field", {"query": "a", "limit": 3}, 422, 'Unknown field "limit"'),
    ("a list", [1, 2], 422, "must be a JSON object"),
    ("null", None, 422, "must be a JSON object"),
]
RAW_BODIES: list[tuple[str, bytes, int, str]] = [
    ("10,000-deep JSON", DEEP, 400, "could not be parsed"),
    ("Latin-1 bytes", '{"query": "café"}'.encode("latin-1"), 400, "could not be parsed"),
    ("5,000-digit integer", b'{"query": "a", "top_k": ' + b"9" * 5000 + b"}", 400, "parsed"),
    ("NaN literal", b'{"query": "a", "top_k": NaN}', 422, 'Field "top_k"'),
    ("null bytes", b"\x00" * 64, 422, "not valid JSON"),
    ("truncated", b'{"query": ', 422, "not valid JSON"),
    ("empty", b"", 422, "JSON object"),
    ("10 MB body", b'{"query": "' + b"x" * 10_000_000 + b'"}', 413, "over the limit"),
]


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_models):
    service = garden_service(tmp_path_factory.mktemp("hostile"), tiny_models["tiny32"])
    try:
        with BackgroundServer(create_app(service, build_mcp(service))) as running:
            yield running
    finally:
        service.close()


def post(url: str, content: bytes) -> httpx.Response:
    headers = {"content-type": "application/json"}
    return httpx.post(url + "/search", content=content, headers=headers, timeout=60)


@pytest.mark.parametrize(("case", "body", "status", "message"), JSON_BODIES + RAW_BODIES)
def test_a_hostile_body_is_a_4xx_naming_the_problem(server, case, body, status, message):
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    answer = post(server.url, content)
    assert (answer.status_code, answer.headers["content-type"]) == (status, "application/json")
    assert message in answer.json()["error"], answer.json()
    assert post(server.url, b'{"query": "roses", "top_k": 2}').status_code == 200


def test_404_and_405_have_the_same_shape(server):
    missing = httpx.get(server.url + "/nowhere")
    assert missing.status_code == 404
    assert missing.json() == {"error": "No endpoint /nowhere; the endpoints are listed at /docs"}
    wrong = httpx.get(server.url + "/search")
    assert wrong.status_code == 405 and wrong.json()["error"].startswith("GET is not allowed")


MCP_ARGUMENTS = [
    {"query": "a", "where": {"$": "x"}},
    {"query": "a", "where": {"n": 2**70}},
    {"query": "a\x00"},
    {"query": "a", "top_k": True},
    {"query": "a", "top_k": 10**30},
    {"query": "a", "mode": "fuzzy"},
    {"query": "a", "collections": ["Nope"]},
    {"query": ["a"]},
    {},
]


def test_hostile_mcp_search_arguments_are_tool_errors(server):
    # Lone surrogates are left out: the SDK's client cannot encode them to send (the tool
    # checks its arguments with the same `SearchService.check` as /search).
    from mcp import ClientSession
    from mcp.client.streamable_http import streamable_http_client

    async def talk() -> list[Any]:
        async with (
            streamable_http_client(server.url + "/mcp/") as streams,
            ClientSession(streams[0], streams[1]) as session,
        ):
            await session.initialize()
            results = [await session.call_tool("search", args) for args in MCP_ARGUMENTS]
            results.append(await session.call_tool("search", {"query": "roses", "top_k": 2}))
            return results

    *bad, good = asyncio.run(talk())
    assert [result.is_error for result in bad] == [True] * len(MCP_ARGUMENTS)
    assert all("Traceback" not in result.content[0].text for result in bad)
    assert not good.is_error and len(good.structured_content["hits"]) == 2
    garbage = httpx.post(
        server.url + "/mcp/",
        content=DEEP,
        headers={"content-type": "application/json", "accept": "application/json"},
    )
    assert 400 <= garbage.status_code < 500
