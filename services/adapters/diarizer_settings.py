"""The streaming Sortformer's settings, from its model card, set explicitly on the loaded model.

`nvidia/diar_streaming_sortformer_4spk-v2.1` publishes its streaming configurations in 80 ms
frames (chunk / right context / FIFO / update period / speaker cache); NeMo's streaming
examples set them on the model after loading, because the `.nemo` carries training values.
The worker steps the diarizer on the ASR's chunk (as NeMo's multitalker pipeline does), so a
preset gives everything but the chunk: left context, right context (look-ahead: the ASR waits
for it), FIFO, speaker cache and update period.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

# the card's presets: name -> (chunk, right context, FIFO, update period, speaker cache), 80 ms frames
CARD_PRESETS = {
    "0.32s": (3, 1, 188, 144, 188),
    "1.04s": (6, 7, 188, 144, 188),
    "10s": (124, 1, 124, 124, 188),
    "30.4s": (340, 40, 40, 300, 188),
}


# the multitalker worker's `--latency`: ASR chunk (ms) and the card preset for the diarizer. Every
# published multitalker cpWER is at 1120 ms ([70,13]); the tiny test models know 160 and 560 ms.
WORKER_LATENCY = {
    "low": (160, "0.32s"),  # words heard after 160 ms + 160 ms of look-ahead
    "balanced": (560, "1.04s"),  # 560 ms + 560 ms
    "accurate": (1120, "1.04s"),  # 1120 ms + 1120 ms
}


@dataclass(frozen=True)
class DiarizerSettings:
    """Streaming Sortformer context in 80 ms frames (the chunk is the worker's)."""

    left_context: int = 1  # frames of the previous chunk re-encoded with this one (NeMo's default)
    right_context: int = 7  # look-ahead frames: the diarizer, and so the ASR, wait for them
    fifo_len: int = 188
    spkcache_len: int = 188
    update_period: int = 144

    @classmethod
    def from_card(cls, preset: str, left_context: int = 1) -> "DiarizerSettings":
        _, right, fifo, period, cache = CARD_PRESETS[preset]
        return cls(left_context=left_context, right_context=right, fifo_len=fifo, spkcache_len=cache,
                   update_period=period)

    @classmethod
    def resolve(cls, latency: str | None = None, **explicit) -> "DiarizerSettings":
        """A worker preset's settings (default `low`), with explicitly given fields (not None) on top."""
        base = cls.from_card(WORKER_LATENCY[latency or "low"][1])
        return replace(base, **{k: v for k, v in explicit.items() if v is not None})

    def check(self, chunk_frames: int, n_speakers: int, sil_frames_per_speaker: int) -> None:
        """Refuse, in one line, settings NeMo's streaming update would reject or silently change."""
        least = (1 + sil_frames_per_speaker) * n_speakers
        for name, value, minimum in (("left_context", self.left_context, 0), ("right_context", self.right_context, 0),
                                     ("fifo_len", self.fifo_len, 0), ("spkcache_len", self.spkcache_len, least),
                                     ("update_period", self.update_period, 1)):
            if not isinstance(value, int) or value < minimum:
                raise ValueError(f"diarizer {name} must be an integer >= {minimum}, got {value!r}")
        if not chunk_frames <= self.update_period <= self.fifo_len + chunk_frames:
            raise ValueError(f"diarizer update_period must lie in [chunk, fifo_len + chunk] = "
                             f"[{chunk_frames}, {self.fifo_len + chunk_frames}] frames, got {self.update_period}")
