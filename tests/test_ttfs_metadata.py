"""Each service tells Pipecat its measured TTFS p99 (issue 19, item 4).

Pipecat 1.14 broadcasts `STTMetadataFrame(ttfs_p99_latency=...)` at pipeline start; the user
aggregator waits that long after the user stops for the transcript (`llm_response_universal`).
The figure must be the one `benchmarks/ttfs.py` measured (benchmarks/results/ttfs-160.json: the
service's default 160 ms chunk, the worker's default finalize mode), not an estimate.
"""

from __future__ import annotations

import json
import math

import pytest

from pipecat.frames.frames import STTMetadataFrame
from pipecat.tests.utils import SleepFrame, run_test

from pipecat_nvasr import MultitalkerSTTService, NemotronSTTService
from pipecat_nvasr.multitalker import MULTITALKER_TTFS_P99
from pipecat_nvasr.nemotron import NEMOTRON_TTFS_P99

from conftest import TOKEN, LiveServer
from scripted_worker import ScriptedBackend

from benchmarks.ttfs import RESULTS, measured_ttfs_p99


@pytest.fixture(scope="module")
def worker():
    from services.server.app import create_app

    with LiveServer(create_app(worker="scripted", token=TOKEN, listen=ScriptedBackend("hello"))) as server:
        yield server


@pytest.mark.parametrize("service, cls, constant", [
    ("nemotron", NemotronSTTService, NEMOTRON_TTFS_P99),
    ("multitalker", MultitalkerSTTService, MULTITALKER_TTFS_P99),
])
async def test_service_reports_the_benchmarked_ttfs_p99(worker, service, cls, constant):
    measured = measured_ttfs_p99(json.loads(RESULTS.read_text()), service)
    assert constant == math.ceil(measured * 100) / 100, f"{service}: benchmark says p99 {measured:.3f} s"
    down, _ = await run_test(cls(url=worker.ws, api_key=TOKEN), frames_to_send=[SleepFrame(sleep=0.1)],
                             start_timeout=10)
    [metadata] = [f for f in down if isinstance(f, STTMetadataFrame)]
    assert metadata.ttfs_p99_latency == constant
