"""The Parakeet batch worker: dynamic batching, audio formats, the OpenAI-compatible API.

Real uvicorn server, real HTTP clients (httpx, the `openai` package), real NeMo model
(tiny, float64 so a batched row equals the same utterance alone, token for token).
"""

from __future__ import annotations

import asyncio

import httpx
import numpy as np
import pytest

from services.batch.batcher import plan_batches
from services.batch_worker import BatchConfig, create_batch_app
from batch_helpers import batch_model, encode, heldout, model_is_accurate, tdt_model, word_accuracy
from conftest import TOKEN, LiveServer

MAX_BATCH = 16
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def model():
    return batch_model()


@pytest.fixture(scope="module")
def server(model):
    cfg = BatchConfig(token=TOKEN, max_batch=MAX_BATCH, max_wait_ms=30, max_upload_bytes=2_000_000, warmup=False)
    app = create_batch_app(cfg, model=model)
    with LiveServer(app) as live:
        live.app = app
        yield live


def clips(n: int) -> list[np.ndarray]:
    """n different utterances: held-out speech cut to different lengths (0.6–2.4 s)."""
    items = heldout()
    out = []
    for i in range(n):
        samples = items[i % len(items)]["samples"]
        length = min(len(samples), int(16000 * (0.6 + 1.8 * ((i * 7) % n) / n)))
        out.append(samples[:length])
    return out


def test_plan_batches_groups_by_length_and_respects_limits():
    lengths = [5, 100, 7, 98, 6, 99, 50]
    batches = plan_batches(lengths, max_batch=3, max_padded=10_000)
    assert batches == [[0, 4, 2], [6, 3, 5], [1]]
    assert plan_batches([10, 10, 10], max_batch=8, max_padded=25) == [[0, 1], [2]]


async def test_a_failing_item_fails_alone_and_batches_stay_within_the_limit():
    """The batcher's own contract, with a plain function standing in for the model."""
    from services.batch.batcher import DynamicBatcher

    def transcribe(audios):
        if any(len(a) == 13 for a in audios):
            raise ValueError("this item breaks the model")
        return [len(a) for a in audios]

    batcher = DynamicBatcher(transcribe, max_batch=8, max_wait_ms=20)
    await batcher.start()
    try:
        lengths = [100 + i for i in range(40)] + [13]
        results = await asyncio.gather(*(batcher.transcribe(np.zeros(n)) for n in lengths), return_exceptions=True)
    finally:
        await batcher.stop()
    assert results[:40] == lengths[:40]
    assert isinstance(results[40], ValueError)
    assert max(batcher.batch_sizes) <= 8 and sum(batcher.batch_sizes) == 40


def test_batched_rows_equal_each_utterance_alone(model):
    audios = clips(12)
    batched = model.transcribe(audios)
    alone = [model.transcribe([a])[0] for a in audios]
    assert [b.tokens for b in batched] == [a.tokens for a in alone]
    assert any(a.tokens for a in alone), "the model emitted nothing: the comparison would be empty"


def test_tdt_batched_rows_equal_each_utterance_alone(tmp_path):
    """Parakeet's architecture (TDT, full context, per_feature normalisation): padding changes nothing."""
    tdt = tdt_model(str(tmp_path))
    audios = clips(10)
    batched = tdt.transcribe(audios)
    alone = [tdt.transcribe([a])[0] for a in audios]
    assert [b.tokens for b in batched] == [a.tokens for a in alone]
    assert any(a.tokens for a in alone)
    assert all(0 <= w.start <= w.end <= t.duration for t in alone for w in t.words)
    assert all(0 < w.confidence <= 1 for t in alone for w in t.words)


async def test_200_concurrent_requests_equal_alone_and_corrupt_file_fails_alone(server, model):
    distinct = clips(40)
    reference = [model.transcribe([a])[0].text for a in distinct]
    batcher = server.app.state.batcher
    batcher.batch_sizes.clear()
    wavs = [encode(a, 16000, "wav") for a in distinct]

    async with httpx.AsyncClient(base_url=server.http, headers=AUTH, timeout=300) as client:

        async def send(body: bytes, name: str = "a.wav"):
            files = {"file": (name, body, "audio/wav")}
            return await client.post("/v1/audio/transcriptions", files=files, data={"model": "parakeet"})

        requests = [send(wavs[i % 40]) for i in range(200)]
        requests.insert(77, send(b"RIFF\x00\x00garbage, not audio at all" * 10, "bad.wav"))
        responses = await asyncio.gather(*requests)

    bad = responses.pop(77)
    assert bad.status_code == 415, bad.text
    assert "audio" in bad.json()["error"]["message"]
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses if r.status_code != 200][:3]
    assert [r.json()["text"] for r in responses] == [reference[i % 40] for i in range(200)]
    assert max(batcher.batch_sizes) <= MAX_BATCH
    assert sum(batcher.batch_sizes) == 200
    assert max(batcher.batch_sizes) > 1, "concurrent requests were never batched"


