"""The multitalker worker through the real server (uvicorn on 127.0.0.1, real WebSocket clients),
on the tiny trained models: two-voice conversations come back as speaker-labelled finals whose
per-speaker text meets the cpWER target, concurrent sessions do not mix, a disconnect leaves no
row or slot behind, and bad input hurts only its sender."""

from __future__ import annotations

import asyncio

import httpx
import pytest
import torch
from conftest import ASSETS, TOKEN, LiveServer, conversation, to_pcm16

from pipecat_nvasr.client import ListenClient
from pipecat_nvasr.protocol import Closed, Error, ErrorCode, Final, Partial
from services.streaming_worker import StreamingConfig, create_streaming_app
from tools.multitalker.cpwer import cpwer

CONVERSATIONS = 5  # tests/assets/conversations
ASR = ASSETS / "tiny_multitalker.nemo"
DIAR = ASSETS / "tiny_sortformer.nemo"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
# tests/assets/tiny_multitalker.md: cpWER through this worker's defaults is 24.7 % on held-out sentences
# (`test`) and 42.8 % with held-out voices too (`test_voices`); the 20 % target is NOT met by
# the tiny models. Bounds per set for the few committed conversations: the card's figure + a margin.
CPWER_LIMIT = {"test": 0.30, "test_voices": 0.55}


def pcm(index: int) -> bytes:
    return to_pcm16(conversation(index)[1])


@pytest.fixture(scope="module")
def server():
    from services.adapters.multitalker import MultitalkerAdapter

    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # exact batched == alone (NeMo's Sortformer update)
    try:
        adapter = MultitalkerAdapter(str(ASR), str(DIAR), max_streams=12, dtype="float64")
        # files are sent faster than real time: allow a whole conversation to wait in the buffer
        cfg = StreamingConfig(worker="multitalker", model=str(ASR), max_sessions=12, token=TOKEN,
                              max_buffer_seconds=30)
        app = create_streaming_app(cfg, adapter=adapter)
        with LiveServer(app) as srv:
            srv.app = app
            yield srv
    finally:
        torch.set_default_dtype(old)


async def session(srv, audio: bytes, frame: int = 5120, realtime: bool = False, odd_at: int = -1) -> list:
    """Send the audio in frames (one bad odd-length frame after frame `odd_at`), then `close`."""
    async with ListenClient(srv.ws, token=TOKEN) as client:

        async def send():
            for index, start in enumerate(range(0, len(audio), frame)):
                await client.send_audio(audio[start : start + frame])
                if index == odd_at:
                    await client.send_audio(b"\x00\x01\x02")
                await asyncio.sleep(0.02 if realtime else 0)
            await client.close()

        sender = asyncio.create_task(send())
        events = [e async for e in client.events()]
        await sender
    return events


def key(events) -> list[tuple]:
    return [(type(e).__name__, e.speaker, e.text, e.start, e.end) for e in events if isinstance(e, (Partial, Final))]


def health(srv) -> dict:
    return httpx.get(srv.http + "/health", headers=AUTH).json()


async def test_conversations_come_back_as_speaker_labelled_finals(server):
    errors, words = {}, {}
    for index in range(CONVERSATIONS):
        row = conversation(index)[0]
        events = await session(server, pcm(index))
        assert isinstance(events[-1], Closed)
        finals = [e for e in events if isinstance(e, Final) and e.text]
        assert {f.speaker for f in finals} <= {"spk0", "spk1", "spk2", "spk3"}
        hyp: dict[str, list[str]] = {}
        for f in finals:
            hyp.setdefault(f.speaker, []).append(f.text)
        ref: dict[str, list[str]] = {}
        for start, end, speaker, text in sorted(row["segments"]):
            ref.setdefault(f"ref{speaker}", []).append(text)
        assert len(hyp) == 2, f"{row['audio_filepath']}: speakers {sorted(hyp)}"
        # each speaker's finals arrive in time order; speakers interleave as they take turns
        for label in hyp:
            starts = [f.start for f in finals if f.speaker == label]
            assert starts == sorted(starts)
        e, n = cpwer(ref, hyp)
        errors[row["set"]] = errors.get(row["set"], 0) + e
        words[row["set"]] = words.get(row["set"], 0) + n
    rates = {name: errors[name] / words[name] for name in words}
    assert set(rates) == set(CPWER_LIMIT)
    assert all(rates[name] <= CPWER_LIMIT[name] for name in rates), f"cpWER {rates}"


async def test_eight_concurrent_sessions_do_not_mix(server):
    plans = [pcm(i % CONVERSATIONS)[: (6 + i % 3) * 32000 + 2 * 977 * i] for i in range(8)]
    alone = [key(await session(server, audio)) for audio in plans]
    together = await asyncio.gather(*(session(server, audio, realtime=True) for audio in plans))
    for i, events in enumerate(together):
        assert isinstance(events[-1], Closed)
        assert key(events) == alone[i], f"session {i} differs from its single-session result"
    assert sum(1 for k in alone for e in k if e[0] == "Final") >= 16
    state = health(server)
    assert state["model_streams"] == 0 and state["model_rows"] == 0 and state["sessions"] == 0


async def test_a_disconnect_leaves_no_rows_and_no_slots(server):
    audio = pcm(0)
    clients = []
    for _ in range(3):
        client = await ListenClient(server.ws, token=TOKEN).__aenter__()
        clients.append(client)
        await client.send_audio(audio[: 32000 * 4])  # 4 s: both speakers have spoken
    for _ in range(200):
        state = health(server)
        if state["model_rows"] >= 3 and state["model_streams"] == 3:
            break
        await asyncio.sleep(0.05)
    assert state["model_streams"] == 3 and state["model_rows"] >= 3, state
    for client in clients:
        client._ws.transport.abort()  # the network goes away: no close, no close frame
    for _ in range(200):
        state = health(server)
        if state["sessions"] == 0 and state["model_streams"] == 0 and state["model_rows"] == 0:
            break
        await asyncio.sleep(0.05)
    assert state["sessions"] == 0 and state["model_streams"] == 0 and state["model_rows"] == 0, state
    assert "nvasr_model_rows 0.0" in httpx.get(server.http + "/metrics", headers=AUTH).text
    # and the worker still serves
    events = await session(server, audio[: 32000 * 3])
    assert isinstance(events[-1], Closed) and any(isinstance(e, Final) and e.text for e in events)


async def test_bad_audio_hurts_only_its_sender(server):
    bystander_audio = pcm(2)[: 32000 * 6]
    alone = key(await session(server, bystander_audio))
    bad, bystander = await asyncio.gather(
        session(server, pcm(1)[: 32000 * 5], realtime=True, odd_at=10),
        session(server, bystander_audio, realtime=True),
    )
    errors = [e for e in bad if isinstance(e, Error)]
    assert [e.code for e in errors] == [ErrorCode.BAD_AUDIO]
    assert isinstance(bad[-1], Closed) and any(isinstance(e, Final) and e.text for e in bad)
    assert key(bystander) == alone
    state = health(server)
    assert state["model_streams"] == 0 and state["model_rows"] == 0
