"""A worker shutting down (SIGTERM) drains a Deepgram-protocol session as it drains its own:
the audio received is transcribed, the results and `Metadata` go out, then close 1012 so the
client reconnects elsewhere (a real `nvasr serve` process, a real WebSocket client)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys

import httpx
import numpy as np
import websockets

from conftest import to_pcm16
from listen_helpers import ROOT, free_port


async def test_sigterm_drains_a_deepgram_session_with_its_results_then_1012(trained_rnnt, heldout):
    port = free_port()
    cmd = [sys.executable, "-m", "services.cli", "serve", "nemotron", "--model", str(trained_rnnt), "--device", "cpu",
           "--no-auth", "--port", str(port), "--drain-seconds", "30"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    clip = heldout[4]
    try:
        for _ in range(600):
            try:
                httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except httpx.HTTPError:
                assert proc.poll() is None, "the worker did not start"
                await asyncio.sleep(0.2)
        async with websockets.connect(f"ws://127.0.0.1:{port}/deepgram/v1/listen?punctuate=true") as ws:
            await ws.send(to_pcm16(np.concatenate([clip["samples"], np.zeros(1600, np.float32)])))
            await ws.send('{"type": "KeepAlive"}')  # no Finalize, no CloseStream: the worker ends it
            proc.send_signal(signal.SIGTERM)
            messages = []
            try:
                while True:
                    messages.append(json.loads(await ws.recv()))
            except websockets.ConnectionClosed:
                pass  # 1012 is not a normal close: websockets raises where a 1000 would end the loop
        returncode = await asyncio.get_running_loop().run_in_executor(None, proc.wait, 60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert ws.close_code == 1012
    assert messages[-1]["type"] == "Metadata"
    finals = [m for m in messages if m["type"] == "Results" and m["is_final"]]
    heard = " ".join(m["channel"]["alternatives"][0]["transcript"] for m in finals).lower().split()
    assert set(heard) & set(clip["text"].split()), (heard, clip["text"])
    assert returncode == 0
