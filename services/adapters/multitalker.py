"""Multitalker streaming: a streaming Sortformer says who speaks, a multitalker ASR row per speaker.

One engine stream is one session (a mixed conversation). Per step:
1. ONE batched diarizer call over every session with a chunk ready (`diarizer.py`, the vectorised
   Sortformer step): speaker probabilities for the chunk's 80 ms frames. With look-ahead
   (`DiarizerSettings.right_context` frames) a chunk is diarized, and transcribed, only once the
   chunks after it have arrived: the session holds back ceil(right_context / chunk) chunks; a
   finalize or the stream's end drains them (one sub-step per held chunk; `lookahead.py`).
2. Speaker rows, one cache-aware ASR stream per (session, speaker), in one of two `instances`
   semantics (measured against each other in tests/assets/tiny_multitalker.md):
   - "turn": a row OPENS when the speaker's probability reaches `speaker_threshold`, starting
     `preroll_chunks` chunks earlier (the diarizer sees an onset late), and CLOSES with its final
     once the speaker has been quiet for `speaker_silence_ms`;
   - "session" (NeMo's `MultiTalkerInstanceManager`): a row opens at the speaker's first speech and
     keeps its encoder cache for the whole session; it is stepped only while the speaker spoke in
     the last `gate_chunks` chunks (NeMo's cache gating), its utterance ends (a final; decoder
     and cache carry on) after `speaker_silence_ms` of quiet, and a row that wakes up is first fed
     the `preroll_chunks` chunks it skipped.
3. ONE batched ASR call over the rows that step (`_RowASR`: the vectorised cache-aware RNNT step),
   each row fed its session's chunk and, right before the encoder, its speaker targets per encoder
   frame, as NeMo's `SpeakerTaggedASR` feeds them (`targets="nemo"`): this speaker's probability
   (raw) and "background" = any other speaker's probability > 0.5 (0/1). `targets="binary"`
   thresholds both at `target_threshold` (the convention tiny_multitalker was trained with).

Events carry `speaker` ("spk0".."spk3": the diarizer's arrival-ordered output column, stable for
the session). A client finalize ends every stepping row's utterance; close ends them all.

A failed step changes nothing (diarizer states, rows and host bookkeeping are written only after
every model call of the step returned), except in a drain with several sub-steps, or a step
with more forked finalizes than spare session slots (`fork_slots`, run in passes): there the
sub-steps or passes before the failing one stay applied.
"""

from __future__ import annotations

import math
import time
from typing import Optional

import numpy as np

from pipecat_nvasr.protocol import BoostPhrase

from ..engine.adapter import StepItem, StepOutput, StreamingAdapter
from . import lookahead
from .diarizer_settings import DiarizerSettings
from .multitalker_fork import ForkedFinalize
from .rows import Rows
from .vectorised import VectorisedRNNTAdapter


class _RowASR(VectorisedRNNTAdapter):
    """The vectorised cache-aware RNNT step, with speaker targets set before each encoder call."""

    worker = "the multitalker worker's ASR"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.conditioned = hasattr(self.wrapper.asr_model, "set_speaker_targets")
        self.targets: Optional[tuple[np.ndarray, np.ndarray]] = None  # (spk, bg) [items, frames]
        pin = self.device.type == "cuda"
        self._targets_host = self._torch.zeros(2, self.max_streams, self.frames_per_chunk, pin_memory=pin)

    def _condition(self, items: np.ndarray) -> None:
        if not self.conditioned:
            return
        n, host = len(items), self._targets_host
        if self.targets is None:  # warm-up: the one speaker, nobody else
            host[0, :n], host[1, :n] = 1.0, 0.0
        else:
            host[0, :n] = self._torch.from_numpy(self.targets[0][items])
            host[1, :n] = self._torch.from_numpy(self.targets[1][items])
        up = host[:, :n].to(self.device, dtype=self.wrapper.cast_dtype, non_blocking=True)
        self.wrapper.asr_model.set_speaker_targets(up[0], up[1])


