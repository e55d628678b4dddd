"""`serve` on real parts: uvicorn on a loopback port it picked itself, driven with httpx; MCP
over streamable HTTP and over stdio (a `serve --mcp` child) with the SDK's own client; the
CLI and the Python API on the same run, which must all give the same hits."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from helpers import PACKAGE_ROOT, run_cli

import embed_collections as ec
from embed_collections.query.live import LiveRun, default_threads
from embed_collections.query.mcp_tools import build_mcp
from embed_collections.query.server import BackgroundServer, create_app
from embed_collections.query.service import SearchService

CORPUS = {
    "Garden/roses_chunks.json": [
        ("Prune roses in late winter, just above an outward facing bud.", "en"),
        ("Roses need six hours of sun and rich, well drained soil.", "en"),
        ("Rosen brauchen Sonne und lockeren Boden.", "de"),
    ],
    "Garden/trees_chunks.json": [
        ("Apple trees are pruned in winter while they are dormant.", "en"),
        ("Water young trees deeply once a week in their first summer.", "en"),
    ],
    "Kitchen/bread_chunks.json": [
        ("Bake the bread at 220 degrees for thirty minutes until golden.", "en"),
        ("Knead the dough for ten minutes, then let it rise for an hour.", "en"),
        ("Sauerteig braucht Zeit und Wärme.", "de"),
    ],
    "Notes/notes_chunks.json": [
        ("The caterer's invoice carried reference ZX-4411.", "en"),
        ("The orchestra rehearsed the symphony twice before the concert.", "en"),
        ("Our hiking trail climbs through pine forest to a lake.", "en"),
    ],
}
QUERIES = ["How do I prune roses?", "baking bread", "reference ZX-4411", "trees in winter"]


def write_corpus(chunked: Path, corpus: dict[str, list[tuple[str, str]]]) -> Path:
    """Chunk files whose metadata carries a `lang` field to filter on."""
    for relative, rows in corpus.items():
        path = chunked / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        records = [
            {"text": text, "metadata": {"chunk_id": f"{path.stem}-{i}", "lang": lang}}
            for i, (text, lang) in enumerate(rows)
        ]
        path.write_text(json.dumps(records), encoding="utf-8")
    return chunked


def embed_run(chunked: Path, out: Path, models: list[Path], **options: Any) -> Path:
    """A quiet CPU run; torch, since exporting models for the faster runtimes costs seconds."""
    ec.run(
        chunked,
        out,
        models=[str(m) for m in models],
        device="cpu",
        backend="torch",
        quiet=True,
        lease_dir=str(out.parent / "leases"),
        **options,
    )
    return out


def garden_service(root: Path, model: Path) -> SearchService:
    """A one-model run of the Garden collection, served by a started `SearchService`."""
    chunked = write_corpus(root / "Chunked", dict(list(CORPUS.items())[:2]))
    out = embed_run(chunked, root / "out", [model])
    return SearchService(LiveRun(out, poll_seconds=0.2).start())


@dataclass
class Served:
    out: Path
    url: str
    service: SearchService
    client: httpx.Client


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_models):
    """One two-model hybrid run, served over HTTP (with MCP mounted) for the whole module."""
    root = tmp_path_factory.mktemp("serve")
    chunked = write_corpus(root / "Chunked", CORPUS)
    models = [tiny_models["tiny32"], tiny_models["tiny48"]]
    out = embed_run(chunked, root / "out", models, sparse="bm25")
    service = SearchService(LiveRun(out, poll_seconds=0.2).start())
    try:
        with (
            BackgroundServer(create_app(service, build_mcp(service))) as server,
            httpx.Client(base_url=server.url, timeout=60) as client,
        ):
            yield Served(out, server.url, service, client)
    finally:
        service.close()


def api_hits(out: Path, query: str, mode: str | None = None) -> list[tuple]:
    return api_results(out, [(query, mode)])[(query, mode)]


def api_results(out: Path, searches: list[tuple[str, str | None]]) -> dict[tuple, list[tuple]]:
    """Top-10 hits of each (query, mode) through the Python API, models loaded once."""
    results = {}
    with ec.open(out) as opened:
        opened.encoder.load()
        try:
            for query, mode in dict.fromkeys(searches):
                hits = opened.search(query, None, 10, mode)
                results[(query, mode)] = [
                    (h.collection, h.chunk_id, round(h.score, 5)) for h in hits
                ]
        finally:
            opened.encoder.unload()
    return results


def json_hits(hits: list[dict]) -> list[tuple]:
    return [(h["collection"], h["chunk_id"], round(h["score"], 5)) for h in hits]


def test_http_lists_collections_with_counts_and_models(served):
    assert served.client.get("/healthz").json()["status"] == "ok"
    data = served.client.get("/collections").json()
    assert data["collections"] == [
        {"name": "Garden", "points": 5},
        {"name": "Kitchen", "points": 3},
        {"name": "Notes", "points": 3},
    ]
    assert len(data["models"]) == 2 and data["default_mode"] == "hybrid"
    assert served.client.get("/openapi.json").json()["paths"].keys() >= {"/search", "/healthz"}


@pytest.mark.parametrize("mode", ["dense", "sparse", "hybrid"])
def test_http_search_gives_the_python_api_hits(served, mode):
    answer = served.client.post("/search", json={"query": QUERIES[0], "mode": mode}).json()
    assert answer["mode"] == mode
    assert json_hits(answer["hits"]) == api_hits(served.out, QUERIES[0], mode)
    if mode != "sparse":  # BM25 finds the query's words in one collection only
        assert len({hit["collection"] for hit in answer["hits"]}) > 1
    assert all(-1.0 <= hit["score"] <= 1.0 for hit in answer["hits"])  # a cosine, readable


def test_dense_hits_of_several_collections_are_merged_by_cosine(served):
    body = {"query": QUERIES[1], "collections": "Garden,Kitchen", "mode": "dense", "top_k": 8}
    hits = served.client.post("/search", json=body).json()["hits"]
    assert {hit["collection"] for hit in hits} == {"Garden", "Kitchen"}
    scores = [hit["score"] for hit in hits]
    assert scores == sorted(scores, reverse=True)


def test_where_filters_in_the_store_not_after(served):
    wanted = "Garden/roses_chunks.json"
    plain = served.client.post("/search", json={"query": QUERIES[1], "top_k": 3}).json()["hits"]
    assert {hit["source_file"] for hit in plain} != {wanted}  # a post-filter would drop hits
    body = {"query": QUERIES[1], "top_k": 3, "where": {"source_file": wanted}}
    hits = served.client.post("/search", json=body).json()["hits"]
    assert [hit["source_file"] for hit in hits] == [wanted] * 3
    body = {"query": QUERIES[1], "where": {"metadata.lang": "de"}, "mode": "dense"}
    hits = served.client.post("/search", json=body).json()["hits"]
    assert sorted(hit["chunk_id"] for hit in hits) == ["bread_chunks-2", "roses_chunks-2"]


BAD_REQUESTS = [
    ({"query": ""}, 400, "query is empty"),
    ({"query": "x" * 100_000}, 400, "over the limit"),
    ({"query": "a", "top_k": 0}, 400, "top_k is 0"),
    ({"query": "a", "top_k": 100_000}, 400, "top_k is 100000"),
    ({"query": "a", "mode": "fuzzy"}, 400, 'Unknown search mode "fuzzy"'),
    ({"query": "a", "collections": ["Gardn"]}, 404, 'Unknown collection "Gardn". Available'),
    ({"query": "a", "where": {"metadata.lang": ["de"]}}, 400, 'Filter "metadata.lang"'),
    ({"query": "a", "where": "lang=de"}, 422, 'Field "where"'),
    ({"query": "a", "where": {"": "x"}}, 400, "not a payload field name"),
    ({"query": 5}, 422, 'Field "query"'),
    ({"text": "a"}, 422, 'Field "query"'),
    ({"query": "a", "top_k": "ten"}, 422, 'Field "top_k"'),
]


def test_bad_input_answers_4xx_json_naming_the_field_and_the_server_keeps_serving(served):
    for body, status, message in BAD_REQUESTS:
        answer = served.client.post("/search", json=body)
        assert (answer.status_code, answer.headers["content-type"]) == (
            status,
            "application/json",
        ), body
        assert message in answer.json()["error"], body
    broken = served.client.post(
        "/search", content=b'{"query": ', headers={"content-type": "application/json"}
    )
    assert broken.status_code == 422 and "not valid JSON" in broken.json()["error"]
    assert served.client.post("/search", json={"query": "roses"}).status_code == 200


def test_a_query_holding_a_lone_surrogate_is_a_400_naming_it(served):
    # A lone surrogate is valid JSON but no tokenizer can encode it (it was a 500).
    body = b'{"query": "roses \\ud800"}'
    answer = served.client.post(
        "/search", content=body, headers={"content-type": "application/json"}
    )
    assert answer.status_code == 400
    assert answer.json()["error"] == (
        "The query holds a lone surrogate (U+D800 at position 6); send valid Unicode text"
    )
    assert served.client.get("/healthz").status_code == 200


def test_the_served_copy_of_the_store_keeps_its_holes(served):
    """The snapshot a server searches takes no more disk than the run's own store."""

    def disk_bytes(folder: Path) -> int:
        return sum(p.stat().st_blocks * 512 for p in folder.rglob("*") if p.is_file())

    snapshot = served.service.live.state.snapshot_dir
    assert snapshot is not None
    assert disk_bytes(snapshot / "qdrant") <= 1.2 * disk_bytes(served.out / "qdrant")


