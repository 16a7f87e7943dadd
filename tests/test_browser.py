"""The web page and the WebRTC demo in real headless Chromium, a WAV file as the microphone.

A real nemotron worker (uvicorn on 127.0.0.1, the project's trained tiny model) serves the
page; Chromium opens it with `?token=…&autostart=1` and plays held-out speech into its fake
microphone. Screenshots go to test-artifacts/ (or $NVASR_TEST_ARTIFACTS), with the
browser-to-final latencies the page measured.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from browser import Browser, find_chromium
from conftest import ASSETS, TOKEN, LiveServer

pytestmark = pytest.mark.skipif(
    find_chromium() is None,
    reason="Chromium is not installed (apt-get install chromium; scripts/setup.sh does it as root)",
)

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = Path(os.environ.get("NVASR_TEST_ARTIFACTS", ROOT / "test-artifacts"))
SENTENCES = ("h04.wav", "h03.wav")  # "schedule a table at two", "check the price"

FINALS = "[...document.querySelectorAll('#transcript .final')]"


def words(text: str) -> list[str]:
    return re.sub(r"[^a-z' ]", " ", text.lower()).split()


@pytest.fixture(scope="module")
def speech(tmp_path_factory):
    """1 s of silence, two held-out sentences 1.2 s apart, 2 s of silence: the microphone."""
    import soundfile as sf

    manifest = {item["audio"]: item for item in json.loads((ASSETS / "heldout/manifest.json").read_text())}
    silence = lambda seconds: np.zeros(int(16000 * seconds), dtype=np.float32)  # noqa: E731
    parts, reference = [silence(1.0)], []
    for name in SENTENCES:
        samples, rate = sf.read(ASSETS / "heldout" / name, dtype="float32")
        parts += [samples, silence(1.2)]
        reference += words(manifest[name]["text"])
    parts.append(silence(0.8))
    path = tmp_path_factory.mktemp("mic") / "speech.wav"
    sf.write(path, np.concatenate(parts), 16000)
    return path, reference


@pytest.fixture(scope="module")
def worker():
    from services.streaming_worker import StreamingConfig, create_streaming_app

    app = create_streaming_app(StreamingConfig(model=str(ASSETS / "tiny_rnnt.nemo"), token=TOKEN, max_sessions=8))
    with LiveServer(app) as server:
        server.app = app
        yield server


async def finals_of(page) -> list[dict]:
    return await page.evaluate(
        f"{FINALS}.map(e => ({{text: e.textContent, speaker: e.dataset.speaker || null,"
        f" latency_ms: e.dataset.latencyMs ? Number(e.dataset.latencyMs) : null}}))"
    )


async def listen_until_spoken(page, url: str, n_words: int, timeout: float = 25) -> list[dict]:
    """Open the page, wait until the finals hold `n_words` words or the speech has long ended."""
    await page.goto(url)
    await page.wait_for("document.querySelector('#status').dataset.state === 'listening'", timeout=15)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        finals = await finals_of(page)
        if sum(len(words(f["text"])) for f in finals) >= n_words:
            break
        await asyncio.sleep(0.1)
    return await finals_of(page)


def save_latencies(name: str, finals: list[dict]) -> list[float]:
    latencies = [f["latency_ms"] for f in finals if f["latency_ms"] is not None]
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / f"{name}.json").write_text(json.dumps({"finals": finals}, indent=1))
    print(f"\n{name}: browser audio sent → final, ms: {latencies}")
    return latencies


async def test_page_transcribes_the_microphone_and_stop_ends_the_session(worker, speech):
    wav, reference = speech
    with Browser(wav) as browser:
        page = await browser.page()
        finals = await listen_until_spoken(page, f"{worker.http}/?token={TOKEN}&autostart=1", len(reference))
        await page.screenshot(ARTIFACTS / "page.png")

        heard = [w for f in finals for w in words(f["text"])]
        assert heard == reference, finals
        assert len(finals) == len(SENTENCES)  # one final per sentence, each appended
        latencies = save_latencies("page_latency", finals)
        assert len(latencies) == len(finals) and all(0 < ms < 5000 for ms in latencies)
        assert "Last final" in await page.evaluate("document.querySelector('#latency').textContent")
        # The token left the address bar (and history) as soon as the page read it.
        assert TOKEN not in await page.evaluate("location.href")

        engine = worker.app.state.engine
        assert len(engine.sessions) == 1
        await page.evaluate("document.querySelector('#stop').click()")
        await page.wait_for("document.querySelector('#status').dataset.state === 'stopped'", timeout=10)
        deadline = time.monotonic() + 5
        while engine.sessions and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert not engine.sessions, "Stop must close the worker session"
        await page.close()


async def test_short_lived_token_opens_the_page_and_bad_ones_are_refused(worker, speech):
    wav, reference = speech
    async with httpx.AsyncClient(base_url=worker.http, headers={"Authorization": f"Bearer {TOKEN}"}) as http:
        minted = (await http.post("/v1/tokens")).json()
        expiring = (await http.post("/v1/tokens", json={"expires_in": 1})).json()
    assert minted["expires_in"] == 300
    short = minted["token"]
    body, _, signature = short.rpartition(".")
    forged = f"{body}.{'A' * len(signature)}"
    longer = short.replace(f".{body.split('.')[1]}.", f".{int(body.split('.')[1]) + 3600}.")  # expiry edited

    with Browser(wav) as browser:
        page = await browser.page()
        finals = await listen_until_spoken(page, f"{worker.http}/?token={short}&autostart=1", len(reference))
        assert [w for f in finals for w in words(f["text"])] == reference, finals
        save_latencies("page_latency_short_lived_token", finals)

        await asyncio.sleep(max(0.0, 1.1 - 0.0))  # the 1 s token has expired by now
        for bad in (forged, longer, expiring["token"], ""):
            await page.goto(f"{worker.http}/?token={bad}&autostart=1")
            state = await page.wait_for(
                "['error','stopped'].includes(document.querySelector('#status').dataset.state)"
                " && document.querySelector('#status').textContent", timeout=10,
            )
            assert "refused the token" in state, (bad, state)
        await page.screenshot(ARTIFACTS / "page_refused.png")
        await page.close()


async def test_html_in_a_final_is_shown_as_text(tmp_path):
    from services.server.app import create_app
    from scripted_worker import ScriptedBackend

    crafted = '<img src=x onerror="window.__xss=1"><script>window.__xss=2</script> & <b>bold</b>'
    app = create_app(worker="scripted", token=TOKEN, listen=ScriptedBackend(crafted, speaker="spk1"))
    with LiveServer(app) as server, Browser() as browser:
        page = await browser.page()
        await page.goto(f"{server.http}/?token={TOKEN}&autostart=1")
        await page.wait_for(f"{FINALS}.length === 1", timeout=15)
        finals = await finals_of(page)
        assert finals[0]["text"] == "spk1" + crafted  # the speaker label, then the text as typed
        assert finals[0]["speaker"] == "spk1"
        assert await page.evaluate("document.querySelectorAll('#transcript img, #transcript script, #transcript b').length") == 0
        assert await page.evaluate("window.__xss === undefined")
        colour = await page.evaluate("getComputedStyle(document.querySelector('.final .speaker')).color")
        assert colour == "rgb(255, 159, 95)"  # spk1's label colour
        await page.screenshot(tmp_path / "crafted.png")
        await page.close()
