"""What an agent gets from `serve`: /read and budgeted /search over HTTP, and the MCP tools
list_collections, search and read with the SDK's own client over streamable HTTP and stdio:
schemas enumerated from the run, descriptions with the run's own examples, compact results,
and bad arguments answered with the argument and the fix (MCP errors, HTTP 4xx JSON)."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from typing import Any

import httpx
import pytest
from context_corpus import guide_text, write_context_corpus
from helpers import PACKAGE_ROOT
from test_context import embed_run

from embed_collections.query.descriptions import DESCRIPTIONS_FILE, load_descriptions
from embed_collections.query.live import LiveRun
from embed_collections.query.mcp_tools import build_mcp
from embed_collections.query.server import BackgroundServer, create_app
from embed_collections.query.service import SearchService

GARDEN = "A gardening guide: installing, pruning, watering"


@pytest.fixture(scope="module")
def agent_server(tmp_path_factory, tiny_models):
    root = tmp_path_factory.mktemp("agents")
    out = embed_run(write_context_corpus(root / "Chunked"), root / "out", tiny_models["tiny32"])
    (out / DESCRIPTIONS_FILE).write_text(json.dumps({"collections": {"Garden": GARDEN}}))
    descriptions = load_descriptions(out, ["Kitchen=Kitchen notes"], ["read=Read around a hit."])
    service = SearchService(LiveRun(out, poll_seconds=0.2).start(), descriptions=descriptions)
    try:
        with (
            BackgroundServer(create_app(service, build_mcp(service))) as server,
            httpx.Client(base_url=server.url, timeout=60) as client,
        ):
            yield out, server.url, client
    finally:
        service.close()


def test_http_read_gives_neighbours_joined_in_order(agent_server):
    _, _, client = agent_server
    answer = client.post("/read", json={"collection": "Garden", "chunk_id": "guide-0003",
                                        "before": 1, "after": 1})  # fmt: skip
    assert answer.status_code == 200, answer.text
    data = answer.json()
    assert [p["text"] for p in data["pieces"]] == [guide_text(2, 4)]
    assert data["pieces"][0]["chunk_index"] == [2, 4] and data["pieces"][0]["section"] == "Pruning"
    assert data["text"].startswith("[1] [Garden] Garden/guide_chunks.json § Pruning")


def test_http_search_with_a_budget_answers_a_context_block(agent_server):
    _, _, client = agent_server
    answer = client.post("/search", json={"query": "pruning", "max_tokens": 150, "top_k": 3})
    data = answer.json()
    assert answer.status_code == 200 and 0 < data["tokens"] <= 150
    assert data["text"].startswith("[1] [") and data["pieces"]
    plain = client.post("/search", json={"query": "pruning", "diversity": 0.5}).json()
    assert len(plain["hits"]) == 10


def test_http_collections_say_what_points_are_and_what_each_holds(agent_server):
    data = agent_server[2].get("/collections").json()
    described = {c["name"]: c.get("description") for c in data["collections"]}
    assert described == {"Garden": GARDEN, "Kitchen": "Kitchen notes"}
    assert "number of chunks" in data["points_are"]
    assert data["fields"]["source_file"] == "string" and data["fields"]["position"] == "integer"
    assert data["fields"]["metadata.lang"] == "string"


HTTP_BAD = [
    ("/read", {"collection": "Garden", "chunk_id": "nope"}, 404, 'chunk_id "nope" is not in'),
    ("/read", {"collection": "Gardn", "chunk_id": "x"}, 404, 'Unknown collection "Gardn"'),
    ("/read", {"collection": "Garden", "chunk_id": "guide-0003", "before": -1}, 400,
     "before is -1"),
    ("/read", {"collection": "Garden", "document_id": "doc-guide", "max_tokens": -3}, 400,
     "max_tokens is -3"),
    ("/read", {"collection": "Garden", "chunk": "x"}, 422, 'Unknown field "chunk"'),
    ("/search", {"query": "a", "max_tokens": -1}, 400, "max_tokens is -1"),
    ("/search", {"query": "a", "where": {"metadata.colour": "red"}}, 400,
     'where: "metadata.colour" is not a payload field'),
    ("/search", {"query": "a", "diversity": 3}, 400, "diversity is 3"),
]  # fmt: skip


@pytest.mark.parametrize(("path", "body", "status", "message"), HTTP_BAD)
def test_http_bad_arguments_answer_4xx_json_naming_the_argument(agent_server, path, body,
                                                                status, message):  # fmt: skip
    answer = agent_server[2].post(path, json=body)
    assert answer.status_code == status, answer.text
    assert message in answer.json()["error"]


async def mcp_session_calls(session: Any) -> dict[str, Any]:
    """The calls every MCP transport is checked with."""
    await session.initialize()
    results: dict[str, Any] = {"tools": await session.list_tools()}
    calls = {
        "listed": ("list_collections", {}),
        "search": ("search", {"query": "pruning roses", "top_k": 3}),
        "context": ("search", {"query": "pruning roses", "max_tokens": 150}),
        "read": ("read", {"collection": "Garden", "chunk_id": "guide-0003", "before": 1,
                          "after": 1}),
        "unknown_chunk": ("read", {"collection": "Garden", "chunk_id": "nope"}),
        "negative_budget": ("search", {"query": "a", "max_tokens": -1}),
        "unknown_field": ("search", {"query": "a", "where": {"colour": "red"}}),
        "by_file": ("search", {"query": "a", "source_file": "Garden/guide_chunks.json"}),
        "by_name": ("search", {"query": "a", "document_name": "guide"}),
    }  # fmt: skip
    for key, (tool, arguments) in calls.items():
        results[key] = await session.call_tool(tool, arguments)
    return results


def check_mcp_results(results: dict[str, Any]) -> None:
    tools = {tool.name: tool for tool in results["tools"].tools}
    assert set(tools) == {"list_collections", "search", "read"}
    search = tools["search"].input_schema["properties"]
    assert search["collections"]["anyOf"][0]["items"]["enum"] == ["Garden", "Kitchen"]
    assert search["mode"]["anyOf"][0]["enum"] == ["dense", "sparse", "hybrid"]
    assert search["top_k"]["maximum"] == 1000 and search["top_k"]["minimum"] == 1
    where = search["where"]["anyOf"][0]
    assert where["additionalProperties"] is False and "metadata.lang" in where["properties"]
    assert '"source_file": "Garden/guide_chunks.json"' in tools["search"].description
    assert GARDEN in tools["search"].description and GARDEN in tools["list_collections"].description
    assert tools["read"].description == "Read around a hit."  # overridden
    assert tools["read"].input_schema["properties"]["collection"]["enum"] == ["Garden", "Kitchen"]
    assert all(tool.annotations.read_only_hint for tool in tools.values())

    found = results["search"]
    text = found.content[0].text
    assert text.count(" · chunk_id ") == 3 and all(
        "text" not in h for h in found.structured_content["hits"]
    )
    assert len(text) < len(json.dumps(found.structured_content, indent=2)) + 3 * 200
    assert results["context"].content[0].text.startswith("[1] [")
    assert results["context"].structured_content["tokens"] <= 150
    assert guide_text(2, 4) in results["read"].content[0].text
    by_file = results["by_file"].structured_content["hits"]
    assert {hit["source_file"] for hit in by_file} == {"Garden/guide_chunks.json"}
    assert results["by_name"].is_error and "document_name:" in results["by_name"].content[0].text
    listed = results["listed"].structured_content
    assert "number of chunks" in listed["points_are"]
    for key, message in [
        ("unknown_chunk", 'chunk_id "nope" is not in collection "Garden"'),
        ("negative_budget", "max_tokens"),
        ("unknown_field", 'where: "colour" is not a payload field'),
    ]:
        assert results[key].is_error and message in results[key].content[0].text, key


def test_mcp_over_streamable_http_offers_read_and_context(agent_server):
    from mcp import ClientSession
    from mcp.client.streamable_http import streamable_http_client

    async def talk() -> dict[str, Any]:
        async with (
            streamable_http_client(agent_server[1] + "/mcp/") as streams,
            ClientSession(streams[0], streams[1]) as session,
        ):
            return await mcp_session_calls(session)

    check_mcp_results(asyncio.run(talk()))


@pytest.mark.slow  # a `serve --mcp` child that loads torch
def test_mcp_over_stdio_offers_read_and_context(agent_server):
    from mcp import ClientSession, StdioServerParameters
    from mcp.client.stdio import stdio_client

    out = agent_server[0]
    params = StdioServerParameters(
        command=sys.executable,
        args=["-c", "from embed_collections.cli.main import main; main()", "serve", "--mcp"]
        + ["-q", "--output-dir", str(out), "--describe", "Kitchen=Kitchen notes"]
        + ["--tool-description", "read=Read around a hit."],
        env={"PYTHONPATH": os.environ["PYTHONPATH"], "HF_HUB_OFFLINE": "1"},
        cwd=PACKAGE_ROOT,
    )

    async def talk() -> dict[str, Any]:
        async with stdio_client(params) as streams, ClientSession(*streams) as session:
            return await mcp_session_calls(session)

    check_mcp_results(asyncio.run(talk()))


def test_descriptions_name_the_bad_option_and_the_fix(tmp_path):
    from embed_collections.errors import UsageError

    with pytest.raises(UsageError, match='--describe "Docs" is not NAME=TEXT'):
        load_descriptions(tmp_path, ["Docs"])
    with pytest.raises(UsageError, match='Tool "find" has a description but no such tool'):
        load_descriptions(tmp_path, [], ["find=x"])
    (tmp_path / DESCRIPTIONS_FILE).write_text("{not json")
    with pytest.raises(UsageError, match="not a readable JSON file"):
        load_descriptions(tmp_path)
