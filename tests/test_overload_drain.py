"""Overload and shutdown: when the model cannot keep up, newcomers are refused (and the newest
shed) before the sessions already open degrade; SIGTERM lets open sessions finish.

The callers pace their audio in real time (that is the load); the test itself waits on what
happened — answers, refusals, closes — and asserts no durations (benchmarks/ measures them)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
from conftest import TOKEN, LiveServer, to_pcm16
from listen_helpers import free_port, port_open, until

from benchmarks.wsclient import OP_BINARY, OP_TEXT, RawWebSocket, frame
from pipecat_nvasr.protocol import CloseCode, ErrorCode
from services.adapters.null import NullAdapter
from services.streaming_worker import StreamingConfig, create_streaming_app

ROOT = Path(__file__).resolve().parent.parent
AUTH = {"Authorization": f"Bearer {TOKEN}"}
CHUNK = frame(OP_BINARY, b"\x01\x00" * 2560)  # 160 ms
FINALIZE = frame(OP_TEXT, b'{"type":"finalize"}')


class SlowAdapter(NullAdapter):
    """A model that needs 6 ms per stream per step: about 26 real-time streams at 160 ms chunks."""

    def prepare(self, items):
        time.sleep(0.006 * len(items))
        return super().prepare(items)


class Caller:
    """A real-time client: a 160 ms frame every 160 ms, a finalize every fifth frame."""

    def __init__(self):
        self.ws = None
        self.finalizes_sent = 0
        self.finalizes_answered = 0
        self.messages: list[dict] = []
        self.answered = asyncio.Event()  # the first message came: `ready`, or the refusal

    def on_text(self, text: str) -> None:
        message = json.loads(text)
        self.messages.append(message)
        self.answered.set()
        if message.get("from_finalize"):
            self.finalizes_answered += 1

    async def run(self, port: int, stop: asyncio.Event) -> None:
        try:
            self.ws = await RawWebSocket.connect("127.0.0.1", port, "/v1/listen", headers=AUTH, on_text=self.on_text)
        except ConnectionError:
            self.answered.set()
            return
        n = 0
        while not stop.is_set() and self.ws.is_open:
            n += 1
            self.ws.write(CHUNK)
            if n % 5 == 0:
                self.ws.write(FINALIZE)
                self.finalizes_sent += 1
            await asyncio.sleep(0.16)  # a real-time client: this is the load, not a wait

    @property
    def refused(self) -> bool:
        return bool(self.messages) and self.messages[0].get("type") == "error"


async def test_overload_refuses_newcomers_and_sheds_the_newest_not_the_first():
    cfg = StreamingConfig(model="null", token=TOKEN, warmup=False, max_sessions=500, admit_lag_ms=300, shed_lag_s=1.0)
    app = create_streaming_app(cfg, adapter=SlowAdapter(chunk_ms=160))
    with LiveServer(app) as srv:
        port = int(srv.http.rsplit(":", 1)[1])
        engine = app.state.engine
        stop = asyncio.Event()
        first = [Caller() for _ in range(8)]
        tasks = [asyncio.create_task(c.run(port, stop)) for c in first]
        await until(lambda: all(c.finalizes_answered >= 2 for c in first))  # all 8 in real time
        late = []
        for _ in range(60):  # 2.6x what the model can do, each arriving once the last was answered
            late.append(Caller())
            tasks.append(asyncio.create_task(late[-1].run(port, stop)))
            await late[-1].answered.wait()
        # under overload until every first caller had 8 more finalizes answered
        marks = [c.finalizes_answered for c in first]
        await until(lambda: all(c.finalizes_answered >= m + 8 for c, m in zip(first, marks)))
        stop.set()
        await asyncio.gather(*tasks)
        # every finalize a first caller sent is answered (the last may still be on its way)
        await until(lambda: all(c.finalizes_answered == c.finalizes_sent for c in first))
        metrics = httpx.get(srv.http + "/metrics", headers=AUTH).text
        for caller in first + late:
            if caller.ws is not None:
                caller.ws.abort()
        await until(lambda: not engine.sessions)  # the loop dropped the sockets: stop the server

    # the sessions that came first: never an error, every finalize answered
    print("first: finalizes answered", [c.finalizes_answered for c in first])
    print("refused", sum(c.refused for c in late), "shed", app.state.engine.shed, "late errors",
          [next((m["message"][:40] for m in c.messages if m["type"] == "error"), None) for c in late])
    for caller in first:
        assert not [m for m in caller.messages if m["type"] == "error"], caller.messages[-1]
        assert caller.finalizes_answered == caller.finalizes_sent >= 10
    # newcomers: told at once (an error instead of `ready`), or shed later with `overloaded`
    refused = [c for c in late if c.refused]
    assert refused, "nobody was refused"
    for caller in refused:
        assert caller.messages[0]["code"] == ErrorCode.OVERLOADED and caller.ws.close_code == CloseCode.OVERLOADED
    assert engine.refused["capacity"] + engine.refused["lag"] == len(refused)
    assert 'nvasr_sessions_refused_total{reason="capacity"}' in metrics
    kept = [c for c in late if not c.refused and not any(m["type"] == "error" for m in c.messages)]
    assert 8 + len(kept) < 40, "more sessions kept than the model can serve"


async def test_sigterm_drains_open_sessions_then_exits(trained_rnnt, heldout):
    port = free_port()
    cmd = [sys.executable, "-m", "services.cli", "serve", "nemotron", "--model", str(trained_rnnt), "--device", "cpu",
           "--no-auth", "--port", str(port), "--drain-seconds", "30"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        await until(lambda: port_open(port) or proc.poll() is not None, every=0.2)
        assert proc.poll() is None, "the worker did not start"
        clips = heldout[:3]
        sessions = [await RawWebSocket.connect("127.0.0.1", port, "/v1/listen") for _ in clips]
        for ws, clip in zip(sessions, clips):
            audio = np.concatenate([clip["samples"], np.zeros(1600, dtype=np.float32)])
            ws.write(frame(OP_BINARY, to_pcm16(audio)))  # the whole clip; no finalize, no close
        # the worker has the audio: each session's first partial is out (ready + one more)
        await until(lambda: all(len(ws.texts) >= 2 for ws in sessions))
        proc.send_signal(signal.SIGTERM)
        codes = await asyncio.wait_for(asyncio.gather(*(ws.closed for ws in sessions)), 60)
        refused = None
        try:
            late = await RawWebSocket.connect("127.0.0.1", port, "/v1/listen", timeout=5)
            refused = json.loads(late.texts[0])["code"] if late.texts else "accepted"
        except (ConnectionError, OSError, asyncio.TimeoutError) as exc:
            refused = type(exc).__name__
        returncode = await asyncio.get_running_loop().run_in_executor(None, proc.wait, 60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert codes == [CloseCode.SERVICE_RESTART] * len(clips)
    for ws, clip in zip(sessions, clips):
        messages = [json.loads(t) for t in ws.texts]
        assert messages[0]["type"] == "ready" and messages[-1]["type"] == "closed"
        text = " ".join(m["text"] for m in messages if m["type"] == "final").lower()
        spoken = set(clip["text"].lower().split())
        assert spoken & set(text.replace(".", "").replace(",", "").split()), (text, clip["text"])
    assert refused in ("ConnectionRefusedError", "overloaded", "ConnectionError", "OSError"), refused
    assert returncode == 0
