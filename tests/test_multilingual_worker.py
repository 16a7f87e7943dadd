"""`nvasr serve nemotron` with the tiny multilingual model: concurrent sessions in three languages,
`auto`, a language switch mid-call (raw protocol and through a real Pipecat pipeline with
`STTUpdateSettingsFrame(language=...)`), and refusals of languages it does not serve.

One worker process (module scope) started by the real CLI; real WebSocket clients.
"""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest
import websockets
from conftest import ASSETS, TOKEN, clip_set, to_pcm16
from listen_helpers import WorkerProcess
from test_nemotron_service import audio_frames, word_accuracy

from pipecat.frames.frames import (
    ErrorFrame,
    STTUpdateSettingsFrame,
    TranscriptionFrame,
    VADUserStartedSpeakingFrame,
    VADUserStoppedSpeakingFrame,
)
from pipecat.tests.utils import SleepFrame, run_test
from pipecat.transcriptions.language import Language

from pipecat_nvasr import NEMOTRON_35_LANGUAGES, NemotronSTTService
from pipecat_nvasr.client import ListenClient, listen_url
from pipecat_nvasr.protocol import Closed, Final, Ready

MODEL = ASSETS / "tiny_multilingual.nemo"
GAP = np.zeros(8000, np.float32)


@pytest.fixture(scope="module")
def worker():
    proc = WorkerProcess(MODEL, TOKEN).start()
    try:
        asyncio.run(proc.wait_ready())
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def clips() -> dict[str, list[dict]]:
    by_language: dict[str, list[dict]] = {}
    for clip in clip_set("multilingual"):
        by_language.setdefault(clip["language"], []).append(clip)
    return by_language


async def session(worker, language: str, parts: list, frame: int = 640) -> tuple[Ready, list[Final]]:
    """One session: `parts` are audio arrays sent as PCM, or dicts sent as JSON; then `close`.
    Returns `ready` and every final up to `closed`."""
    async with ListenClient(worker.ws, token=TOKEN, language=language) as client:
        for part in parts:
            if isinstance(part, dict):
                await client.send_json(json.dumps(part))
                continue
            pcm = to_pcm16(part)
            for start in range(0, len(pcm), frame):
                await client.send_audio(pcm[start:start + frame])
        await client.close()
        events = [e async for e in client.events()]
    assert isinstance(events[-1], Closed)
    return client.ready, [e for e in events if isinstance(e, Final)]


def text(finals: list[Final]) -> str:
    return " ".join(f.text for f in finals)


def test_three_languages_in_concurrent_sessions(worker, clips):
    async def main():
        runs = [session(worker, code, [np.concatenate([c["samples"], GAP]) for c in clips[loc][:3]])
                for code, loc in (("en", "en-US"), ("es", "es-ES"), ("de-DE", "de-DE"))]
        return await asyncio.gather(*runs)

    results = asyncio.run(main())
    for (ready, finals), loc in zip(results, ("en-US", "es-ES", "de-DE")):
        assert ready.language == loc and ready.languages == ["en-US", "es-ES", "de-DE", "auto"]
        reference = " ".join(c["text"] for c in clips[loc][:3]).split()
        assert word_accuracy(reference, text(finals).split()) >= 0.8, (loc, text(finals))
        assert finals and all(f.language == loc for f in finals)


def test_auto_mode_tags_each_final_with_the_detected_language(worker, clips):
    parts = [np.concatenate([clips["es-ES"][3]["samples"], GAP]), np.concatenate([clips["de-DE"][3]["samples"], GAP])]
    ready, finals = asyncio.run(session(worker, "auto", parts))
    assert ready.language == "auto"
    assert [f.language for f in finals] == ["es-ES", "de-DE"], finals
    assert "<" not in text(finals)


def test_configure_switches_the_language_mid_stream_in_the_same_session(worker, clips):
    """German after Spanish in one session: the configure between them applies from the audio sent
    after it (the adapter tests show the row's prompt is what the model used for those chunks)."""
    es, de = clips["es-ES"][4], clips["de-DE"][4]
    parts = [np.concatenate([es["samples"], GAP]), {"type": "configure", "language": "de"},
             np.concatenate([de["samples"], GAP])]
    ready, finals = asyncio.run(session(worker, "es", parts))
    assert [f.language for f in finals] == ["es-ES", "de-DE"], finals
    assert word_accuracy(es["text"].split(), finals[0].text.split()) >= 0.75, finals[0].text
    assert word_accuracy(de["text"].split(), finals[1].text.split()) >= 0.75, finals[1].text
    assert ready.session_id and ready.language == "es-ES"  # one session, switched in place


def test_an_unserved_language_is_refused_at_the_handshake_listing_what_is_served(worker):
    async def main():
        url = listen_url(worker.ws, 16000, "fr-FR")
        async with websockets.connect(url, additional_headers={"Authorization": f"Bearer {TOKEN}"}) as ws:
            error = json.loads(await ws.recv())
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await ws.recv()
            return error, closed.value.rcvd.code

    error, code = asyncio.run(main())
    assert error["type"] == "error" and error["code"] == "bad_message" and code == 1003
    assert "fr-FR" in error["message"] and "es-ES" in error["message"] and "auto" in error["message"]


def test_a_configure_with_an_unserved_language_is_an_error_and_the_session_goes_on(worker, clips):
    async def main():
        async with ListenClient(worker.ws, token=TOKEN, language="es-ES") as client:
            await client.send_json(json.dumps({"type": "configure", "language": "fr"}))
            await client.send_audio(to_pcm16(np.concatenate([clips["es-ES"][5]["samples"], GAP])))
            await client.close()
            return [e async for e in client.events()]

    events = asyncio.run(main())
    errors = [e for e in events if getattr(e, "code", None)]
    assert len(errors) == 1 and "fr" in errors[0].message and "de-DE" in errors[0].message
    finals = [e for e in events if isinstance(e, Final)]
    assert finals and all(f.language == "es-ES" for f in finals) and isinstance(events[-1], Closed)


async def test_a_pipecat_language_change_takes_effect_without_a_new_session(worker, clips):
    """STTUpdateSettingsFrame(language=DE) between two turns: one session all along (no drain, no
    reconnect), and the transcripts carry each turn's language on TranscriptionFrame.language."""
    es, de = clips["es-ES"][0], clips["de-DE"][0]

    def turn(clip):
        end = int((clip["speech_end"] + 0.15) * 16000)
        return ([VADUserStartedSpeakingFrame(start_secs=0.2)] + audio_frames(clip["samples"][:end])
                + [VADUserStoppedSpeakingFrame(stop_secs=0.2), SleepFrame(sleep=0.5)])

    stt = NemotronSTTService(url=worker.ws, api_key=TOKEN, languages=NEMOTRON_35_LANGUAGES,
                             settings=NemotronSTTService.Settings(language=Language.ES))
    frames = [SleepFrame(sleep=0.5), *turn(es), STTUpdateSettingsFrame(delta=NemotronSTTService.Settings(
        language=Language.DE)), SleepFrame(sleep=0.2), *turn(de)]
    down, up = await run_test(stt, frames_to_send=frames, start_timeout=10)
    assert not [f for f in up if isinstance(f, ErrorFrame)]
    finals = [f for f in down if isinstance(f, TranscriptionFrame)]
    assert [f.language for f in finals] == [Language.ES_ES, Language.DE_DE], finals
    assert word_accuracy(de["text"].split(), finals[1].text.split()) >= 0.75, finals[1].text
    assert stt.sessions_opened == 1
