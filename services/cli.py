"""`nvasr`: run a worker locally, or stream a file to one.

    nvasr serve nemotron --model nvidia/nemotron-speech-streaming-en-0.6b --device cuda
    nvasr serve nemotron --model nvidia/nemotron-3.5-asr-streaming-0.6b --device cuda   # 40 languages
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

STREAMING_WORKERS = ("nemotron", "parakeet-realtime", "multitalker")
DEVICE_HELP = "auto (the first GPU torch sees, else the CPU), cpu, cuda or cuda:N"


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


def streaming_config(args):
    """`nvasr serve <streaming worker>` flags → the worker's StreamingConfig."""
    from .streaming_worker import StreamingConfig

    return StreamingConfig(
        worker=args.worker,
        model=args.model,
        fallback_model=args.fallback_model,
        diar_model=getattr(args, "diar_model", None),
        diar_fallback_model=getattr(args, "diar_fallback_model", None),
        device=args.device,
        dtype=args.dtype,
        chunk_ms=args.chunk_ms,
        finalize=args.finalize,
        finalize_wait_ms=args.finalize_wait_ms,
        max_sessions=args.max_sessions,
        max_batch=args.max_batch,
        admit_lag_ms=args.admit_lag_ms if args.admit_lag_ms > 0 else None,
        shed_lag_s=None if args.admit_lag_ms <= 0 else 2.0,
        idle_timeout_s=args.idle_timeout if args.idle_timeout > 0 else None,
        token=resolve_token(args),
        max_utterance_s=args.max_utterance_s if args.max_utterance_s > 0 else None,
        endpoint_silence_ms=getattr(args, "endpoint_silence_ms", None),
        cuda_graphs=args.cuda_graphs,
        torch_threads=args.torch_threads,
        **({"speaker_threshold": args.speaker_threshold, "speaker_silence_ms": args.speaker_silence_ms,
            "latency": args.latency, "diar_left_context": args.diar_left_context,
            "diar_right_context": args.diar_right_context, "diar_fifo": args.diar_fifo, "diar_cache": args.diar_cache,
            "diar_update_period": args.diar_update_period, "speaker_instances": args.speaker_instances,
            "speaker_targets": args.speaker_targets}
           if args.worker == "multitalker" else {}),
    )


def _serve_streaming(args) -> None:
    from .server import drain
    from .streaming_worker import create_streaming_app

    cfg = streaming_config(args)
    app = create_streaming_app(cfg)
    # permessage-deflate off: PCM barely compresses (~0.9) and inflating every frame costs the
    # worker 5-30 us per message (benchmarks/ingest.py --deflate); the client's deflate costs more
    drain.serve(app, args.host, args.port, args.drain_seconds, log_level="info", ws=args.ws,
                ws_max_size=4 * 1024 * 1024, ws_per_message_deflate=args.ws_deflate)


def _speaker(event) -> str:
    """`[spk0] ` before a multitalker worker's transcripts; nothing for the others."""
    return f"[{event.speaker}] " if event.speaker else ""


async def _stream(args) -> int:
    from pipecat_nvasr.client import ListenClient, stream_pcm
    from pipecat_nvasr.protocol import Error, Final, Partial

    from .audio import read_audio

    samples = read_audio(args.file, 16000)
    pcm = (samples.clip(-1, 1) * 32767).astype("<i2").tobytes()
    token = args.token or os.environ.get("NVASR_TOKEN")
    async with ListenClient(args.url, token=token, language=args.language) as client:
        print(f"# {client.ready.model} chunk={client.ready.chunk_ms}ms session={client.ready.session_id}")
        sender = asyncio.create_task(stream_pcm(client, pcm, realtime=not args.fast))
        status = 0
        async for event in client.events():
            if isinstance(event, Partial) and not args.quiet:
                print(f"  … {_speaker(event)}{event.text}", flush=True)
            elif isinstance(event, Final) and event.text:
                flags = " [end of turn]" if event.end_of_turn else " [backchannel]" if event.backchannel else ""
                lang = f" [{event.language}]" if event.language else ""
                print(f"[{event.start:7.2f}-{event.end:7.2f}] {_speaker(event)}{event.text}{flags}{lang}", flush=True)
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


def _serve_parakeet(args) -> None:
    import uvicorn

    from .batch_worker import BatchConfig, create_batch_app

    cfg = BatchConfig(
        model=args.model,
        device=args.device,
        dtype=args.dtype,
        max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms,
        max_upload_bytes=args.max_upload_mb * 1024 * 1024,
        language=args.language,
        token=resolve_token(args),
    )
    uvicorn.run(create_batch_app(cfg), host=args.host, port=args.port, log_level="info")


