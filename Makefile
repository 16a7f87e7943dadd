# `make demo` and `make test` work on a fresh machine: the first run builds .venv.
PY := .venv/bin/python
# The demo's worker device: auto (the GPU when torch sees one), cuda, cuda:1 or cpu.
DEVICE ?= auto

.venv/.installed: pyproject.toml scripts/setup.sh scripts/lower-bounds.txt
	bash scripts/setup.sh

.PHONY: demo test bench gpu-check
demo: .venv/.installed
	$(PY) agents/local_pipeline.py --device $(DEVICE)

test: .venv/.installed
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q

bench: .venv/.installed
	$(PY) benchmarks/streaming.py --json bench-streaming.json

# Everything a lent GPU should show, into gpu-check.json (docs/gpu.md). No .venv there: the device
# machine's own python3 with the wheels of scripts/gpu-wheels.sh. GPU_CHECK_FLAGS="--device cpu
# --small" is the dry mode CI runs (tests/test_gpu_check.py).
GPU_PY ?= $(if $(wildcard .venv/bin/python),.venv/bin/python,python3)
GPU_CHECK_FLAGS ?=
gpu-check:
	HF_HUB_OFFLINE=1 $(GPU_PY) scripts/gpu_check.py $(GPU_CHECK_FLAGS) --out gpu-check.json