class MultitalkerAdapter(ForkedFinalize, StreamingAdapter):
    labels_speakers = True  # events carry `speaker` (the Deepgram dialect's `diarize=true` needs it)
    supports_fork = True  # every open speaker's final from a forked copy of the session (multitalker_fork.py)

    def __init__(self, model: str, diar_model: str, chunk_ms: int = 160, max_streams: int = 64,
                 device: str = "cpu", dtype: str = "float32", amp: bool = False, speaker_threshold: float = 0.5,
                 speaker_silence_ms: int = 640, target_threshold: float = 0.3, preroll_chunks: int = 1,
                 max_rows: Optional[int] = None, diar_settings: Optional[DiarizerSettings] = None,
                 instances: str = "turn", targets: str = "nemo", gate_chunks: int = 2, diar_impl: str = "vectorised",
                 fork_slots: int = 16):
        from .diarizer import StreamingDiarizer

        if instances not in ("turn", "session"):
            raise ValueError(f"instances must be 'turn' or 'session', got {instances!r}")
        if targets not in ("nemo", "binary"):
            raise ValueError(f"targets must be 'nemo' or 'binary', got {targets!r}")
        # spare session slots, where a forked finalize steps a copy of its session (multitalker_fork.py)
        self.fork_slots = fork_slots = max(1, min(fork_slots, max_streams))
        # speaker rows: up to 4 per session slot, spare ones included (a copy's clones)
        self.asr = _RowASR(model, chunk_ms=chunk_ms, max_streams=max_rows or 4 * (max_streams + fork_slots),
                           device=device, dtype=dtype, endpoint_silence_ms=0, amp=amp)
        self._torch = self.asr._torch
        self.model_name = model
        self.diar_model = diar_model
        self.sample_rate = self.asr.sample_rate
        self.chunk_samples = self.asr.chunk_samples
        self.max_streams = max_streams
        self.diar_settings = diar_settings or DiarizerSettings.from_card("0.32s")
        self.diar = StreamingDiarizer(diar_model, max_streams + fork_slots, self.chunk_samples, self.asr.device,
                                      dtype, self.diar_settings, impl=diar_impl)
        if self.diar.frames_per_chunk != self.asr.frames_per_chunk:
            raise ValueError(
                f"the diarizer gives {self.diar.frames_per_chunk} frames per chunk, the ASR encoder "
                f"{self.asr.frames_per_chunk}: their frame rates differ"
            )
        if self.diar.sample_rate != self.sample_rate:
            raise ValueError("the diarizer and the ASR model expect different sample rates")
        self.instances, self.target_mode, self.gate_chunks = instances, targets, gate_chunks
        self.speaker_threshold = speaker_threshold
        self.target_threshold = min(target_threshold, speaker_threshold)
        self.frames = self.diar.frames_per_chunk
        self.frame_ms = 1000 * self.diar.frame_samples / self.sample_rate
        self.silence_frames = max(1, int(round(speaker_silence_ms / self.frame_ms)))
        self.hold = math.ceil(self.diar_settings.right_context / self.frames)  # chunks of look-ahead
        n_spk = self.diar.n_speakers
        self.speakers = [f"spk{k}" for k in range(n_spk)]
        self._speaker_names = np.array(self.speakers, dtype=object)
        # per session slot (host): its rows, the speakers' quiet frames, each row's time offset. Slots
        # from max_streams on are spare: a forked finalize steps a copy of its session there
        self.slot_of: dict[int, int] = {}
        self._free = list(range(max_streams - 1, -1, -1))
        slots = max_streams + fork_slots
        self._copies = list(range(slots - 1, max_streams - 1, -1))
        self.row_id = np.full((slots, n_spk), -1, np.int64)
        self.quiet = np.zeros((slots, n_spk), np.int64)
        self.since_spoke = np.zeros((slots, n_spk), np.int64)  # chunks since the speaker spoke
        self.talking = np.zeros((slots, n_spk), bool)  # session rows: an utterance is open
        self.row_start = np.zeros((slots, n_spk), np.int64)  # session sample of the row's sample 0
        self.row_fed = np.zeros((slots, n_spk), np.int64)  # samples the row has been fed
        self.samples = np.zeros(slots, np.int64)  # session samples diarized and transcribed
        self.diarized = np.zeros(slots, np.int64)  # chunks diarized
        self.boost: dict[int, list[BoostPhrase]] = {}
        self._next_row = 1  # the next speaker row's ASR stream id
        # chunks held back for the diarizer's look-ahead
        self.held = np.zeros((slots, max(1, self.hold), self.chunk_samples), np.float32)
        self.held_len = np.zeros((slots, max(1, self.hold)), np.int64)
        self.held_n = np.zeros(slots, np.int64)
        # each session's last chunks (oldest first) and their speaker probabilities: a row's pre-roll
        self.preroll = preroll_chunks
        self.past_audio = np.zeros((slots, max(1, preroll_chunks), self.chunk_samples), np.float32)
        self.past_probs = np.zeros((slots, max(1, preroll_chunks), self.frames, n_spk), np.float32)
        self.past_count = np.zeros(slots, np.int64)  # chunks kept (up to preroll_chunks)
        # session sample of the last forked finalize, per speaker the copy transcribed (multitalker_fork.py)
        self.fork_point = np.zeros((slots, n_spk), np.int64)
        self.stats = {"steps": 0, "sessions": 0, "rows": 0, "diarizer_seconds": 0.0, "asr_seconds": 0.0}

    @property
    def languages(self) -> tuple[str, ...]:
        return self.asr.languages

    @property
    def latency_ms(self) -> int:
        """Audio a word waits for before the ASR hears it: the chunk plus the held look-ahead."""
        return round(1000 * (1 + self.hold) * self.chunk_samples / self.sample_rate)

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
        # a forked finalize: the session's copy takes its place in the step (multitalker_fork.py);
        # forks beyond the spare session slots go in further passes of the same step
        forks = [i for i, item in enumerate(items) if item.fork]
        spare = self.fork_slots
        passes = [[i for i, item in enumerate(items) if not item.fork] + forks[:spare]]
        passes += [forks[k : k + spare] for k in range(spare, len(forks), spare)]
        outputs: list = [None] * count
        for n, group in enumerate(passes):
            try:
                done = self._step_with_copies([items[i] for i in group], slots[group], opened if n == 0 else [])
            except BaseException:
                if n == 0:
                    for _, slot in opened:
                        self._free.append(slot)
                raise
            for i, out in zip(group, done):
                outputs[i] = out
        return outputs

    def _step(self, items: list[StepItem], slots: np.ndarray, opened: list) -> list[StepOutput]:
        if opened:
            new_slots = [slot for _, slot in opened]
            self.diar.reset(new_slots)
            for array in (self.quiet, self.since_spoke, self.talking, self.row_fed, self.fork_point):
                array[new_slots] = 0
            self.row_id[new_slots] = -1
            self.samples[new_slots] = 0
            self.diarized[new_slots] = 0
            self.past_count[new_slots] = 0
            self.held_n[new_slots] = 0
        rounds, keep = lookahead.plan(items, slots, self.held, self.held_len, self.held_n, self.hold)
        if len(rounds) == 1 and len(rounds[0].members) == len(items):  # the common step: one sub-step
            outputs = self._substep(rounds[0], slots)
        else:
            outputs = [StepOutput() for _ in items]
            for sub in rounds:
                for i, out in zip(sub.members.tolist(), self._substep(sub, slots[sub.members])):
                    outputs[i].finals.extend(out.finals)
                    outputs[i].partials = out.partials  # cumulative: the latest sub-step's
        keep()  # the look-ahead held for the next step
        for output in outputs:
            if output.finals:
                output.finals.sort(key=lambda f: (f.start, f.end))
        for stream_id, slot in opened:
            self.slot_of[stream_id] = slot
        for i, item in enumerate(items):
            if item.is_last:
                self._forget(item.stream_id, int(slots[i]))
        self.stats["steps"] += 1
        self.stats["sessions"] += len(items)
        return outputs

    def _substep(self, sub: lookahead.SubChunks, slots: np.ndarray) -> list[StepOutput]:
        """One diarizer call and one ASR call (after the pre-roll groups) for one chunk per session."""
        n_spk, frames, count = self.diar.n_speakers, self.frames, len(slots)
        lengths = sub.lengths
        heard = np.flatnonzero(lengths > 0)
        probs = np.zeros((count, frames, n_spk), np.float32)
        commit = None
        t0 = time.perf_counter()
        if len(heard):
            windows = sub.windows if len(heard) == count else [sub.windows[i] for i in heard.tolist()]
            valid = np.minimum(sub.window_lengths[heard], self.diar.window_samples)
            first = self.diarized[slots[heard]] == 0
            probs[heard], commit = self.diar.step(slots[heard], windows, valid, first)
        t1 = time.perf_counter()
        active = probs >= self.speaker_threshold
        rows_now = self.row_id[slots].copy()  # [count, n_spk]
        spoke = active.any(axis=1)  # [count, n_spk]
        last_active = frames - 1 - np.argmax(active[:, ::-1, :], axis=1)
        quiet = np.where(spoke, frames - 1 - last_active, self.quiet[slots] + frames)
        since = np.where(spoke, 0, self.since_spoke[slots] + 1)
        silent_item = lengths == 0
        quiet[silent_item] = self.quiet[slots][silent_item]
        since[silent_item] = self.since_spoke[slots][silent_item]
        is_last, finalize = sub.is_last, sub.end_utterance
        forked = sub.fork  # the partial chunk of a forked finalize
        copy = slots >= self.max_streams  # a session's copy (multitalker_fork.py): its rows stay open
        opening = spoke & (rows_now < 0)
        open_after = (rows_now >= 0) | opening
        if self.instances == "turn":
            stepping = open_after
            closing = open_after & ((quiet >= self.silence_frames) | is_last[:, None]) & ~copy[:, None]
            ending = finalize[:, None] & stepping
            waking = np.zeros_like(opening)
            talking = np.zeros_like(opening)
        else:
            was_talking = self.talking[slots]
            ending = open_after & (((was_talking | spoke) & (quiet >= self.silence_frames)) | finalize[:, None])
            closing = open_after & is_last[:, None]
            gated = open_after & (since < self.gate_chunks) & ~silent_item[:, None]
            stepping = gated | ending | closing
            waking = gated & ~opening & (self.since_spoke[slots] >= self.gate_chunks)  # skipped chunks before
            talking = (was_talking | spoke) & ~ending
        new_ids = rows_now.copy()
        n_opening = int(opening.sum())
        new_ids[opening] = self._next_row + np.arange(n_opening)  # (row-major: sessions, then speakers)
        self._next_row += n_opening
        # pre-roll: rows opening (or waking) are first fed the session's last chunks
        kept = np.minimum(self.past_count[slots], self.preroll)
        if self.instances == "session":  # a waking row skipped only the chunks since the gate closed
            skipped = np.maximum(self.since_spoke[slots] - self.gate_chunks + 1, 0)
            preroll = np.where(opening, kept[:, None], np.where(waking, np.minimum(kept[:, None], skipped), 0))
        else:
            preroll = np.where(opening, kept[:, None], 0)
        for i, k in zip(*np.nonzero(opening & (self.fork_point[slots] > 0))):
            started = int(self.samples[slots[i]] - preroll[i, k] * self.chunk_samples)
            self._opening_floor(int(slots[i]), int(k), int(new_ids[i, k]), started)
        pre_groups = []  # one ASR call per pre-roll position, oldest first
        for back in range(int(preroll.max(initial=0)), 0, -1):
            pi, pk = np.nonzero(preroll >= back)
            pre_slots = slots[pi]
            firsts = opening[pi, pk] & (preroll[pi, pk] == back)
            count_pre = len(pi)
            group = Rows(stream_id=new_ids[pi, pk].tolist(), samples=list(self.past_audio[pre_slots, -back]),
                         is_first=firsts.tolist(), is_last=[False] * count_pre, end_utterance=[False] * count_pre,
                         fork=[False] * count_pre, boost=self._boosts(firsts, pre_slots), sparse=True)
            pre_groups.append((group, self._targets(self.past_probs[pre_slots, -back], pk)))
        # the rows stepping now, as columns of the step's arrays (rows.py: no object per row)
        ri, rk = np.nonzero(stepping)
        row_firsts = opening[ri, rk] & (preroll[ri, rk] == 0)
        row_samples = [sub.samples[i] for i in ri.tolist()]
        heard_by_row = None
        if self.instances == "session":  # a session row past its gate is fed no audio: it only ends its utterance
            heard_by_row = since[ri, rk] < self.gate_chunks
            for j in np.flatnonzero(~heard_by_row).tolist():
                row_samples[j] = row_samples[j][:0]
        started = self.samples[slots][:, None] - preroll * self.chunk_samples  # a row's sample 0, if it opens
        row_start = np.where(opening | waking, started - np.where(opening, 0, self.row_fed[slots]), self.row_start[slots])
        rows = Rows(stream_id=new_ids[ri, rk].tolist(), samples=row_samples, is_first=row_firsts.tolist(),
                    is_last=closing[ri, rk].tolist(), end_utterance=ending[ri, rk].tolist(), fork=forked[ri].tolist(),
                    boost=self._boosts(row_firsts, slots[ri]), sparse=True,
                    offset=row_start[ri, rk] / self.sample_rate, speaker=self._speaker_names[rk].tolist())
        row_targets = self._targets(probs[ri], rk)
        try:
            for group, targets in pre_groups:
                finals, _ = self._asr_step(group, targets)
                assert not finals  # no row's first chunk is a last one
            row_events = self._asr_step(rows, row_targets)
        except BaseException:
            for i, k in zip(*np.nonzero(opening)):
                self.asr.release(int(new_ids[i, k]))
                self.asr.floors.pop(int(new_ids[i, k]), None)
            raise
        t2 = time.perf_counter()
        # every model call succeeded: commit state, then events
        if commit is not None:
            commit()
        self.diarized[slots[heard]] += 1
        self.row_id[slots] = np.where(closing, -1, new_ids)
        self.quiet[slots] = quiet
        self.since_spoke[slots] = since
        self.talking[slots] = talking
        self.row_start[slots] = row_start  # a row's sample 0 in session time (a waking session row re-anchors)
        fed = np.zeros_like(self.row_fed[slots])
        fed[ri, rk] = lengths[ri] if heard_by_row is None else np.where(heard_by_row, lengths[ri], 0)
        self.row_fed[slots] = np.where(opening, 0, self.row_fed[slots]) + fed + preroll * self.chunk_samples
        self.samples[slots] += lengths
        if self.preroll and len(heard):  # each heard session's chunk joins its pre-roll, the oldest leaves
            kept_slots = slots[heard]
            self.past_audio[kept_slots, :-1] = self.past_audio[kept_slots, 1:]
            self.past_probs[kept_slots, :-1] = self.past_probs[kept_slots, 1:]
            newest = self.past_audio[kept_slots, -1]
            newest[:] = 0.0
            for j, i in enumerate(heard.tolist()):
                newest[j, : lengths[i]] = sub.samples[i]
            self.past_audio[kept_slots, -1] = newest
            self.past_probs[kept_slots, -1] = probs[heard]
            self.past_count[kept_slots] += 1
        outputs = [StepOutput() for _ in range(count)]
        finals, partials = row_events
        session = ri.tolist()
        for j, events in finals.items():
            offset, speaker = float(rows.offset[j]), rows.speaker[j]
            outputs[session[j]].finals.extend(_moved(final, offset, speaker) for final in events)
        for j, partial in partials.items():  # (in row order: a session's speakers in column order)
            outputs[session[j]].partials.append(partial)
        self.stats["rows"] += len(rows) + sum(len(group) for group, _ in pre_groups)
        self.stats["diarizer_seconds"] += t1 - t0
        self.stats["asr_seconds"] += t2 - t1
        return outputs

    def commit(self, outputs: list[StepOutput]) -> list[StepOutput]:
        return outputs

    def _targets(self, probs: np.ndarray, speaker: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Each row's own and everyone else's targets [rows, frames], from its chunk's speaker
        probabilities `probs` [rows, frames, speakers] and its speaker column `speaker` [rows]."""
        own = np.take_along_axis(probs, speaker[:, None, None], axis=2)[:, :, 0]
        others = (np.arange(probs.shape[2]) != speaker[:, None])[:, None, :]  # [rows, 1, speakers]
        if self.target_mode == "nemo":  # SpeakerTaggedASR: raw own probability, others > 0.5
            return own.astype(np.float32), ((probs > 0.5) & others).any(axis=2).astype(np.float32)
        threshold = self.target_threshold
        return (own >= threshold).astype(np.float32), ((probs >= threshold) & others).any(axis=2).astype(np.float32)

    def _boosts(self, firsts: np.ndarray, slots: np.ndarray) -> dict[int, list]:
        """Rows opening now take their session's key phrases (row → phrases, for sessions with any)."""
        if not self.boost:
            return {}
        return {j: self.boost[slot] for j, slot in zip(np.flatnonzero(firsts).tolist(), slots[firsts].tolist())
                if slot in self.boost}

    def _asr_step(self, rows: Rows, targets: tuple[np.ndarray, np.ndarray]) -> tuple[dict, dict]:
        """One ASR step over speaker rows: their finals and partials by row (the rows that have one)."""
        if not len(rows):
            return {}, {}
        self.asr.targets = targets
        try:
            plan = self.asr.prepare_rows(rows)
            failed = self.asr.commit_rows(plan)
        finally:
            self.asr.targets = None
            if self.asr.conditioned:
                self.asr.wrapper.asr_model.clear_speaker_targets()
        if failed:
            raise next(iter(failed.values()))
        return plan.finals, plan.partials

    def compile_boost(self, phrases) -> None:
        self.asr.compile_boost(phrases)

    def release(self, stream_id: int) -> None:
        slot = self.slot_of.get(stream_id)
        if slot is None:
            return
        self.asr.release_all(self.row_id[slot][self.row_id[slot] >= 0].tolist())
        self._forget(stream_id, slot)

    def _forget(self, stream_id: int, slot: int) -> None:
        self.slot_of.pop(stream_id, None)
        self.row_id[slot] = -1
        self.boost.pop(slot, None)
        self.held_n[slot] = 0
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
    """A row's event in session-stream time, labelled with its speaker. The row's events are
    made fresh by each step, so they are shifted in place (no copy per event and word)."""
    event.start, event.end, event.speaker = round(event.start + offset, 3), round(event.end + offset, 3), speaker
    for word in getattr(event, "words", ()):
        word.start, word.end = round(word.start + offset, 3), round(word.end + offset, 3)
    return event
