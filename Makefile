# Two commands do everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# A CPU torch pinned here keeps the install small; users with GPUs install their own torch first.
TORCH_PIN ?= torch==2.13.0
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: demo test test-all lint bench bench-quick clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q $(TORCH_PIN)
	$(BIN)/pip install -q -e '.[dev]'
	rm -f $(VENV)/.installed-* && touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/embed-collections run --chunked-dir examples/Chunked --output-dir output/demo \
		--models sentence-transformers/all-MiniLM-L6-v2 --sparse bm25 --export
	@echo "Results: output/demo (report: output/demo/report.html, summary: output/demo/embedding_summary_v6.json, log: output/demo/embedding_v6.log, store: output/demo/qdrant)"
	$(BIN)/embed-collections search Docling "How do I convert a PDF to Markdown?" --output-dir output/demo --top-k 3

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-all: $(STAMP)
	$(BIN)/python -m pytest -q -m ''

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy src/embed_collections

# A few collections and tiny models, under two minutes: checks the harness, not the numbers.
bench-quick: $(STAMP)
	$(BIN)/python bench/run_bench.py --quick
	$(BIN)/python bench/backends.py --rounds 1 --threads 2 --limit 64
	$(BIN)/python bench/memory.py --sizes 2000

# The measurements in bench/README.md (about an hour on 2 cores; run on an otherwise idle machine).
bench: $(STAMP)
	$(BIN)/python bench/run_bench.py
	$(BIN)/python bench/backends.py
	$(BIN)/python bench/memory.py
	$(BIN)/python bench/gpu.py

clean:
	rm -rf $(VENV) output