@pytest.mark.parametrize("fmt", ["wav", "flac", "ogg", "mp3"])
def test_formats_rates_and_channels_give_the_same_text(server, model, fmt):
    """Every container/rate/channel count decodes to the same speech (the trained model: same words)."""
    item = heldout()[2]
    duration = len(item["samples"]) / 16000
    reference = model.transcribe([item["samples"]])[0].text
    accurate = model_is_accurate()
    with httpx.Client(base_url=server.http, headers=AUTH, timeout=120) as client:
        for rate in (8000, 16000, 44100, 48000):
            for channels in (1, 2):
                body = encode(item["samples"], rate, fmt, channels)
                data = {"response_format": "verbose_json"}
                r = client.post("/v1/audio/transcriptions", files={"file": (f"x.{fmt}", body)}, data=data)
                assert r.status_code == 200, r.text
                assert abs(r.json()["duration"] - duration) < 0.06, (fmt, rate, channels)  # MP3 pads a frame
                text = r.json()["text"]
                if rate == 16000 and channels == 1 and fmt in ("wav", "flac"):  # the same samples
                    assert text == reference, (fmt, rate, channels)
                elif accurate and rate > 8000:  # lossy codecs and resampling change the signal a little
                    assert word_accuracy(item["text"], text) >= 0.75, (fmt, rate, channels, text)
                # 8 kHz keeps only 4 kHz of band: the tiny model, trained on wide-band speech only,
                # is not asked for the words there (decoding and duration are still checked)


@pytest.mark.parametrize("fmt", ["opus", "webm"])
def test_opus_in_ogg_and_webm_decode_through_pyav(server, model, fmt):
    item = heldout()[2]
    with httpx.Client(base_url=server.http, headers=AUTH, timeout=120) as client:
        r = client.post("/v1/audio/transcriptions", files={"file": (f"x.{fmt}", encode(item["samples"], 48000, fmt))})
    assert r.status_code == 200, r.text
    if model_is_accurate():
        assert word_accuracy(item["text"], r.json()["text"]) >= 0.75


def test_openai_client_gets_the_transcript(server, model):
    import openai

    item = heldout()[0]
    expected = model.transcribe([item["samples"]])[0]
    client = openai.OpenAI(base_url=server.http + "/v1", api_key=TOKEN, max_retries=0)
    wav = encode(item["samples"], 16000, "wav")

    result = client.audio.transcriptions.create(model="parakeet", file=("speech.wav", wav))
    assert result.text == expected.text
    if model_is_accurate():
        assert word_accuracy(item["text"], result.text) >= 0.75, result.text

    verbose = client.audio.transcriptions.create(
        model="parakeet", file=("speech.wav", wav), response_format="verbose_json",
        timestamp_granularities=["word", "segment"], language="en",
    )
    assert verbose.text == expected.text and verbose.language == "english"
    assert abs(verbose.duration - len(item["samples"]) / 16000) < 0.01
    assert [w.word for w in verbose.words] == [w.word for w in expected.words]
    assert all(0 <= w.start <= w.end <= verbose.duration + 0.1 for w in verbose.words)

    srt = client.audio.transcriptions.create(model="parakeet", file=("speech.wav", wav), response_format="srt")
    vtt = client.audio.transcriptions.create(model="parakeet", file=("speech.wav", wav), response_format="vtt")
    text = client.audio.transcriptions.create(model="parakeet", file=("speech.wav", wav), response_format="text")
    assert text.strip() == expected.text
    if expected.text:
        assert srt.startswith("1\n00:00:") and " --> " in srt and expected.segments[0].text in srt
        assert vtt.startswith("WEBVTT\n\n00:00:") and expected.segments[0].text in vtt