def _serve_segmenter(args) -> None:
    import uvicorn

    from .segmenter import SegmenterConfig, VADSettings, create_segmenter_app

    vad = VADSettings(
        stop_secs=args.stop_secs, pre_roll_secs=args.pre_roll_secs, max_utterance_secs=args.max_utterance_secs
    )
    cfg = SegmenterConfig(
        batch_url=args.batch_url,
        batch_token=args.batch_token or os.environ.get("NVASR_BATCH_TOKEN") or os.environ.get("NVASR_TOKEN"),
        vad=vad,
        max_sessions=args.max_sessions,
        token=resolve_token(args),
    )
    uvicorn.run(create_segmenter_app(cfg), host=args.host, port=args.port, log_level="info", ws_max_size=4 * 1024 * 1024)


def _transcribe(args) -> None:
    from pathlib import Path

    from .batch import files as batch_files

    paths = [Path(f) for f in args.files]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        sys.exit(f"nvasr transcribe: no such file: {', '.join(missing)}")
    progress = batch_files.Progress(len(paths), enabled=not args.no_progress)
    try:
        if args.local:
            from .batch_worker import BatchConfig, load_batch_model

            model = load_batch_model(BatchConfig(model=args.model, device=args.device))
            results = batch_files.transcribe_local(paths, model, args.batch_size, progress)
        else:
            token = args.token or os.environ.get("NVASR_TOKEN")
            results = asyncio.run(
                batch_files.transcribe_remote(paths, args.url, token, args.concurrency, args.language, progress)
            )
    except (RuntimeError, OSError, ValueError) as exc:
        sys.exit(f"nvasr transcribe: {exc}")
    finally:
        progress.close()
    batch_files.write_outputs(results, paths, args.format, Path(args.output_dir) if args.output_dir else None)


