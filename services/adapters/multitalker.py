"""Multitalker streaming: a streaming Sortformer says who speaks, a multitalker ASR row per speaker.

One engine stream is one session (a mixed conversation). Per step:
1. ONE batched diarizer call over every session that brought audio (`diarizer.py`; sessions on
   their first chunk are a second group): speaker probabilities for the chunk's 80 ms frames.
2. Speaker rows: a (session, speaker) row OPENS when that speaker's probability reaches
   `speaker_threshold` in the chunk, as a fresh cache-aware ASR stream that starts
   `preroll_chunks` chunks EARLIER (the diarizer, with no look-ahead, sees an onset 80-160 ms
   late: the session's last chunks are kept for this pre-roll); it CLOSES, emitting its final, once the speaker
   has been quiet for `speaker_silence_ms`. A session has at most as many rows as the diarizer
   has speaker outputs (4).
3. ONE batched ASR call over every open row (`_RowASR`: the vectorised cache-aware RNNT step,
   `vectorised.py`), each row fed its session's chunk and, right before the encoder, its
   speaker targets: this speaker's activity and any other speaker's ("background"), 0/1 per
   encoder frame (probability >= `target_threshold`, lower than the opening threshold so an
   onset's first frames count), set with the model's `set_speaker_targets` (NeMo's
   speaker-kernel models). Rows opening this step first run their pre-roll chunks, one small
   group per chunk, before the main call.

Events carry `speaker` ("spk0".."spk3": the diarizer's arrival-ordered output column, stable
for the session). A client finalize ends every open row's utterance (the rows and their
caches carry on); close (or the stream's last chunk) closes them all. The ASR's own blank-run
endpoint is off: a row's turn ends with the speaker's silence.

An ASR model without speaker kernels (e.g. a plain cache-aware RNNT) still runs — each row then
transcribes everything it hears, which only makes sense for tests of the plumbing.

A failed step changes nothing: the diarizer's new states are committed, rows opened and
host bookkeeping updated only after the ASR step returned (rows opened for it are released).
"""

from __future__ import annotations

import itertools
import time
from dataclasses import replace
from typing import Optional

import numpy as np

from pipecat_nvasr.protocol import BoostPhrase

from ..engine.adapter import StepItem, StepOutput, StreamingAdapter
from .vectorised import VectorisedRNNTAdapter


class _RowASR(VectorisedRNNTAdapter):
    """The vectorised cache-aware RNNT step, with speaker targets set before each encoder call."""

    worker = "the multitalker worker's ASR"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.conditioned = hasattr(self.wrapper.asr_model, "set_speaker_targets")
        self.targets: Optional[tuple[np.ndarray, np.ndarray]] = None  # (spk, bg) [items, frames]

    def _condition(self, items: np.ndarray) -> None:
        if not self.conditioned:
            return
        torch = self._torch
        if self.targets is None:  # warm-up: the one speaker, nobody else
            spk = np.ones((len(items), self.frames_per_chunk), np.float32)
            bg = np.zeros_like(spk)
        else:
            spk, bg = self.targets[0][items], self.targets[1][items]
        dtype = self.wrapper.cast_dtype
        self.wrapper.asr_model.set_speaker_targets(
            torch.from_numpy(spk).to(self.device, dtype), torch.from_numpy(bg).to(self.device, dtype)
        )