def test_bad_requests_get_clear_4xx(server):
    wav = encode(heldout()[0]["samples"], 16000, "wav")
    with httpx.Client(base_url=server.http, timeout=60) as client:
        assert client.post("/v1/audio/transcriptions", files={"file": ("a.wav", wav)}).status_code == 401
        client.headers.update(AUTH)
        empty = client.post("/v1/audio/transcriptions", files={"file": ("a.wav", b"")})
        assert empty.status_code == 400 and "empty" in empty.json()["error"]["message"]
        big = client.post("/v1/audio/transcriptions", files={"file": ("a.wav", b"\0" * 2_030_000)})
        assert big.status_code == 413 and "larger" in big.json()["error"]["message"]  # by the handler
        huge = client.post("/v1/audio/transcriptions", files={"file": ("a.wav", b"\0" * 8_000_000)})
        assert huge.status_code == 413  # by Content-Length, before the body is read
        fmt = client.post("/v1/audio/transcriptions", files={"file": ("a.wav", wav)}, data={"response_format": "xml"})
        assert fmt.status_code == 400 and "response_format" in fmt.json()["error"]["message"]
        ok = client.post("/v1/audio/transcriptions", files={"file": ("a.wav", wav)})
        assert ok.status_code == 200
        health = client.get("/health").json()
        assert health["worker"] == "parakeet" and health["max_batch"] == MAX_BATCH
        metrics = client.get("/metrics").text
        assert 'nvasr_transcription_requests_total{status="413"}' in metrics
        assert "nvasr_batch_size_bucket" in metrics


def test_cli_transcribe_writes_one_file_per_input(server, model, tmp_path):
    import subprocess
    import sys

    items = heldout()[:3]
    inputs = []
    for i, item in enumerate(items):
        path = tmp_path / f"in{i}.{['wav', 'flac', 'ogg'][i]}"
        path.write_bytes(encode(item["samples"], 16000, path.suffix[1:]))
        inputs.append(path)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "services.cli", "transcribe", *map(str, inputs), "--url", server.http,
           "--token", TOKEN, "--format", "srt", "--output-dir", str(out), "--no-progress"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in out.iterdir()) == ["in0.srt", "in1.srt", "in2.srt"]
    expected = model.transcribe([items[0]["samples"]])[0]
    if expected.text:
        assert expected.segments[0].text in (out / "in0.srt").read_text()
    cmd[cmd.index("srt")] = "txt"
    cmd.remove("--output-dir"), cmd.remove(str(out))
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.count("\n") == 3, done.stderr


def test_modal_parakeet_class_serves_the_batch_app(tmp_path, monkeypatch):
    """modal_deploy imports offline; the Parakeet class's hooks + ASGI app run in-process on CPU."""
    import importlib
    import sys
    import warnings

    from services.tiny_model import save_tiny_model

    nemo = save_tiny_model(tmp_path / "tiny.nemo", tmp_path, seed=1)
    monkeypatch.setenv("NVASR_PARAKEET_MODEL", str(nemo))
    monkeypatch.setenv("NVASR_DEVICE", "cpu")
    monkeypatch.setenv("NVASR_TOKEN", TOKEN)
    sys.modules.pop("modal_deploy", None)
    try:
        deploy = importlib.import_module("modal_deploy")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            functions = deploy.app.registered_functions
        assert functions["Parakeet.*"]._spec_.gpus == deploy.GPU
        assert not functions["ParakeetSegmenter.*"]._spec_.gpus
        assert deploy.PARAKEET_MAX_BATCH == 128
        assert set(deploy.Parakeet._get_partial_functions()) >= {"load", "serve", "transcribe", "web"}
        asgi = deploy.Parakeet().web.local()
        with LiveServer(asgi) as live, httpx.Client(base_url=live.http, headers=AUTH, timeout=60) as client:
            wav = encode(heldout()[0]["samples"][:16000], 16000, "wav")
            r = client.post("/v1/audio/transcriptions", files={"file": ("a.wav", wav)}, data={"response_format": "text"})
            assert r.status_code == 200
    finally:
        sys.modules.pop("modal_deploy", None)


async def test_held_out_speech_comes_back_as_the_right_words(server):
    """Real words through the HTTP API, concurrently: the trained model's held-out accuracy."""
    items = heldout()
    async with httpx.AsyncClient(base_url=server.http, headers=AUTH, timeout=120) as client:
        replies = await asyncio.gather(*(
            client.post("/v1/audio/transcriptions", files={"file": ("h.wav", encode(i["samples"], 16000, "wav"))})
            for i in items
        ))
    assert all(r.status_code == 200 for r in replies)
    scores = [word_accuracy(i["text"], r.json()["text"]) for i, r in zip(items, replies)]
    assert sum(scores) / len(scores) >= 0.8, [r.json()["text"] for r in replies]
