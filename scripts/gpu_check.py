"""`make gpu-check`: everything a lent GPU should show, in one command, into one JSON.

    python scripts/gpu_check.py --out gpu-check.json                   # on a GPU (≤ 8 minutes)
    python scripts/gpu_check.py --device cpu --small --out dry.json    # the dry mode CI runs

1. `pytest -m gpu tests/gpu` (every worker end to end, CUDA graphs on/off at batches
   32 → 8 → 1 → 48, bfloat16 vs float32, device placement, cuda:1 with two GPUs);
2. `benchmarks/streaming.py --model random:nemotron-0.6b` ramped at 80 / 160 / 560 ms chunks
   (streams one device keeps in real time).
`--small` swaps in `random:tiny`, batches 3 → 2 → 1 → 4 and a ramp to 2 streams (no host-cost runs): the same code
paths in a couple of minutes on a CPU. The exit status is non-zero if any part failed.
On the device machine, install the wheels of scripts/gpu-wheels.sh first (docs/gpu.md).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def machine(device: str) -> dict:
    import torch

    info = {"device": device, "torch": torch.__version__, "cuda": torch.version.cuda,
            "cuda_available": torch.cuda.is_available(), "gpus": torch.cuda.device_count()}
    if torch.cuda.is_available():
        info["gpu_name"] = torch.cuda.get_device_name(0)
    return info


def run_tests(device: str, small: bool, env: dict) -> dict:
    """pytest -m gpu tests/gpu; per test its outcome and seconds (from pytest's junit XML)."""
    report = Path(tempfile.mkdtemp(prefix="gpu-check-")) / "junit.xml"
    env = dict(env, NVASR_GPU_CHECK_DEVICE=device, NVASR_GPU_CHECK_SMALL="1" if small else "0")
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "gpu", "tests/gpu", "-p", "no:cacheprovider",
                           f"--junitxml={report}"], cwd=ROOT, env=env, capture_output=True, text=True)
    cases = []
    if report.exists():
        for case in ET.parse(report).getroot().iter("testcase"):
            outcome = "passed"
            for tag in ("failure", "error", "skipped"):
                node = case.find(tag)
                if node is not None:
                    outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[tag]
                    detail = (node.get("message") or "")[:300]
                    break
            else:
                detail = ""
            cases.append({"test": f"{case.get('classname')}::{case.get('name')}", "outcome": outcome,
                          "seconds": round(float(case.get("time") or 0), 2), **({"detail": detail} if detail else {})})
    counts = {k: sum(c["outcome"] == k for c in cases) for k in ("passed", "failed", "error", "skipped")}
    return {"exit_code": done.returncode, "seconds": round(time.monotonic() - started, 1), **counts, "cases": cases,
            "output_tail": (done.stdout + done.stderr)[-3000:]}


def run_bench(device: str, small: bool, chunks: list[int], ramp_max: int, env: dict) -> dict:
    """The streams-per-device ramp of benchmarks/streaming.py at each chunk size."""
    model = "random:tiny" if small else "random:nemotron-0.6b"
    out = {"model": model}
    for chunk in chunks:
        path = Path(tempfile.mkdtemp(prefix="gpu-check-")) / f"ramp-{chunk}.json"
        started = time.monotonic()
        done = subprocess.run([sys.executable, "benchmarks/streaming.py", "--model", model, "--device", device,
                               "--chunk-ms", str(chunk), "--decoder-path", "vectorised",
                               "--host-steps", "0" if small else "4", "--threads", "1" if small else "2",
                               "--ramp-max", str(ramp_max), "--json", str(path)],
                              cwd=ROOT, env=env, capture_output=True, text=True)
        entry = {"exit_code": done.returncode, "seconds": round(time.monotonic() - started, 1)}
        if done.returncode == 0 and path.exists():
            result = json.loads(path.read_text())
            entry.update(dtype=result.get("dtype"), host_cost=result.get("host_cost"), **result["ramp"])
        else:
            entry["output_tail"] = (done.stdout + done.stderr)[-2000:]
        out[str(chunk)] = entry
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N, or cpu for the dry mode")
    parser.add_argument("--small", action="store_true", help="small models and batches (the CPU dry mode)")
    parser.add_argument("--chunks", type=int, nargs="+", default=[80, 160, 560])
    parser.add_argument("--ramp-max", type=int, help="largest N of the ramp (default 1024; 2 with --small)")
    parser.add_argument("--skip-bench", action="store_true")
    parser.add_argument("--out", default="gpu-check.json")
    args = parser.parse_args()
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=os.pathsep.join(
        [str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    started = time.monotonic()
    result = {"machine": machine(args.device), "small": args.small}
    result["tests"] = run_tests(args.device, args.small, env)
    print(f"tests/gpu: {result['tests']['passed']} passed, {result['tests']['failed']} failed, "
          f"{result['tests']['error']} errors, {result['tests']['skipped']} skipped "
          f"in {result['tests']['seconds']} s", flush=True)
    for case in result["tests"]["cases"]:
        print(f"  {case['outcome']:>7} {case['seconds']:7.1f} s  {case['test']}", flush=True)
    ok = result["tests"]["exit_code"] == 0
    if not args.skip_bench:
        result["bench"] = run_bench(args.device, args.small, args.chunks, args.ramp_max or (2 if args.small else 1024),
                                    env)
        print(f"ramp ({result['bench']['model']}): chunk ms → streams kept in real time", flush=True)
        for chunk in args.chunks:
            entry = result["bench"][str(chunk)]
            ok &= entry["exit_code"] == 0
            print(f"  {chunk:>5}: {entry.get('max_realtime_streams_measured', 'failed')}"
                  f"  ({entry['seconds']} s)", flush=True)
    result["seconds"] = round(time.monotonic() - started, 1)
    result["ok"] = bool(ok)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out} ({'ok' if ok else 'FAILED'}, {result['seconds']} s)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
