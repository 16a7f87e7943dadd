"""`make gpu-check` end to end in its CPU dry mode (`--device cpu --small`): the same tests/gpu
and the same benchmark ramp a lent GPU runs, with small models and batches, so the check
cannot rot between the rare runs on a real device."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_gpu_check_dry_mode_runs_end_to_end(tmp_path):
    out = tmp_path / "gpu-check.json"
    done = subprocess.run([sys.executable, "scripts/gpu_check.py", "--device", "cpu", "--small", "--chunks", "160",
                           "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    result = json.loads(out.read_text())
    assert result["ok"] and result["small"] and result["machine"]["device"] == "cpu"
    tests = result["tests"]
    ran = {c["test"].split("::")[1].split("[")[0] for c in tests["cases"] if c["outcome"] == "passed"}
    assert {"test_streaming_worker_end_to_end", "test_multitalker_end_to_end", "test_batch_worker_on_the_device",
            "test_cuda_graphs_on_and_off_give_identical_tokens_as_batches_shrink_and_grow",
            "test_bfloat16_on_the_device_is_within_the_cpu_tolerances",
            "test_every_tensor_of_the_stream_state_lives_on_the_device"} <= ran
    assert tests["failed"] == tests["error"] == 0
    skipped = {c["test"] for c in tests["cases"] if c["outcome"] == "skipped"}
    assert all("cuda_1" in name for name in skipped), skipped  # only the two-GPU test
    ramp = result["bench"]["160"]
    assert ramp["exit_code"] == 0 and ramp["runs"] and ramp["runs"][0]["streams"] == 1
