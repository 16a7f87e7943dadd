# `make demo` and `make test` work on a fresh machine: the first run builds .venv.
PY := .venv/bin/python
# The demo's worker device: auto (the GPU when torch sees one), cuda, cuda:1 or cpu.
DEVICE ?= auto

.venv/.installed: pyproject.toml scripts/setup.sh scripts/lower-bounds.txt
	bash scripts/setup.sh

.PHONY: demo test bench
demo: .venv/.installed
	$(PY) agents/local_pipeline.py --device $(DEVICE)

test: .venv/.installed
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q

bench: .venv/.installed
	$(PY) benchmarks/streaming.py --json bench-streaming.json