def _add_parakeet_commands(serve_sub, sub) -> None:
    p = serve_sub.add_parser("parakeet", help="the Parakeet batch worker (OpenAI-compatible /v1/audio/transcriptions)")
    p.add_argument("--model", help="Hugging Face id or local .nemo (default: nvidia/parakeet-tdt-0.6b-v3)")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16", "float64"])
    p.add_argument("--max-batch", type=int, default=128, help="utterances per model call")
    p.add_argument("--max-wait-ms", type=float, default=10.0, help="how long a request waits for company")
    p.add_argument("--max-upload-mb", type=int, default=100)
    p.add_argument("--language", default="en", help="reported when a request names none")
    _add_server_flags(p)
    p.set_defaults(run=_serve_parakeet)

    p = serve_sub.add_parser("segmenter", help="the Silero VAD segmenter (CPU) in front of a batch worker")
    p.add_argument("--batch-url", required=True, help="the batch worker, e.g. http://127.0.0.1:8001")
    p.add_argument("--batch-token", help="the batch worker's token (default: $NVASR_BATCH_TOKEN, else $NVASR_TOKEN)")
    p.add_argument("--stop-secs", type=float, default=0.5, help="silence that ends an utterance")
    p.add_argument("--pre-roll-secs", type=float, default=0.5)
    p.add_argument("--max-utterance-secs", type=float, default=20.0)
    p.add_argument("--max-sessions", type=int, default=512)
    _add_server_flags(p)
    p.set_defaults(run=_serve_segmenter)

    t = sub.add_parser("transcribe", help="transcribe audio files with a batch worker (or a local model)")
    t.add_argument("files", nargs="+")
    where = t.add_mutually_exclusive_group()
    where.add_argument("--url", default="http://127.0.0.1:8000", help="batch worker URL")
    where.add_argument("--local", action="store_true", help="load the model in this process instead")
    t.add_argument("--token")
    t.add_argument("--model", help="with --local: Hugging Face id or .nemo")
    t.add_argument("--device", default="auto", help=f"with --local: {DEVICE_HELP}")
    t.add_argument("--batch-size", type=int, default=32, help="with --local")
    t.add_argument("--concurrency", type=int, default=32, help="uploads in flight")
    t.add_argument("--language", default="en")
    t.add_argument("--format", choices=["txt", "json", "srt", "vtt"], default="txt")
    t.add_argument("--output-dir", help="write <name>.<format> files here (default: print)")
    t.add_argument("--no-progress", action="store_true")
    t.set_defaults(run=_transcribe)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nvasr", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run a worker")
    serve_sub = serve.add_subparsers(dest="worker", required=True)
    for worker in STREAMING_WORKERS:
        p = serve_sub.add_parser(worker, help=f"the {worker} streaming worker")
        p.add_argument("--model", help="Hugging Face id, local .nemo, random:<arch> (random weights; not "
                       "multitalker), or null (no model: host cost only); default: the production model")
        if worker == "multitalker":
            p.add_argument("--diar-model", help="the streaming diarizer: Hugging Face id or local .nemo "
                           "(default: nvidia/diar_streaming_sortformer_4spk-v2.1)")
            p.add_argument("--diar-fallback-model", help="local .nemo to use, with a warning, if --diar-model cannot be had")
            p.add_argument("--speaker-threshold", type=float, default=0.5,
                           help="diarizer probability at which a speaker's utterance opens")
            p.add_argument("--speaker-silence-ms", type=int, default=640,
                           help="a speaker quiet this long gets their final (a VAD finalize ends it sooner)")
            p.add_argument("--latency", choices=["low", "balanced", "accurate"],
                           help="ASR chunk + diarizer card preset: low 160 ms + 0.32 s card preset (default), "
                           "balanced 560 ms + 1.04 s, accurate 1120 ms + 1.04 s (docs/multitalker.md)")
            for flag, what in (("left-context", "left context"), ("right-context", "look-ahead (the ASR waits for it)"),
                               ("fifo", "FIFO length"), ("cache", "speaker cache length"),
                               ("update-period", "speaker cache update period")):
                p.add_argument(f"--diar-{flag}", type=int, help=f"diarizer {what} in 80 ms frames (overrides --latency)")
            p.add_argument("--speaker-instances", choices=["turn", "session"], default="turn",
                           help="an ASR row per speaker turn (default) or per speaker for the session (NeMo's)")
            p.add_argument("--speaker-targets", choices=["nemo", "binary"], default="nemo",
                           help="speaker targets as NeMo feeds them (raw probability) or 0/1")
        else:
            p.add_argument("--endpoint-silence-ms", type=int,
                           help="blank run after an utterance's last word that ends it (default: 720; "
                                "parakeet-realtime: 1500, a backstop behind its <EOU>; 0: off)")
        p.add_argument("--max-utterance-s", type=float, default=30.0,
                       help="an utterance running longer is cut before its last word (0: no limit)")
        p.add_argument("--fallback-model", help="local .nemo to use, with a warning, if --model cannot load")
        p.add_argument("--device", default="auto", help=DEVICE_HELP)
        p.add_argument("--dtype", choices=["float32", "bfloat16", "float16", "float64"])
        p.add_argument("--cuda-graphs", action="store_true",
                       help="NeMo's CUDA-graph greedy decoder, captured at warm-up at --max-batch (default off, "
                            "as in NeMo's reference streaming config; docs/gpu.md)")
        p.add_argument("--chunk-ms", type=int, choices=[80, 160, 320, 560, 1120],
                       help="chunk size; the model must be trained for it (320: Nemotron 3.5)")
        p.add_argument("--max-sessions", type=int, default=256)
        p.add_argument("--max-batch", type=int, default=64)
        p.add_argument("--torch-threads", type=int, default=0,
                       help="torch intra-op threads (default 0: all cores but one on --device cpu, leaving one "
                            "to the event loop; torch's own on a GPU)")
        p.add_argument("--finalize", choices=["fork", "wait"], default="fork",
                       help="fork (default): answer a finalize at the next step from a forked tail of the stream; "
                            "wait: step the chunk holding it once it fills (see --finalize-wait-ms)")
        p.add_argument("--finalize-wait-ms", type=int,
                       help="with --finalize wait: how long a finalize waits for its chunk to fill before "
                            "zero-padding it (default: one chunk)")
        p.add_argument("--admit-lag-ms", type=float, default=500, help="refuse new sessions while the engine runs this far behind (0: no admission control or shedding)")
        p.add_argument("--idle-timeout", type=float, default=60, help="end sessions that send nothing this many seconds (0: never)")
        p.add_argument("--ws", default="auto", choices=["auto", "websockets", "websockets-sansio", "wsproto"],
                       help="uvicorn's WebSocket implementation (benchmarks/load.py compares them)")
        p.add_argument("--ws-deflate", action="store_true", help="accept permessage-deflate (costs CPU per frame)")
        p.add_argument("--drain-seconds", type=float, default=10, help="on SIGTERM, how long open sessions get to finish")
        _add_server_flags(p)
        p.set_defaults(run=_serve_streaming)

    stream = sub.add_parser("stream", help="stream an audio file to a worker and print transcripts")
    stream.add_argument("file")
    stream.add_argument("--url", default="ws://127.0.0.1:8000")
    stream.add_argument("--token")
    stream.add_argument("--language", default="en", help="BCP-47 (es, es-ES) or auto, on a multilingual worker")
    stream.add_argument("--fast", action="store_true", help="send as fast as possible, not in real time")
    stream.add_argument("--quiet", action="store_true", help="finals only")
    stream.set_defaults(run=_run_stream)
    _add_parakeet_commands(serve_sub, sub)
    return parser


def main(argv: Optional[list[str]] = None) -> None:
    from .refusal import StartupRefusal

    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except StartupRefusal as exc:  # a configuration this machine or model cannot serve: one line, no traceback
        sys.exit(f"nvasr: {exc}")


if __name__ == "__main__":
    main()
