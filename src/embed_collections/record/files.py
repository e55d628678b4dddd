"""The files and folders of an output directory, by name: the one place they are spelled."""

from __future__ import annotations

SUMMARY_FILE = "embedding_summary_v6.json"  # the V6.1 summary of the original script
LOG_FILE = "embedding_v6.log"
RUN_RECORD_FILE = "run_config.json"  # what the run was (`record.run_record`)
REPORT_FILE = "report.html"
LOCK_FILE = ".embed-collections.lock"  # one writer per output directory
FINISHED_FILE = "run_finished.json"  # written last by a run that ran to its end (finished.py)
STORE_DIR = "qdrant"  # the embedded store, unless --qdrant-path
CACHE_DIR = "cache"  # unless --cache-dir
CACHE_FILE = "embeddings.sqlite"
EVAL_FILE = "eval_results.json"  # written by `eval` into its output directory
TUNING_FILE = "tuning_results.json"
WEIGHTS_FILE = "weights.json"  # learned ensemble weights, for `run --weights-file`
CORPUS_CHUNK_FILE = "corpus_chunks.json"  # a BEIR corpus as one chunk file, for `eval`
