#!/usr/bin/env bash
# A third-party MCP client against `serve`: the MCP Inspector's command-line mode (npm package
# @modelcontextprotocol/inspector, run with --cli) lists the tools and calls each over streamable HTTP.
#   bench/mcp_inspector.sh OUTPUT_DIR COLLECTION CHUNK_ID [PORT]
# OUTPUT_DIR: a finished run; COLLECTION and CHUNK_ID: one of its chunks (a search hit's).
set -euo pipefail
out=$1 collection=$2 chunk=$3 port=${4:-8765}
inspector=(npx --yes @modelcontextprotocol/inspector --cli "http://127.0.0.1:$port/mcp/" --transport http)
embed-collections serve --output-dir "$out" --port "$port" -q &
server=$!
trap 'kill "$server"' EXIT
for _ in $(seq 120); do curl -sf "127.0.0.1:$port/healthz" >/dev/null && break; sleep 1; done
"${inspector[@]}" --method tools/list | python -c 'import json,sys; print([t["name"] for t in json.load(sys.stdin)["tools"]])'
"${inspector[@]}" --method tools/call --tool-name list_collections | head -c 600; echo
"${inspector[@]}" --method tools/call --tool-name search --tool-arg "query=how to prune" \
    --tool-arg top_k=2 | head -c 800; echo
"${inspector[@]}" --method tools/call --tool-name search --tool-arg "query=how to prune" \
    --tool-arg max_tokens=200 | head -c 800; echo
"${inspector[@]}" --method tools/call --tool-name read --tool-arg "collection=$collection" \
    --tool-arg "chunk_id=$chunk" --tool-arg before=1 --tool-arg after=1 | head -c 800; echo
"${inspector[@]}" --method tools/call --tool-name read --tool-arg "collection=$collection" \
    --tool-arg chunk_id=nope | head -c 400; echo
