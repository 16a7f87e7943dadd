#!/usr/bin/env bash
# Wheels the device machine lacks, for `make gpu-check` there (docs/gpu.md "On a lent device").
#
# The device image has Python 3.12, torch + CUDA, Triton, numpy, scipy, pandas, transformers,
# lightning-utilities, httpx, pytest, ... but no NeMo, lhotse, hydra, FastAPI, uvicorn,
# websockets, soundfile, and no network. This fetches, HERE, exactly what the workers, tests/gpu
# and benchmarks/streaming.py import that the image lacks (found by importing every worker and
# listing sys.modules, minus the image's package list in the device README's KINDS.md), for
# cp312 manylinux x86_64, into .whl/ (git-ignored; ≤ 60 MiB, checked below). There:
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
#       --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
#   make gpu-check
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${WHEEL_DIR:-.whl}
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
mkdir -p "$OUT"

# binary or universal wheels, at the versions this project is tested with (pyproject.toml, .venv)
WHEELS=(
  nemo-toolkit==3.0.0 lhotse==1.33.0 hydra-core==1.3.2 omegaconf==2.3.0 lightning==2.4.0
  librosa==0.11.0 kaldialign==0.12.0 datasets==5.2.0 webdataset==1.0.2 braceexpand==0.1.7
  nv-one-logger-core==2.3.1 nv-one-logger-training-telemetry==2.3.1
  nv-one-logger-pytorch-lightning-integration==2.3.1 overrides==7.7.0 strenum
  opentelemetry-api==1.45.2 opentelemetry-sdk opentelemetry-semantic-conventions opentelemetry-proto
  opentelemetry-exporter-otlp-proto-common opentelemetry-exporter-otlp-proto-http
  googleapis-common-protos==1.76.0
  cytoolz==1.2.0 dill==0.4.1 multiprocess==0.70.19 decorator==5.3.1 pooch==1.9.0 platformdirs==4.14.9
  toml==0.10.2 truststore==0.10.5 cffi==2.1.1 soundfile==0.13.1
  fastapi==0.165.0 starlette==1.10.0 pydantic==2.14.4 pydantic-core==2.50.5 pydantic-extra-types==2.11.1
  annotated-types==0.8.0 typing-inspection==0.4.5 email-validator==2.4.0 python-multipart==0.0.34
  uvicorn==0.54.0 websockets==17.4 sniffio==1.3.1
)
# published as source only: built here into pure-Python wheels
SOURCES=(antlr4-python3-runtime==4.9.3 intervaltree==3.2.1)

PLATFORMS=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64 \
         manylinux_2_34_x86_64 manylinux_2_31_x86_64 manylinux_2_24_x86_64; do PLATFORMS+=(--platform "$p"); done
# versions without a pin: whatever matches opentelemetry-api's release
OTEL=$("$PY" -c "import importlib.metadata as m; print(m.version('opentelemetry-sdk'))" 2>/dev/null || echo "")
args=()
for w in "${WHEELS[@]}"; do
  case "$w" in
    opentelemetry-sdk|opentelemetry-proto|opentelemetry-exporter-otlp-proto-common|opentelemetry-exporter-otlp-proto-http)
      args+=("$w${OTEL:+==$OTEL}") ;;
    opentelemetry-semantic-conventions)
      v=$("$PY" -c "import importlib.metadata as m; print(m.version('$w'))" 2>/dev/null || echo ""); args+=("$w${v:+==$v}") ;;
    strenum) v=$("$PY" -c "import importlib.metadata as m; print(m.version('StrEnum'))" 2>/dev/null || echo ""); args+=("StrEnum${v:+==$v}") ;;
    *) args+=("$w") ;;
  esac
done
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${PLATFORMS[@]}" -d "$OUT" "${args[@]}"
"$PY" -m pip wheel -q --no-deps -w "$OUT" "${SOURCES[@]}"

size=$(du -sm "$OUT" | cut -f1)
echo "$(ls "$OUT"/*.whl | wc -l) wheels, ${size} MiB in $OUT"
if [ "$size" -gt 60 ]; then echo "over the 60 MiB budget" >&2; exit 1; fi
