"""`nvasr serve` and `nvasr stream` as a user runs them: real processes on 127.0.0.1."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import httpx
import pytest
import soundfile as sf
from conftest import conversation, multitalker_models, noise_audio

from services.cli import build_parser, resolve_token

NVASR = [sys.executable, "-m", "services.cli"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_no_auth_is_refused_off_loopback(capsys):
    args = build_parser().parse_args(["serve", "nemotron", "--no-auth", "--host", "0.0.0.0"])
    with pytest.raises(SystemExit, match="non-loopback"):
        resolve_token(args)
    args = build_parser().parse_args(["serve", "nemotron", "--no-auth", "--host", "127.0.0.1"])
    assert resolve_token(args) is None


def test_a_token_is_generated_and_printed_when_none_is_given(capsys, monkeypatch):
    monkeypatch.delenv("NVASR_TOKEN", raising=False)
    args = build_parser().parse_args(["serve", "nemotron"])
    token = resolve_token(args)
    assert token and len(token) >= 24 and token in capsys.readouterr().out


def test_serve_then_stream_a_file(tiny_rnnt, tmp_path):
    port, token = _free_port(), "cli-token"
    wav = tmp_path / "noise.wav"
    sf.write(wav, noise_audio(8, 1.2), 16000)
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    server = subprocess.Popen(
        NVASR + ["serve", "nemotron", "--model", str(tiny_rnnt), "--device", "cpu", "--port", str(port),
                 "--token", token, "--max-sessions", "4"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, server.stdout.read()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", headers={"Authorization": f"Bearer {token}"}).is_success:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "server did not come up"
            time.sleep(0.5)
        # a CPU worker leaves one core to its event loop (torch would take them all)
        health = httpx.get(f"http://127.0.0.1:{port}/health", headers={"Authorization": f"Bearer {token}"}).json()
        assert health["torch_threads"] == max(1, len(os.sched_getaffinity(0)) - 1), health
        done = subprocess.run(
            NVASR + ["stream", str(wav), "--url", f"ws://127.0.0.1:{port}", "--token", token, "--fast"],
            env=env, capture_output=True, text=True, timeout=120,
        )
        assert done.returncode == 0, done.stderr
        lines = done.stdout.splitlines()
        assert lines[0].startswith("# ") and "chunk=160ms" in lines[0]
        assert any(line.startswith("  … ") for line in lines), "no partials printed"
        assert any(line.startswith("[") for line in lines), "no finals printed"
        wrong = subprocess.run(
            NVASR + ["stream", str(wav), "--url", f"ws://127.0.0.1:{port}", "--token", "wrong", "--fast"],
            env=env, capture_output=True, text=True, timeout=120,
        )
        assert wrong.returncode != 0 and "unauthorized" in (wrong.stderr + wrong.stdout)
    finally:
        server.terminate()
        server.wait(timeout=30)


def _wait_healthy(server, port: int, token: str) -> None:
    deadline = time.monotonic() + 120
    while True:
        assert server.poll() is None, server.stdout.read()
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", headers={"Authorization": f"Bearer {token}"}).is_success:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "server did not come up"
        time.sleep(0.5)


def test_serve_multitalker_then_stream_a_conversation(tmp_path):
    """`nvasr serve multitalker` with the bundled tiny models; `nvasr stream` labels the speakers."""
    asr, diar = multitalker_models()
    port, token = _free_port(), "cli-token"
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    server = subprocess.Popen(
        NVASR + ["serve", "multitalker", "--model", asr, "--diar-model", diar, "--device", "cpu",
                 "--chunk-ms", "160", "--port", str(port), "--token", token, "--max-sessions", "2"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        _wait_healthy(server, port, token)
        health = httpx.get(f"http://127.0.0.1:{port}/health", headers={"Authorization": f"Bearer {token}"}).json()
        assert health["max_sessions"] == 2 and health["chunk_ms"] == 160
        url = f"ws://127.0.0.1:{port}"
        # both voices speak in the first 6 s; --fast sends it at once, within the 10 s a session may queue
        _, samples = conversation(0)
        wav = tmp_path / "conversation.wav"
        sf.write(wav, samples[: 6 * 16000], 16000)
        done = subprocess.run(NVASR + ["stream", str(wav), "--url", url, "--token", token, "--fast"],
                              env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        lines = done.stdout.splitlines()
        assert lines[0].startswith("# ") and "chunk=160ms" in lines[0]
        finals = [line for line in lines if line.startswith("[")]
        speakers = {line.split("] ", 1)[1].split("]")[0] + "]" for line in finals}
        assert {"[spk0]", "[spk1]"} <= speakers, lines  # "[  t0-  t1] [spkN] text"
        assert all(line.startswith("  … [spk") for line in lines if line.startswith("  … ")), lines
        wrong = subprocess.run(NVASR + ["stream", str(wav), "--url", url, "--token", "wrong", "--fast"],
                               env=env, capture_output=True, text=True, timeout=120)
        assert wrong.returncode != 0 and "unauthorized" in (wrong.stderr + wrong.stdout)
    finally:
        server.terminate()
        server.wait(timeout=30)
