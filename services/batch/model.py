"""NeMo offline (full-context) ASR for batches of utterances: Parakeet TDT or any RNNT `.nemo`.

One call = one padded batch through preprocessor → encoder → greedy decoding, with the
model's own word/segment timestamps and word confidence switched on. Padding never leaks
into a row's result: NeMo masks padded frames (features, subsampling convs, attention), so
an utterance transcribed in a batch equals the same utterance transcribed alone.
Calls are serialised by a lock: an HTTP batcher and a Modal method may share one model.
"""

from __future__ import annotations

import copy
import logging
import os
import threading
from dataclasses import dataclass, field

import numpy as np

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "nvidia/parakeet-tdt-0.6b-v3"
DTYPES = ("float32", "float64", "bfloat16", "float16")
MIN_SECONDS = 0.1


@dataclass
class WordTiming:
    word: str
    start: float
    end: float
    confidence: float


@dataclass
class Segment:
    text: str
    start: float
    end: float


@dataclass
class Transcript:
    """One utterance's result; times are seconds from the utterance's first sample."""

    text: str
    duration: float
    words: list[WordTiming] = field(default_factory=list)
    segments: list[Segment] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)


def load_asr_model(name: str, device: str = "cpu"):
    """A local `.nemo` via restore_from, anything else via the hub (from_pretrained)."""
    from nemo.collections.asr.models import ASRModel

    if os.path.exists(name):
        return ASRModel.restore_from(name, map_location=device)
    return ASRModel.from_pretrained(name, map_location=device)


class OfflineASRModel:
    def __init__(self, model: str = DEFAULT_MODEL, device: str = "cpu", dtype: str = "float32", asr_model=None):
        import torch

        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}")
        self.model_name = model
        self.device = torch.device(device)
        self.dtype = dtype
        self.model = asr_model if asr_model is not None else load_asr_model(model, device)
        self.model.eval()
        if dtype in ("float32", "float64"):
            self.model.to(device=self.device, dtype=getattr(torch, dtype))
        else:
            self.model.to(device=self.device)
        self._lock = threading.Lock()
        self._autocast = dtype in ("bfloat16", "float16") and self.device.type == "cuda"
        self._configure_decoding()
        self.sample_rate = int(self.model.cfg.preprocessor.sample_rate)
        self._frame_seconds = float(self.model.cfg.preprocessor.window_stride) * self.model.encoder.subsampling_factor

    def _configure_decoding(self) -> None:
        """Greedy batched decoding with timestamps and word confidence, as the model provides them."""
        from omegaconf import OmegaConf, open_dict

        if not hasattr(self.model, "decoding") or not hasattr(self.model.decoding, "rnnt_decoder_predictions_tensor"):
            from ..refusal import StartupRefusal

            raise StartupRefusal(f"the parakeet batch worker needs an RNNT/TDT ASR model; {self.model_name} "
                                 f"is a {type(self.model).__name__}")
        cfg = copy.deepcopy(self.model.cfg.decoding)
        with open_dict(cfg):
            cfg.strategy = "greedy_batch"
            cfg.compute_timestamps = True
            cfg.confidence_cfg = OmegaConf.create(
                {
                    "preserve_frame_confidence": True,
                    "preserve_token_confidence": True,
                    "preserve_word_confidence": True,
                    "exclude_blank": True,
                    "aggregation": "min",
                    "method_cfg": {"name": "max_prob"},
                }
            )
        kwargs = {"decoder_type": "rnnt"} if hasattr(self.model, "cur_decoder") else {}
        self.model.change_decoding_strategy(cfg, verbose=False, **kwargs)

    def warmup(self) -> None:
        self.transcribe([np.zeros(self.sample_rate, dtype=np.float32)])

    def transcribe(self, audios: list[np.ndarray]) -> list[Transcript]:
        """Transcribe float32 mono arrays at `sample_rate` in one padded batch."""
        import torch

        if not audios:
            return []
        durations = [len(a) / self.sample_rate for a in audios]
        minimum = int(MIN_SECONDS * self.sample_rate)  # a few samples would leave the encoder no frames
        audios = [a if len(a) >= minimum else np.pad(a, (0, minimum - len(a))) for a in audios]
        lengths = [len(a) for a in audios]
        dtype = self.model.preprocessor.featurizer.fb.dtype if hasattr(self.model.preprocessor, "featurizer") else torch.float32
        batch = torch.zeros(len(audios), max(lengths), dtype=dtype)
        for row, audio in enumerate(audios):
            batch[row, : len(audio)] = torch.from_numpy(np.asarray(audio, dtype=np.float32))
        batch = batch.to(self.device)
        length = torch.tensor(lengths, dtype=torch.long, device=self.device)
        with self._lock, torch.inference_mode(), torch.autocast(
            device_type=self.device.type, dtype=getattr(torch, self.dtype), enabled=self._autocast
        ):
            encoded, encoded_len = self.model.forward(input_signal=batch, input_signal_length=length)
            hyps = self.model.decoding.rnnt_decoder_predictions_tensor(
                encoder_output=encoded, encoded_lengths=encoded_len, return_hypotheses=True
            )
        return [self._to_transcript(h, d) for h, d in zip(hyps, durations)]

    def _seconds(self, offset: float, duration: float) -> float:
        """Encoder frame offset → seconds, clamped to the audio (the last frame runs past its end)."""
        return round(min(offset * self._frame_seconds, duration), 3)

    def _to_transcript(self, hyp, duration: float) -> Transcript:
        stamps = hyp.timestamp if isinstance(hyp.timestamp, dict) else {}
        confidences = list(hyp.word_confidence or [])
        words = []
        for i, w in enumerate(stamps.get("word", [])):
            conf = float(confidences[i]) if i < len(confidences) else 1.0
            words.append(
                WordTiming(
                    word=w["word"],
                    start=self._seconds(w["start_offset"], duration),
                    end=self._seconds(w["end_offset"], duration),
                    confidence=round(conf, 4),
                )
            )
        segments = [
            Segment(
                text=s["segment"],
                start=self._seconds(s["start_offset"], duration),
                end=self._seconds(s["end_offset"], duration),
            )
            for s in stamps.get("segment", [])
        ]
        text = hyp.text if isinstance(hyp.text, str) else ""
        if text and not segments:
            segments = [Segment(text, words[0].start if words else 0.0, words[-1].end if words else duration)]
        tokens = hyp.y_sequence.tolist() if hasattr(hyp.y_sequence, "tolist") else list(hyp.y_sequence)
        return Transcript(text=text.strip(), duration=round(duration, 3), words=words, segments=segments, tokens=tokens)
