"""Hostile and broken clients: fuzzed frames, clients that never read, never send, or come in a
flood. The worker answers each with its documented error and nobody else notices."""

from __future__ import annotations

import asyncio
import json

import pytest
from conftest import TOKEN, LiveServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from benchmarks.wsclient import OP_BINARY, OP_TEXT, RawWebSocket, frame
from pipecat_nvasr.protocol import (
    Close,
    Closed,
    CloseCode,
    Configure,
    Error,
    ErrorCode,
    Final,
    Finalize,
    Partial,
    ProtocolError,
    Ready,
    Word,
    dump,
    parse_client_message,
    parse_server_message,
)
from services.adapters.null import NullAdapter
from services.engine.adapter import StepOutput
from services.server.listen import MAX_FRAME_BYTES, ListenSettings
from services.streaming_worker import StreamingConfig, create_streaming_app

AUTH = {"Authorization": f"Bearer {TOKEN}"}
LISTEN = "/v1/listen?sample_rate=16000"

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
client_like = st.fixed_dictionaries(
    {"type": st.sampled_from(["configure", "finalize", "close", "ready", "", "CONFIGURE"]) | st.text(max_size=8)},
    optional={"boost": json_values | st.lists(st.text(max_size=12) | st.dictionaries(
        st.sampled_from(["phrase", "weight", "x"]), json_values, max_size=3), max_size=5)},
)


# --------------------------------------------------------------------- the parsers


@settings(max_examples=400, deadline=None)
@given(st.text(max_size=200) | json_values.map(json.dumps) | client_like.map(json.dumps))
def test_client_parser_only_ever_raises_protocol_errors(text):
    try:
        message = parse_client_message(text)
    except ProtocolError as exc:
        assert exc.code == ErrorCode.BAD_MESSAGE
        return
    assert isinstance(message, (Configure, Finalize, Close))
    if isinstance(message, Configure):
        assert all(p.phrase and 0 < p.weight <= 10 for p in message.boost)


finite = st.floats(min_value=0, max_value=1e5, allow_nan=False)
words = st.builds(Word, st.text(max_size=10), finite, finite, st.floats(0, 1))
server_messages = st.one_of(
    st.builds(Ready, st.text(max_size=10), st.text(max_size=10), st.integers(1, 48000), st.integers(1, 2000)),
    st.builds(Partial, st.text(max_size=30), finite, finite, st.none() | st.sampled_from(["spk0", "spk1"])),
    st.builds(Final, st.text(max_size=30), finite, finite, st.lists(words, max_size=4), st.booleans(), st.booleans(),
              st.booleans(), st.none() | st.sampled_from(["spk0", "spk3"])),
    st.just(Closed()),
    st.builds(Error, st.sampled_from(ErrorCode.ALL), st.text(max_size=30)),
)


@settings(max_examples=300, deadline=None)
@given(server_messages)
def test_server_messages_round_trip(message):
    assert parse_server_message(dump(message)) == message


# --------------------------------------------------------------------- a worker for the socket tests


class ChattyAdapter(NullAdapter):
    """No model, but a partial on every step (growing) and a final every fourth: what a client
    that never reads would have piling up."""

    model_name = "chatty"

    def __init__(self):
        super().__init__(chunk_ms=160)
        self.steps: dict[int, int] = {}
        self.events = 0

    def commit(self, items):
        super().commit(items)
        outputs = []
        for item in items:
            n = self.steps[item.stream_id] = self.steps.get(item.stream_id, 0) + 1
            text = "word " * (n % 4 + 1) * 400  # 2-8 KB: socket buffers fill after ~100
            if n % 4 == 0:
                outputs.append(StepOutput(finals=[Final(text=text, start=0.0, end=n * 0.16)]))
            else:
                outputs.append(StepOutput(partial=Partial(text=text, start=0.0, end=n * 0.16)))
            self.events += 1
        return outputs


