"""The Pipecat services against a real server (scripted backends, no model): one ErrorFrame
per worker error, a reconnect backlog that fits the worker's cap, keepalive on by default.

Pipelines are driven with `LivePipeline`: each test waits on what the pipeline produced,
never on a number of seconds."""

from __future__ import annotations

import numpy as np

from pipecat.frames.frames import InputAudioRawFrame
from pipecat.utils.errors import ErrorCategory

from conftest import TOKEN, LiveServer
from listen_helpers import HoldingProxy, OlderWorkerRelay
from pipecat_nvasr import NemotronSTTService
from pipeline_harness import LivePipeline
from scripted_worker import ScriptedBackend
from services.errors import Overloaded
from services.server.app import create_app
from services.server.listen import ListenSettings

FRAME = 320  # 20 ms at 16 kHz


def frames(seconds: float) -> list[InputAudioRawFrame]:
    pcm = (np.random.default_rng(1).standard_normal(int(seconds * 16000)) * 1000).astype("<i2").tobytes()
    step = FRAME * 2
    return [InputAudioRawFrame(audio=pcm[i : i + step], sample_rate=16000, num_channels=1)
            for i in range(0, len(pcm), step)]


class CappedBackend(ScriptedBackend):
    """Like the engine: a session more than `cap_s` of audio ahead is ended `overloaded`
    (nothing is transcribed here, so everything received is ahead). `fail_first` ends the
    first session at its first audio whatever the cap."""

    def __init__(self, cap_s: float, fail_first: bool = False):
        super().__init__("hello")
        self.cap = int(cap_s * self.sample_rate)
        self.fail_first = fail_first
        self.received: list[int] = []  # per session, in the order they opened

    def open(self):
        session = super().open()
        session.max_buffer_samples = self.cap  # announced in `ready` as max_buffer_s
        session.index = len(self.received)
        self.received.append(0)
        return session

    def append(self, session, samples) -> None:
        self.received[session.index] += len(samples)
        if self.fail_first and session.index == 0:
            raise Overloaded("this session is more than 10 s behind")
        if self.received[session.index] > self.cap:
            raise Overloaded(f"more than {self.cap / self.sample_rate:g} s behind")
        super().append(session, samples)


def service(url: str, **kwargs) -> NemotronSTTService:
    return NemotronSTTService(url=url, api_key=TOKEN, reconnect_backoff_min_wait=0.1,
                              reconnect_backoff_max_wait=0.2, **kwargs)


async def test_one_worker_error_is_one_error_frame():
    """`overloaded` then close 1013 is one outage: one ErrorFrame (the old client pushed a
    second one for the close), then the service reconnects and transcribes."""
    backend = CappedBackend(cap_s=30, fail_first=True)
    with LiveServer(create_app(worker="t", token=TOKEN, listen=backend)) as server:
        stt = service(server.ws)
        async with LivePipeline(stt) as p:
            await p.queue(*frames(0.5))
            await p.until(lambda: stt.sessions_opened == 2)
            await p.queue(*frames(0.5))
            await p.until(lambda: p.finals())
    errors = p.errors()
    assert len(errors) == 1, [e.error for e in errors]
    assert "overloaded" in errors[0].error and errors[0].category == ErrorCategory.RATE_LIMIT
    assert [f.text for f in p.finals()] == ["hello"]


async def test_a_reconnect_backlog_fits_the_workers_cap():
    """5 s kept while the upgrade is held; the worker takes 3 s ahead: the service sends
    2.4 s (80 %), the newest, and the session lives (the old client sent it all and lost it)."""
    backend = CappedBackend(cap_s=3)
    with LiveServer(create_app(worker="t", token=TOKEN, listen=backend)) as server:
        async with HoldingProxy(int(server.ws.rsplit(":", 1)[1]), hold_s=None) as proxy:
            stt = service(proxy.ws)
            async with LivePipeline(stt) as p:
                sent = frames(5.0)
                await p.queue(*sent)
                await p.until(lambda: sum(isinstance(f, InputAudioRawFrame) for f in p.down) == len(sent))
                assert stt._backlog.bytes == len(sent) * FRAME * 2  # all of it kept, nothing sent yet
                proxy.release()
                await p.until(lambda: p.finals())
                await p.queue(*frames(0.2))  # live audio after the catch-up still fits
            # the pipeline ended (EndFrame): `close` flushed everything to the worker
    assert not p.errors(), [e.error for e in p.errors()]
    assert stt.sessions_opened == 1 and len(backend.received) == 1
    assert abs(stt.backlog_seconds_sent - 2.4) <= 0.02
    assert sum(backend.received) == int(2.4 * 16000) + int(0.2 * 16000)


async def test_keepalive_is_on_by_default_and_holds_a_muted_session():
    """A worker that cuts silent clients after 1.5 s; the service, muted (no audio) for
    several keepalive periods, keeps its one session. The old default had no keepalive."""
    settings = ListenSettings(idle_timeout=1.5, reap_interval=0.1)
    backend = CappedBackend(cap_s=30)
    with LiveServer(create_app(worker="t", token=TOKEN, listen=backend, listen_settings=settings)) as server:
        stt = service(server.ws)
        async with LivePipeline(stt) as p:
            await p.queue(*frames(0.3))
            await p.until(lambda: p.finals())
            assert stt.worker_session.keepalive and stt.worker_session.idle_timeout == 1.5
            await p.until(lambda: stt.keepalives_sent >= 8)  # 8 x 0.5 s: 2.7 idle timeouts without audio
            await p.queue(*frames(0.3))
    assert not p.errors(), [e.error for e in p.errors()]
    assert stt.sessions_opened == 1 and sum(backend.received) == int(0.6 * 16000)


async def test_keepalive_to_an_older_worker_is_silence():
    """A worker whose `ready` predates `keepalive` gets 100 ms of silence instead (any frame
    resets its idle timer; an unknown message type would be a `bad_message`)."""
    settings = ListenSettings(idle_timeout=1.5, reap_interval=0.1)
    backend = CappedBackend(cap_s=30)
    with LiveServer(create_app(worker="t", token=TOKEN, listen=backend, listen_settings=settings)) as server:
        async with OlderWorkerRelay(server.ws) as relay:
            stt = service(relay.ws, keepalive_timeout=0.4, keepalive_interval=0.2)
            async with LivePipeline(stt) as p:
                await p.queue(*frames(0.3))
                await p.until(lambda: p.finals())
                assert not stt.worker_session.keepalive and stt.worker_session.idle_timeout is None
                await p.until(lambda: stt.keepalives_sent >= 8)  # well past the idle timeout
    assert not p.errors(), [e.error for e in p.errors()]
    assert stt.sessions_opened == 1
    assert sum(backend.received) >= int(0.3 * 16000) + 8 * 1600  # the audio, then silence
