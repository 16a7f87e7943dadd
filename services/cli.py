"""`nvasr`: run a worker locally, or stream a file to one.

    nvasr serve nemotron --model nvidia/nemotron-speech-streaming-en-0.6b --device cuda
    nvasr stream speech.wav --url ws://127.0.0.1:8000 --token ...

The CLI only turns flags into configs; the workers live in services/.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import os
import sys
from typing import Optional

STREAMING_WORKERS = ("nemotron", "parakeet-realtime")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def resolve_token(args) -> Optional[str]:
    """The server token: --token, else $NVASR_TOKEN, else a fresh one printed once.

    `--no-auth` opens the server, and only on a loopback address.
    """
    if args.no_auth:
        if not _is_loopback(args.host):
            sys.exit("refusing --no-auth on a non-loopback address: anyone could use this worker")
        return None
    token = args.token or os.environ.get("NVASR_TOKEN")
    if token:
        return token
    from .server.auth import generate_token

    token = generate_token()
    print(f"NVASR token (clients send 'Authorization: Bearer <token>'): {token}", flush=True)
    return token


def _add_server_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--token", help="bearer token clients must send (default: $NVASR_TOKEN or generated)")
    p.add_argument("--no-auth", action="store_true", help="no token (loopback addresses only)")


def _serve_streaming(args) -> None:
    import uvicorn

    from .streaming_worker import StreamingConfig, create_streaming_app

    cfg = StreamingConfig(
        worker=args.worker,
        model=args.model,
        fallback_model=args.fallback_model,
        device=args.device,
        dtype=args.dtype,
        chunk_ms=args.chunk_ms,
        max_sessions=args.max_sessions,
        max_batch=args.max_batch,
        token=resolve_token(args),
    )
    app = create_streaming_app(cfg)
    uvicorn.run(app, host=args.host, port=args.port, log_level="info", ws_max_size=4 * 1024 * 1024)


async def _stream(args) -> int:
    from pipecat_nvasr.client import ListenClient, stream_pcm
    from pipecat_nvasr.protocol import Error, Final, Partial

    from .audio import read_audio

    samples = read_audio(args.file, 16000)
    pcm = (samples.clip(-1, 1) * 32767).astype("<i2").tobytes()
    token = args.token or os.environ.get("NVASR_TOKEN")
    async with ListenClient(args.url, token=token) as client:
        print(f"# {client.ready.model} chunk={client.ready.chunk_ms}ms session={client.ready.session_id}")
        sender = asyncio.create_task(stream_pcm(client, pcm, realtime=not args.fast))
        status = 0
        async for event in client.events():
            if isinstance(event, Partial) and not args.quiet:
                print(f"  … {event.text}", flush=True)
            elif isinstance(event, Final) and event.text:
                flags = " [end of turn]" if event.end_of_turn else ""
                print(f"[{event.start:7.2f}-{event.end:7.2f}] {event.text}{flags}", flush=True)
            elif isinstance(event, Error):
                print(f"error {event.code}: {event.message}", file=sys.stderr)
                status = 1
        await sender
    return status


def _run_stream(args) -> None:
    try:
        sys.exit(asyncio.run(_stream(args)))
    except (ConnectionError, OSError) as exc:
        sys.exit(f"nvasr stream: {exc}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nvasr", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run a worker")
    serve_sub = serve.add_subparsers(dest="worker", required=True)
    for worker in STREAMING_WORKERS:
        p = serve_sub.add_parser(worker, help=f"the {worker} streaming worker")
        p.add_argument("--model", help="Hugging Face id or local .nemo (default: the production model)")
        p.add_argument("--fallback-model", help="local .nemo to use, with a warning, if --model cannot load")
        p.add_argument("--device", default="cuda" if _cuda() else "cpu")
        p.add_argument("--dtype", choices=["float32", "bfloat16", "float16", "float64"])
        p.add_argument("--chunk-ms", type=int, choices=[80, 160, 560, 1120])
        p.add_argument("--max-sessions", type=int, default=256)
        p.add_argument("--max-batch", type=int, default=64)
        _add_server_flags(p)
        p.set_defaults(run=_serve_streaming)

    stream = sub.add_parser("stream", help="stream an audio file to a worker and print transcripts")
    stream.add_argument("file")
    stream.add_argument("--url", default="ws://127.0.0.1:8000")
    stream.add_argument("--token")
    stream.add_argument("--fast", action="store_true", help="send as fast as possible, not in real time")
    stream.add_argument("--quiet", action="store_true", help="finals only")
    stream.set_defaults(run=_run_stream)
    return parser


def _cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


def main(argv: Optional[list[str]] = None) -> None:
    args = build_parser().parse_args(argv)
    args.run(args)


if __name__ == "__main__":
    main()