def _server(adapter=None, **settings):
    cfg = StreamingConfig(model="null", token=TOKEN, warmup=False, max_sessions=settings.pop("max_sessions", 64),
                          idle_timeout_s=settings.pop("idle_timeout", None), admit_lag_ms=None)  # tested elsewhere
    app = create_streaming_app(cfg, adapter=adapter)
    state = app.state.listen_state
    for key, value in settings.items():
        setattr(state.settings, key, value)
    return app


async def _connect(srv, **kwargs) -> RawWebSocket:
    port = int(srv.http.rsplit(":", 1)[1])
    return await RawWebSocket.connect("127.0.0.1", port, LISTEN, headers=AUTH, **kwargs)


def _messages(ws) -> list[dict]:
    return [json.loads(t) for t in ws.texts]


# --------------------------------------------------------------------- fuzzing /v1/listen

frames = st.one_of(
    st.binary(min_size=0, max_size=700).map(lambda b: ("bin", b)),
    st.sampled_from([("big", b"")]),
    st.text(max_size=40).map(lambda t: ("text", t)),
    client_like.map(lambda d: ("text", json.dumps(d))),
    st.sampled_from([("text", '{"type":"finalize"}'), ("text", '{"type":"configure","boost":["Pipecat"]}')]),
)


def _expected(sequence) -> tuple[list[str], int, int]:
    """What the protocol promises for a frame sequence followed by `close`: the error codes in
    order, the close code, and how many finals answer a finalize."""
    errors, finalizes = [], 0
    for kind, payload in sequence:
        if kind == "big":
            return errors + [ErrorCode.BAD_AUDIO], CloseCode.TOO_BIG, finalizes
        if kind == "bin":
            if len(payload) % 2:
                errors.append(ErrorCode.BAD_AUDIO)
            continue
        try:
            message = parse_client_message(payload)
        except ProtocolError as exc:
            errors.append(exc.code)
            continue
        if isinstance(message, Close):
            return errors, CloseCode.NORMAL, finalizes
        finalizes += isinstance(message, Finalize)
    return errors, CloseCode.NORMAL, finalizes


@pytest.fixture(scope="module")
def fuzz_server():
    app = _server()
    with LiveServer(app) as srv:
        yield srv, app


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(frames, max_size=12))
def test_fuzzed_frame_sequences_get_their_documented_answers(fuzz_server, sequence):
    srv, app = fuzz_server

    async def run():
        bystander = await _connect(srv)
        ws = await _connect(srv)
        for kind, payload in sequence:
            if kind == "big":
                ws.write(frame(OP_BINARY, b"\x00" * (MAX_FRAME_BYTES + 2)))
                break  # the session ends here (1009)
            elif kind == "bin":
                ws.write(frame(OP_BINARY, payload))
            else:
                ws.write(frame(OP_TEXT, payload.encode()))
            bystander.write(frame(OP_BINARY, b"\x01\x00" * 320))
        else:
            ws.send_text('{"type":"close"}')
        code = await asyncio.wait_for(ws.closed, 20)
        bystander.send_text('{"type":"finalize"}')
        bystander.send_text('{"type":"close"}')
        bystander_code = await asyncio.wait_for(bystander.closed, 20)
        return _messages(ws), code, _messages(bystander), bystander_code

    messages, code, others, other_code = asyncio.run(run())
    errors, close_code, finalizes = _expected(sequence)
    assert messages[0]["type"] == "ready"
    assert [m["code"] for m in messages if m["type"] == "error"] == errors
    assert code == close_code
    if close_code == CloseCode.NORMAL:
        assert messages[-1]["type"] == "closed"
        assert sum(1 for m in messages if m.get("from_finalize")) == finalizes
    # the session next door saw none of it
    assert [m["type"] for m in others] == ["ready", "final", "closed"] and other_code == CloseCode.NORMAL
    assert others[1]["from_finalize"] is True


# --------------------------------------------------------------------- slow, idle, flood


