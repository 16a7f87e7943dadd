"""Decode any common audio container to float32 mono at the model's rate.

soundfile (libsndfile) handles WAV/FLAC/OGG-Vorbis/MP3 quickly; PyAV (FFmpeg) takes the
rest (Opus in OGG/WebM, M4A, ...). Resampling is soxr. No hand-written codecs.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Union

import numpy as np

Source = Union[str, Path, bytes]


class AudioDecodeError(ValueError):
    """The input is not audio we can decode (or holds no samples)."""


def _decode_soundfile(data: bytes) -> tuple[np.ndarray, int]:
    import soundfile as sf

    audio, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    return audio.mean(axis=1), rate


def _decode_av(data: bytes) -> tuple[np.ndarray, int]:
    import av

    with av.open(io.BytesIO(data)) as container:
        stream = next((s for s in container.streams if s.type == "audio"), None)
        if stream is None:
            raise AudioDecodeError("no audio stream in the file")
        rate = stream.codec_context.sample_rate
        resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
        parts = []
        for frame in container.decode(stream):
            for out in resampler.resample(frame):
                parts.append(out.to_ndarray().reshape(-1))
        for out in resampler.resample(None):
            parts.append(out.to_ndarray().reshape(-1))
    if not parts:
        return np.zeros(0, dtype=np.float32), rate
    return np.concatenate(parts).astype(np.float32), rate


def read_audio(source: Source, sample_rate: int = 16000) -> np.ndarray:
    """Decode `source` (a path or the file's bytes) to mono float32 at `sample_rate`."""
    data = Path(source).read_bytes() if isinstance(source, (str, Path)) else bytes(source)
    if not data:
        raise AudioDecodeError("the file is empty")
    try:
        audio, rate = _decode_soundfile(data)
    except Exception:
        try:
            audio, rate = _decode_av(data)
        except AudioDecodeError:
            raise
        except Exception as exc:
            raise AudioDecodeError(f"could not decode the audio ({type(exc).__name__})") from None
    if audio.size == 0:
        raise AudioDecodeError("the file holds no audio samples")
    if rate != sample_rate:
        import soxr

        audio = soxr.resample(audio, rate, sample_rate).astype(np.float32)
    return np.ascontiguousarray(audio, dtype=np.float32)
