"""`nvasr transcribe`: many audio files → transcripts, through a batch worker or a local model.

Remote: files are uploaded concurrently, so the worker batches them. Local: files are
decoded, sorted by length and run through the model `batch_size` at a time. Either way
each result is written as txt/json/srt/vtt next to `out_dir` (or printed).
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Iterable, Optional

from .formats import from_verbose_json, render
from .model import Transcript

OUTPUT_FORMATS = ("txt", "json", "srt", "vtt")


def format_transcript(t: Transcript, fmt: str, language: str = "en") -> str:
    if fmt == "txt":
        return t.text + "\n"
    if fmt == "json":
        return json.dumps(render(t, "verbose_json", language, ("word", "segment")), indent=1) + "\n"
    return render(t, fmt, language)


class Progress:
    """tqdm when it is installed (it comes with NeMo), else a plain counter on stderr."""

    def __init__(self, total: int, enabled: bool = True):
        self.bar = None
        self.done, self.total, self.enabled = 0, total, enabled
        if enabled:
            try:
                from tqdm import tqdm

                self.bar = tqdm(total=total, unit="file", file=sys.stderr)
            except ImportError:
                pass

    def step(self) -> None:
        self.done += 1
        if self.bar is not None:
            self.bar.update(1)
        elif self.enabled:
            print(f"\r{self.done}/{self.total}", end="", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.enabled:
            print(file=sys.stderr)


async def transcribe_remote(
    files: list[Path], url: str, token: Optional[str], concurrency: int = 32, language: str = "en", progress=None
) -> dict[Path, Transcript]:
    """Upload every file (≤ `concurrency` at once) to `<url>/v1/audio/transcriptions`."""
    import aiohttp

    from pipecat_nvasr.protocol import TRANSCRIBE_PATH

    endpoint = url.rstrip("/") + TRANSCRIBE_PATH
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    gate = asyncio.Semaphore(concurrency)
    results: dict[Path, Transcript] = {}

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as session:

        async def one(path: Path) -> None:
            form = aiohttp.FormData()
            form.add_field("file", path.read_bytes(), filename=path.name)
            form.add_field("language", language)
            form.add_field("response_format", "verbose_json")
            form.add_field("timestamp_granularities[]", "word")
            form.add_field("timestamp_granularities[]", "segment")
            async with gate, session.post(endpoint, data=form, headers=headers) as response:
                if response.status != 200:
                    raise RuntimeError(f"{path}: HTTP {response.status}: {(await response.text())[:300]}")
                results[path] = from_verbose_json(await response.json())
            if progress:
                progress.step()

        await asyncio.gather(*(one(p) for p in files))
    return results


def transcribe_local(files: list[Path], model, batch_size: int = 32, progress=None) -> dict[Path, Transcript]:
    """Decode, sort by length, and transcribe with an OfflineASRModel in batches."""
    from ..audio import read_audio

    audio = {p: read_audio(p, model.sample_rate) for p in files}
    ordered = sorted(files, key=lambda p: len(audio[p]))
    results: dict[Path, Transcript] = {}
    for start in range(0, len(ordered), batch_size):
        group = ordered[start : start + batch_size]
        for path, transcript in zip(group, model.transcribe([audio[p] for p in group])):
            results[path] = transcript
            if progress:
                progress.step()
    return results


def write_outputs(results: dict[Path, Transcript], files: Iterable[Path], fmt: str, out_dir: Optional[Path]) -> None:
    """One file per input in `out_dir`, or everything on stdout."""
    ext = {"txt": "txt", "json": "json", "srt": "srt", "vtt": "vtt"}[fmt]
    for path in files:
        body = format_transcript(results[path], fmt)
        if out_dir is None:
            print(f"{path}: {body}" if fmt == "txt" else f"# {path}\n{body}", end="")
        else:
            out_dir.mkdir(parents=True, exist_ok=True)
            (out_dir / f"{path.stem}.{ext}").write_text(body)