async def test_a_client_that_never_reads_is_bounded_then_cut_off():
    adapter = ChattyAdapter()
    app = _server(adapter, max_pending=32, reap_interval=0.05, give_up_send=0.5)
    state = app.state.listen_state
    with LiveServer(app) as srv:
        ws = await _connect(srv, rcvbuf=4096)
        while not ws.texts:  # `ready`
            await asyncio.sleep(0.01)
        ws.transport.pause_reading()  # never read again: the server's sends back up
        audio = frame(OP_BINARY, b"\x01\x00" * 2560)  # one 160 ms chunk per frame
        peak = coalesced = 0
        for _ in range(3000):
            if not state.connections:
                break
            ws.write(audio)
            for conn in state.connections:
                peak = max(peak, conn.session.outbox.qsize())
                coalesced = conn.session.outbox.coalesced
            await asyncio.sleep(0.002)
        for _ in range(200):
            if not state.connections and not app.state.engine.sessions:
                break
            await asyncio.sleep(0.05)
        ws.abort()
        await asyncio.sleep(0.1)  # let the loop actually drop the socket before the server stops
    assert not state.connections and not app.state.engine.sessions, "the slow consumer was never cut off"
    assert state.cut_off["slow_consumer"] == 1
    assert coalesced > 0, "pending partials did not coalesce"
    # the queue never held more than the bound plus what one reaper interval lets in
    assert peak <= 32 + 16, f"{peak} messages waited"
    assert adapter.events > 3 * peak, "the test never produced more than the bound"


async def test_idle_and_half_open_clients_are_closed_with_4408():
    app = _server(idle_timeout=0.4, reap_interval=0.05)
    with LiveServer(app) as srv:
        talker = await _connect(srv)
        talker.write(frame(OP_BINARY, b"\x00\x00" * 1600))  # some audio, then silence on the wire
        silent = await _connect(srv)  # never sends a frame at all
        codes = await asyncio.wait_for(asyncio.gather(talker.closed, silent.closed), 10)
    assert codes == [CloseCode.IDLE, CloseCode.IDLE]
    for ws in (talker, silent):
        error = _messages(ws)[-1]
        assert error["type"] == "error" and error["code"] == ErrorCode.TIMEOUT
    assert app.state.listen_state.cut_off["idle"] == 2 and not app.state.engine.sessions


async def test_a_connection_flood_is_refused_and_open_sessions_carry_on():
    app = _server(max_sessions=8)
    with LiveServer(app) as srv:
        sessions = [await _connect(srv) for _ in range(8)]
        chunk = frame(OP_BINARY, b"\x01\x00" * 1600)
        finalize = frame(OP_TEXT, b'{"type":"finalize"}')

        async def talk(ws, rounds):
            for _ in range(rounds):
                ws.write(chunk + finalize)
                await asyncio.sleep(0.05)

        async def intruder():
            try:
                ws = await _connect(srv)
            except ConnectionError as exc:
                return ("refused", str(exc))
            code = await asyncio.wait_for(ws.closed, 20)
            return (code, [m.get("type") for m in _messages(ws)], _messages(ws)[0].get("code"))

        talking = [asyncio.create_task(talk(ws, 40)) for ws in sessions]
        flood = await asyncio.gather(*(intruder() for _ in range(200)))
        await asyncio.gather(*talking)
        for ws in sessions:
            ws.send_text('{"type":"close"}')
        codes = await asyncio.wait_for(asyncio.gather(*(ws.closed for ws in sessions)), 20)
    assert all(r == (CloseCode.OVERLOADED, ["error"], ErrorCode.OVERLOADED) for r in flood), set(map(str, flood))
    assert codes == [CloseCode.NORMAL] * 8
    for ws in sessions:
        messages = _messages(ws)
        assert not [m for m in messages if m["type"] == "error"]
        assert sum(1 for m in messages if m.get("from_finalize")) == 40 and messages[-1]["type"] == "closed"
    assert app.state.engine.refused["sessions"] == 200