def test_fifty_concurrent_requests_are_all_answered_correctly_in_batches(served):
    requests = [
        {"query": QUERIES[i % 4], "mode": ("dense", "hybrid")[i % 2], "top_k": 5} for i in range(50)
    ]
    searched = api_results(served.out, [(body["query"], body["mode"]) for body in requests])
    expected = {key: hits[:5] for key, hits in searched.items()}
    batches_before = served.service.batches

    async def send_all() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=served.url, timeout=120) as client:
            return await asyncio.gather(*(client.post("/search", json=b) for b in requests))

    answers = asyncio.run(send_all())
    assert [a.status_code for a in answers] == [200] * 50
    for body, answer in zip(requests, answers):
        assert json_hits(answer.json()["hits"]) == expected[(body["query"], body["mode"])]
    assert served.service.batches - batches_before < 50  # some requests shared a model call


def test_searches_abandoned_by_their_callers_leave_the_pipeline_answering(served):
    """A client that disconnects cancels its awaited search; the batch it was in still answers
    the others, and blocking callers in other threads share the same pipeline."""
    expected = api_hits(served.out, QUERIES[0], "dense")

    async def abandon_some() -> list[dict]:
        tasks = [
            asyncio.create_task(served.service.search(query=QUERIES[i % 4], mode="dense"))
            for i in range(12)
        ]
        await asyncio.sleep(0)  # let them queue
        for task in tasks[::2]:
            task.cancel()
        return [await task for task in tasks[1::2]]

    kept = asyncio.run(abandon_some())
    assert len(kept) == 6 and all(answer["mode"] == "dense" for answer in kept)
    threaded: list[tuple] = []
    workers = [
        threading.Thread(
            target=lambda: threaded.append(
                served.service.search_now(query=QUERIES[0], mode="dense")
            )
        )
        for _ in range(4)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
    assert [[(h.collection, h.chunk_id, round(h.score, 5)) for h in hits]
            for _, hits in threaded] == [expected] * 4  # fmt: skip
    assert served.client.post("/search", json={"query": QUERIES[1]}).status_code == 200


@pytest.mark.slow  # 1,000 requests
def test_a_thousand_mixed_requests_get_no_5xx_and_the_server_keeps_serving(served):
    good = [{"query": q, "mode": m} for q in QUERIES for m in ("dense", "sparse", "hybrid")]
    mixed = [BAD_REQUESTS[i % len(BAD_REQUESTS)][0] if i % 3 == 0 else good[i % len(good)]
             for i in range(1000)]  # fmt: skip

    async def send_all() -> list[int]:
        limits = httpx.Limits(max_connections=32)
        async with httpx.AsyncClient(base_url=served.url, timeout=300, limits=limits) as client:
            answers = await asyncio.gather(*(client.post("/search", json=b) for b in mixed))
        return [answer.status_code for answer in answers]

    statuses = asyncio.run(send_all())
    assert not [s for s in statuses if s >= 500]
    assert statuses.count(200) == sum(1 for i in range(1000) if i % 3)
    assert served.client.get("/healthz").json()["status"] == "ok"


def test_mcp_over_streamable_http_lists_and_searches(served):
    from mcp import ClientSession
    from mcp.client.streamable_http import streamable_http_client

    async def talk() -> tuple[Any, Any, Any]:
        async with (
            streamable_http_client(served.url + "/mcp/") as streams,
            ClientSession(streams[0], streams[1]) as session,
        ):
            await session.initialize()
            tools = await session.list_tools()
            found = await session.call_tool("search", {"query": QUERIES[2]})
            bad = await session.call_tool("search", {"query": "a", "collections": ["Nope"]})
            return tools, found, bad

    tools, found, bad = asyncio.run(talk())
    assert {tool.name for tool in tools.tools} == {"list_collections", "read", "search"}
    assert all(len(tool.description or "") > 80 for tool in tools.tools)
    assert json_hits(found.structured_content["hits"]) == api_hits(served.out, QUERIES[2])
    assert bad.is_error and 'Unknown collection "Nope"' in bad.content[0].text


@pytest.mark.slow  # two children that each load torch (~15 s on a loaded machine)
def test_cli_and_mcp_stdio_give_the_same_top10_as_the_api(served, tmp_path):
    from mcp import ClientSession, StdioServerParameters
    from mcp.client.stdio import stdio_client

    query = QUERIES[3]
    expected = [hit[:2] for hit in api_hits(served.out, query)]
    cli = run_cli(["search", "all", query, "--output-dir", served.out, "--json"], tmp_path)
    assert cli.code == 0, cli.err
    assert [(h["collection"], h["chunk_id"]) for h in json.loads(cli.out)["hits"]] == expected

    params = StdioServerParameters(
        command=sys.executable,
        args=["-c", "from embed_collections.cli.main import main; main()", "serve", "--mcp"]
        + ["-q", "--output-dir", str(served.out)],
        env={"PYTHONPATH": os.environ["PYTHONPATH"], "HF_HUB_OFFLINE": "1"},
        cwd=PACKAGE_ROOT,
    )

    async def talk() -> tuple[Any, Any]:
        async with (
            stdio_client(params) as streams,
            ClientSession(streams[0], streams[1]) as session,
        ):
            await session.initialize()
            listed = await session.call_tool("list_collections", {})
            found = await session.call_tool("search", {"query": query, "top_k": 10})
            return listed, found

    listed, found = asyncio.run(talk())
    names = [c["name"] for c in listed.structured_content["collections"]]
    assert names == ["Garden", "Kitchen", "Notes"]
    hits = found.structured_content["hits"]
    assert [(h["collection"], h["chunk_id"]) for h in hits] == expected


@pytest.mark.slow  # a child that loads torch
def test_serve_command_picks_a_free_port_and_prints_it(served, tmp_path):
    taken = served.url.rsplit(":", 1)[1]
    busy = run_cli(["serve", "--output-dir", served.out, "--port", taken], tmp_path)
    assert busy.code == 2 and f"Cannot listen on 127.0.0.1:{taken}" in busy.err, busy.err
    child = subprocess.Popen(
        [sys.executable, "-c", "from embed_collections.cli.main import main; main()"]
        + ["serve", "--output-dir", str(served.out), "--port", "0", "-q"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        line = child.stdout.readline() if child.stdout else ""
        assert line.startswith("Serving 3 collections of ") and "http://127.0.0.1:" in line
        url = line.split(" on ", 1)[1].split()[0]
        assert httpx.get(url + "/healthz", timeout=60).json()["collections"] == 3
    finally:
        child.send_signal(signal.SIGINT)  # Ctrl-C
        assert child.wait(timeout=60) == 0


@pytest.mark.slow  # two runs
def test_serve_keeps_answering_during_a_run_and_picks_up_the_finished_one(tmp_path, tiny_models):
    chunked = write_corpus(tmp_path / "Chunked", dict(list(CORPUS.items())[:2]))
    out = embed_run(chunked, tmp_path / "out", [tiny_models["tiny32"]])
    service = SearchService(LiveRun(out, poll_seconds=0.05).start())
    try:
        assert service.collections()["collections"] == [{"name": "Garden", "points": 5}]
        write_corpus(chunked, {"Kitchen/bread_chunks.json": CORPUS["Kitchen/bread_chunks.json"]})
        running = threading.Thread(target=embed_run, args=(chunked, out, [tiny_models["tiny32"]]))
        running.start()
        answered = 0
        while running.is_alive():  # the run writes the store the server copied from
            mode, hits = service.search_now(query="roses", top_k=3)
            assert mode == "dense" and len(hits) == 3
            answered += 1
        running.join()
        assert answered > 0
        picked = wait_for(lambda: "Kitchen" in names(service), "the finished run")
        assert picked and service.live.last_error == ""

        # A state that cannot be opened (a shard half written by something else) is skipped.
        (out / "qdrant" / "Broken").mkdir()
        (out / "qdrant" / "Broken" / "segments").write_text("not a shard")
        (out / "qdrant" / "Broken.layout.json").write_text('{"dense": {"": 32}, "sparse": []}')
        os.utime(out / "run_config.json", ns=(1, 1))
        wait_for(lambda: service.live.last_error != "", "the damaged state to be refused")
        assert names(service) == ["Garden", "Kitchen"]
        assert service.search_now(query="bread", collections=["Kitchen"])[1]
    finally:
        service.close()


def names(service: SearchService) -> list[str]:
    return [c["name"] for c in service.collections()["collections"]]


def wait_for(condition, what: str, seconds: float = 60) -> bool:
    """Poll `condition` until it holds, failing after `seconds`."""
    done = threading.Event()
    deadline = threading.Timer(seconds, done.set)
    deadline.start()
    try:
        while not condition():
            if done.wait(0.05):
                pytest.fail(f"timed out waiting for {what}")
        return True
    finally:
        deadline.cancel()


def test_a_served_runtime_model_runs_on_the_threads_given(tmp_path, tiny_models):
    """`serve --threads`: an ONNX Runtime model gets that many threads (1 by default on two
    cores, so the model leaves the event loop a core), and still answers as `search` does."""
    pytest.importorskip("onnxruntime")
    bread = "Kitchen/bread_chunks.json"
    chunked = write_corpus(tmp_path / "Chunked", {bread: CORPUS[bread]})
    out = tmp_path / "out"
    ec.run(chunked, out, models=[str(tiny_models["tiny32"])], device="cpu", backend="onnx",
           quiet=True, lease_dir=str(tmp_path / "leases"))  # fmt: skip
    expected = api_hits(out, "bread", "dense")
    with LiveRun(out, threads=1).start() as live:
        backend = live.state.collections.encoder.loaded[0]
        assert (type(backend).__name__, backend.threads) == ("RuntimeBackend", 1)
        service = SearchService(live)
        hits = service.search_now(query="bread", mode="dense")[1]
        assert [(h.collection, h.chunk_id, round(h.score, 5)) for h in hits] == expected
    assert default_threads() == (1 if len(os.sched_getaffinity(0)) <= 2 else None)


def test_the_listening_socket_says_tcp_so_kept_alive_answers_are_not_delayed():
    """asyncio sets TCP_NODELAY on accepted connections only when the listening socket's proto
    is IPPROTO_TCP; with 0 every answer on a kept-alive connection waited ~40 ms."""
    from embed_collections.query.server import bind_socket

    sock = bind_socket("127.0.0.1", 0)
    try:
        assert sock.proto == socket.IPPROTO_TCP
    finally:
        sock.close()