class MultitalkerAdapter(StreamingAdapter):
    labels_speakers = True  # events carry `speaker` (the Deepgram dialect's `diarize=true` needs it)

    def __init__(self, model: str, diar_model: str, chunk_ms: int = 160, max_streams: int = 64,
                 device: str = "cpu", dtype: str = "float32", amp: bool = False, speaker_threshold: float = 0.5,
                 speaker_silence_ms: int = 640, target_threshold: float = 0.3, preroll_chunks: int = 1,
                 max_rows: Optional[int] = None):
        from .diarizer import StreamingDiarizer

        self.asr = _RowASR(model, chunk_ms=chunk_ms, max_streams=max_rows or 4 * max_streams, device=device,
                           dtype=dtype, endpoint_silence_ms=0, amp=amp)
        self._torch = self.asr._torch
        self.model_name = model
        self.diar_model = diar_model
        self.sample_rate = self.asr.sample_rate
        self.chunk_samples = self.asr.chunk_samples
        self.max_streams = max_streams
        self.diar = StreamingDiarizer(diar_model, max_streams, self.chunk_samples, self.asr.device, dtype)
        if self.diar.frames_per_chunk != self.asr.frames_per_chunk:
            raise ValueError(
                f"the diarizer gives {self.diar.frames_per_chunk} frames per chunk, the ASR encoder "
                f"{self.asr.frames_per_chunk}: their frame rates differ"
            )
        if self.diar.sample_rate != self.sample_rate:
            raise ValueError("the diarizer and the ASR model expect different sample rates")
        self.speaker_threshold = speaker_threshold
        self.target_threshold = min(target_threshold, speaker_threshold)
        self.frames = self.diar.frames_per_chunk
        self.frame_ms = 1000 * self.diar.frame_samples / self.sample_rate
        self.silence_frames = max(1, int(round(speaker_silence_ms / self.frame_ms)))
        n_spk = self.diar.n_speakers
        self.speakers = [f"spk{k}" for k in range(n_spk)]
        # per session slot (host): its rows, the speakers' quiet frames, where each row began
        self.slot_of: dict[int, int] = {}
        self._free = list(range(max_streams - 1, -1, -1))
        self.row_id = np.full((max_streams, n_spk), -1, np.int64)
        self.quiet = np.zeros((max_streams, n_spk), np.int64)
        self.row_start = np.zeros((max_streams, n_spk), np.int64)  # session sample where the row began
        self.samples = np.zeros(max_streams, np.int64)  # samples the session's stream has been given
        self.boost: dict[int, list[BoostPhrase]] = {}
        self._row_ids = itertools.count(1)
        self._audio = np.zeros((max_streams, self.chunk_samples), np.float32)
        # each session's last chunks (oldest first) and their target activity: a new row's pre-roll
        self.preroll = preroll_chunks
        self.past_audio = np.zeros((max_streams, preroll_chunks, self.chunk_samples), np.float32)
        self.past_active = np.zeros((max_streams, preroll_chunks, self.frames, n_spk), bool)
        self.past_count = np.zeros(max_streams, np.int64)  # chunks kept (up to preroll_chunks)
        self.stats = {"steps": 0, "sessions": 0, "rows": 0, "diarizer_seconds": 0.0, "asr_seconds": 0.0}

    @property
    def languages(self) -> tuple[str, ...]:
        return self.asr.languages

    # ------------------------------------------------------------------ engine contract

    def prepare(self, items: list[StepItem]) -> list[StepOutput]:
        """The whole multitalker step. It computes every model call first and writes state only
        after all of them returned (a failed step changes nothing), but inside this one call;
        `commit` hands the outputs over. (Split into prepare/commit proper: issue 22's rework.)"""
        count = len(items)
        slots = np.empty(count, np.int64)
        opened = []
        for i, item in enumerate(items):
            slot = self.slot_of.get(item.stream_id, -1)
            if item.is_first:
                if slot < 0:
                    if not self._free:
                        raise RuntimeError(f"all {self.max_streams} multitalker session slots are in use")
                    slot = self._free.pop()
                    opened.append((item.stream_id, slot))
            elif slot < 0:
                raise RuntimeError(f"stream {item.stream_id} is not open")
            if item.boost is not None:  # rows opened from now on take them
                self.boost[slot] = list(item.boost)
            slots[i] = slot
        try:
            return self._step(items, slots, opened)
        except BaseException:
            for _, slot in opened:
                self._free.append(slot)
            raise

    def _step(self, items: list[StepItem], slots: np.ndarray, opened: list) -> list[StepOutput]:
        torch, n_spk, frames = self._torch, self.diar.n_speakers, self.frames
        count = len(items)
        if opened:
            new_slots = [slot for _, slot in opened]
            self.diar.reset(new_slots)
            self.row_id[new_slots] = -1
            self.quiet[new_slots] = 0
            self.samples[new_slots] = 0
            self.past_count[new_slots] = 0
        # 1. diarize every item that brought audio
        lengths = np.array([len(item.samples) for item in items], np.int64)
        heard = np.flatnonzero(lengths > 0)
        active = np.zeros((count, frames, n_spk), bool)  # speaking, at the opening threshold
        target = np.zeros((count, frames, n_spk), bool)  # speaking, at the targets' threshold
        commit = None
        t0 = time.perf_counter()
        if len(heard):
            audio = self._audio[: len(heard)]
            for j, i in enumerate(heard.tolist()):
                audio[j, : lengths[i]] = items[i].samples
                audio[j, lengths[i]:] = 0.0
            first = np.array([items[i].is_first for i in heard.tolist()], bool)
            # `audio` views self._audio, rewritten only by the next step: after this step's commit
            probs, commit = self.diar.step(slots[heard], torch.from_numpy(audio), lengths[heard], first)
            active[heard] = probs >= self.speaker_threshold
            target[heard] = probs >= self.target_threshold
        t1 = time.perf_counter()
        # 2. which rows open, step and close
        rows_now = self.row_id[slots].copy()  # [count, n_spk]
        spoke = active.any(axis=1)  # [count, n_spk]
        last_active = frames - 1 - np.argmax(active[:, ::-1, :], axis=1)  # where spoke
        quiet = np.where(spoke, frames - 1 - last_active, self.quiet[slots] + frames)
        quiet[lengths == 0] = self.quiet[slots][lengths == 0]
        opening = spoke & (rows_now < 0)
        is_last = np.array([item.is_last for item in items], bool)
        open_after = (rows_now >= 0) | opening
        closing = open_after & ((quiet >= self.silence_frames) | is_last[:, None])
        new_ids = np.where(opening, 0, rows_now)
        for i, k in zip(*np.nonzero(opening)):
            new_ids[i, k] = next(self._row_ids)
        # 3. pre-roll for rows opening mid-session, then one ASR step over every open row
        kept = np.minimum(self.past_count[slots], self.preroll)  # chunks of pre-roll each item can give
        preroll = np.where(opening, kept[:, None], 0)  # [count, n_spk]
        pre_groups = []  # one ASR call per pre-roll position, oldest first
        for back in range(int(preroll.max(initial=0)), 0, -1):
            group = []
            for i, k in zip(*np.nonzero(preroll >= back)):
                slot, first = int(slots[i]), bool(preroll[i, k] == back)
                group.append((StepItem(stream_id=int(new_ids[i, k]), samples=self.past_audio[slot, -back].copy(),
                                       is_first=first, is_last=False, boost=self.boost.get(slot) if first else None),
                              self._targets(self.past_active[slot, -back], k)))
            pre_groups.append(group)
        row_items, owners, row_targets = [], [], []  # owners: (item index, speaker) per row item
        for i, k in zip(*np.nonzero(open_after)):
            item = items[i]
            first = bool(opening[i, k] and not preroll[i, k])
            row_items.append(StepItem(
                stream_id=int(new_ids[i, k]), samples=item.samples, is_first=first, is_last=bool(closing[i, k]),
                boost=self.boost.get(int(slots[i])) if first else None, end_utterance=item.end_utterance,
            ))
            owners.append((int(i), int(k)))
            row_targets.append(self._targets(target[i], k))
        pre_outputs, outputs_rows = [], []
        try:
            for group in pre_groups:
                pre_outputs += self._asr_step([g[0] for g in group], [g[1] for g in group])
            outputs_rows = self._asr_step(row_items, row_targets)
        except BaseException:
            for i, k in zip(*np.nonzero(opening)):
                self.asr.release(int(new_ids[i, k]))
            raise
        t2 = time.perf_counter()
        # 4. the step succeeded: commit state, then events
        if commit is not None:
            commit()
        for stream_id, slot in opened:
            self.slot_of[stream_id] = slot
        self.row_id[slots] = np.where(closing, -1, new_ids)
        self.quiet[slots] = quiet
        started = self.samples[slots][:, None] - preroll * self.chunk_samples
        self.row_start[slots] = np.where(opening, started, self.row_start[slots])
        self.samples[slots] += lengths
        if self.preroll:
            for i in heard.tolist():
                slot = slots[i]
                self.past_audio[slot] = np.roll(self.past_audio[slot], -1, axis=0)
                self.past_audio[slot, -1, : lengths[i]] = items[i].samples
                self.past_audio[slot, -1, lengths[i]:] = 0.0
                self.past_active[slot] = np.roll(self.past_active[slot], -1, axis=0)
                self.past_active[slot, -1] = target[i]
                self.past_count[slot] += 1
        outputs = [StepOutput() for _ in items]
        assert not any(out.finals for out in pre_outputs)  # no row's first chunk is a last one
        for (i, k), out in zip(owners, outputs_rows):
            offset = self.row_start[slots[i], k] / self.sample_rate
            speaker = self.speakers[k]
            outputs[i].finals.extend(_moved(f, offset, speaker) for f in out.finals)
            if out.partial is not None:
                outputs[i].partials.append(_moved(out.partial, offset, speaker))
        for output in outputs:
            output.finals.sort(key=lambda f: (f.start, f.end))
        for i, item in enumerate(items):
            if item.is_last:
                self._forget(item.stream_id, int(slots[i]))
        self.stats["steps"] += 1
        self.stats["sessions"] += count
        self.stats["rows"] += len(row_items) + len(pre_outputs)
        self.stats["diarizer_seconds"] += t1 - t0
        self.stats["asr_seconds"] += t2 - t1
        return outputs

    def commit(self, outputs: list[StepOutput]) -> list[StepOutput]:
        return outputs

    @staticmethod
    def _targets(active: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Speaker k's and everyone else's activity [frames] from a chunk's [frames, speakers]."""
        return active[:, k], np.delete(active, k, axis=1).any(axis=1)

    def _asr_step(self, row_items: list[StepItem], targets: list) -> list[StepOutput]:
        if not row_items:
            return []
        self.asr.targets = (np.array([t[0] for t in targets], np.float32),
                            np.array([t[1] for t in targets], np.float32))
        try:
            return self.asr.step(row_items)
        finally:
            self.asr.targets = None
            if self.asr.conditioned:
                self.asr.wrapper.asr_model.clear_speaker_targets()

    def compile_boost(self, phrases) -> None:
        self.asr.compile_boost(phrases)

    def release(self, stream_id: int) -> None:
        slot = self.slot_of.get(stream_id)
        if slot is None:
            return
        for row in self.row_id[slot][self.row_id[slot] >= 0].tolist():
            self.asr.release(row)
        self._forget(stream_id, slot)

    def _forget(self, stream_id: int, slot: int) -> None:
        self.slot_of.pop(stream_id, None)
        self.row_id[slot] = -1
        self.boost.pop(slot, None)
        self._free.append(slot)

    def active_streams(self) -> int:
        return len(self.slot_of)

    def active_rows(self) -> int:
        """Speaker rows holding ASR state now (for leak checks and metrics)."""
        return self.asr.active_streams()

    def warmup(self, samples: Optional[np.ndarray] = None) -> None:
        """The diarizer through the engine contract, then the ASR rows directly (silence opens none)."""
        super().warmup(samples)
        self.asr.warmup(samples)


def _moved(event, offset: float, speaker: str):
    """A row's event in session-stream time, labelled with its speaker."""
    changes = {"start": round(event.start + offset, 3), "end": round(event.end + offset, 3), "speaker": speaker}
    if hasattr(event, "words"):
        changes["words"] = [replace(w, start=round(w.start + offset, 3), end=round(w.end + offset, 3))
                            for w in event.words]
    return replace(event, **changes)
