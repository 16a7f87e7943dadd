"""The utterance rules of the vectorised step, over the batch: what a step's tokens mean.

After the model calls of `prepare` (vectorised.py), `_account` turns each decoded group into
host facts — end markers, the blank run since the last token, the text its new tokens make — and
`_events` turns those into each item's events and the state changes they imply: a final where
the step ended the utterance (the decoder row restarts), a cut final for an utterance past
`max_utterance_s` (before its last word, which opens the next utterance; the decoder carries on),
the partial, and a finalize's final. Everything here reads state and writes only into the
`Prepared` step, which `commit` stores.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from pipecat_nvasr.protocol import Final, Partial, Word

from ..engine.adapter import StepOutput
from .rows import Rows


@dataclass
class Prepared:
    """One step, computed: what `commit` writes and the events it returns."""

    rows: Rows  # the step's items, as columns
    slots: np.ndarray  # each item's slot (-1: none)
    opened: list[tuple[int, int]]  # (stream id, slot) streams that start in this step
    boosts: dict[int, object]  # slot → its new boosting config (None: none)
    batch: np.ndarray = None  # the items stepped through the model (item indices)
    valid: np.ndarray = None  # their samples
    last_rows: list = field(default_factory=list)  # batch rows that are their stream's last chunk
    ended: np.ndarray = None  # per item: the step ended its utterance
    marker: np.ndarray = None  # per item: 0 none, 1 <EOB>, 2 <EOU>
    floor_done: set = field(default_factory=set)  # slots whose forked-split floor is passed
    stored: Optional[np.ndarray] = None  # batch rows whose new state is stored (None: all; forks never)
    new_floors: dict = field(default_factory=dict)  # slot → drop_before of a stream opening now (`floors`)
    host_rows: dict = field(default_factory=dict)  # slot → (blank frames, utterance tokens) after the step
    device_writes: list = field(default_factory=list)  # callables storing device rows
    host: dict = field(default_factory=dict)  # SlotStore vector name → (slots, values)
    deltas: dict = field(default_factory=dict)  # slot → text.Delta of this step's tokens
    finished: list = field(default_factory=list)  # (slot, text action, arg): text after each final
    restart: list[int] = field(default_factory=list)  # slots whose decoder restarts at <SOS>
    closed: list[tuple[int, int]] = field(default_factory=list)  # (stream id, slot) streams that end
    outputs: list[StepOutput] = field(default_factory=list)  # per item (not with `rows.sparse`)
    finals: dict = field(default_factory=dict)  # item → its finals, for the items that have one
    partials: dict = field(default_factory=dict)  # item → its partial, for the items that have one
    eou_latencies: list[float] = field(default_factory=list)


class UtteranceEvents:
    """Mixed into VectorisedRNNTAdapter (it provides store, text, frames_per_chunk, stride_ms,
    endpoint_silence_ms, max_utterance_frames, sample_rate, the marker tokens and `_mark`)."""

    def _account(self, plan, rows, group_slots, lengths, tokens, frames, confidence) -> None:
        """Utterance bookkeeping for one decoded group, over the batch; text only for rows with tokens."""
        store, width = self.store, tokens.shape[1]
        items = plan.batch[rows]
        present = np.arange(width)[None, :] < lengths[:, None]
        ended = np.zeros(len(rows), bool)
        ended[np.isin(items, plan.batch[plan.last_rows])] = True
        if len(self._marker_array):
            is_marker = present & np.isin(tokens, self._marker_array)
            found = is_marker.any(axis=1)
            if found.any():
                eou = (is_marker & (tokens == self._eou_id)).any(axis=1)
                plan.marker[items] = np.where(found, np.where(eou, 2, 1), 0)
                ended |= found
            keep = present & ~is_marker
        else:
            keep = present
        # blank frames since the last token: NeMo's per-frame labels (the frame's last token or blank)
        frame_in_chunk = np.where(keep, frames % self.frames_per_chunk, -1)
        floor = self._drop_before(plan, group_slots)
        if floor.any():  # (tokens a fork's final holds already still end a blank run: they were said)
            keep = keep.copy()
            self._drop_forked(plan, group_slots, keep, tokens, frames, floor)
        count = keep.sum(axis=1)
        last_frame = frame_in_chunk.max(axis=1) if width else np.full(len(rows), -1)
        silent = np.where(last_frame >= 0, self.frames_per_chunk - 1 - last_frame,
                          store.silent[group_slots] + self.frames_per_chunk)
        utt_tokens = store.utt_tokens[group_slots] + count
        if self.endpoint_silence_ms and self.endpoint_silence_ms > 0:
            spoken = (utt_tokens > 0) | store.split[group_slots]
            ended |= spoken & (silent * self.stride_ms >= self.endpoint_silence_ms)
        plan.ended[items] = ended
        plan.host_rows.update(zip(group_slots.tolist(), zip(silent.tolist(), utt_tokens.tolist())))
        with_tokens = np.flatnonzero(count)
        if len(with_tokens):
            np.clip(confidence, 0.0, 1.0, out=confidence)  # max_prob can round a hair above 1
            frames = frames + store.utt_offset[group_slots][:, None]  # stream frames
            # row-major boolean indexing keeps each row's tokens together and in order
            new_tokens, new_frames, new_conf = tokens[keep].tolist(), frames[keep].tolist(), confidence[keep].tolist()
            ends = np.cumsum(count[with_tokens]).tolist()
            delta, start = self.text.delta, 0
            for slot, end in zip(group_slots[with_tokens].tolist(), ends):
                plan.deltas[slot] = delta(slot, new_tokens[start:end], new_frames[start:end], new_conf[start:end])
                start = end

    def _drop_before(self, plan, slots: np.ndarray) -> np.ndarray:
        """The forked-split floor of these slots (a copy): stored, or given to a stream opening now."""
        floor = self.store.drop_before[slots].copy()
        for j, slot in enumerate(slots.tolist() if plan.new_floors else ()):
            if slot in plan.new_floors:
                floor[j] = plan.new_floors[slot]
        return floor

    def _drop_forked(self, plan, group_slots, keep, tokens, frames, floor) -> None:
        """A forked finalize ended these rows' utterance at stream frame `floor` from a copy of
        the stream: the tokens the stream itself now writes before that frame are already in
        that final, and so is the word it ended with (its remaining pieces, before the next
        word starts). Neither goes into the next utterance: no word repeated at the split."""
        store = self.store
        stream_frames = frames + store.utt_offset[group_slots][:, None]
        keep &= ~(stream_frames < floor[:, None])
        for r in np.flatnonzero(floor > 0).tolist():
            slot = int(group_slots[r])
            started = store.utt_tokens[slot] > 0 or bool(self.text.tokens[slot])
            if not started:
                for c in np.flatnonzero(keep[r]).tolist():
                    if self.text.word_start[int(tokens[r, c])]:
                        started = True
                        break
                    keep[r, c] = False
            if started and store.frames[slot] + self.frames_per_chunk >= floor[r]:
                plan.floor_done.add(slot)  # past the split and into the next word: nothing more to drop

    def _events(self, plan: Prepared) -> None:
        """Each item's events and the state changes they imply: a final where the step ended the
        utterance (its decoder restarts); a cut final for an utterance past `max_utterance_s`
        (up to its last word, which opens the next utterance; the decoder carries on); the
        partial; and for a finalize, the utterance so far as a final with the decoder left as it
        is (only the text is split, as NeMo's path does)."""
        store, rows, slots = self.store, plan.rows, plan.slots
        n = len(rows)
        stepped = np.zeros(n, np.int64)
        stepped[plan.batch] = plan.valid
        fresh_frames = np.zeros(n, np.int64)
        fresh_frames[plan.batch] = self.frames_per_chunk
        forked = np.array(rows.fork, bool)
        stepped[forked], fresh_frames[forked] = 0, 0  # a fork moves nothing of its stream
        safe = np.where(slots >= 0, slots, 0)
        samples = store.samples[safe] + stepped
        frames = store.frames[safe] + fresh_frames
        utt_offset, utt_start = store.utt_offset[safe].copy(), store.utt_start[safe].copy()
        silent, utt_tokens = store.silent[safe].copy(), store.utt_tokens[safe].copy()
        split = store.split[safe].copy()
        drop_before = self._drop_before(plan, safe)
        slot_list, host_rows, fork_list = slots.tolist(), plan.host_rows, rows.fork
        stepped_items = [i for i, slot in enumerate(slot_list) if slot in host_rows and not fork_list[i]]
        if stepped_items:
            stepped_rows = np.array([host_rows[slot_list[i]] for i in stepped_items], np.int64)
            silent[stepped_items], utt_tokens[stepped_items] = stepped_rows[:, 0], stepped_rows[:, 1]
        for i, slot in enumerate(slot_list if plan.floor_done else ()):
            if slot in plan.floor_done and not fork_list[i]:
                drop_before[i] = 0
        now_list = (samples / self.sample_rate).tolist()
        sparse = rows.sparse
        if rows.offset is not None:  # partial times in the caller's time (rounded as its finals are)
            partial_start = np.round(utt_start + rows.offset, 3).tolist()
            partial_end = np.round(samples / self.sample_rate + rows.offset, 3).tolist()
        restarted = set()  # items whose utterance start moves in this step (a final before the partial)
        finals, partials = plan.finals, plan.partials
        deltas, texts, heard = plan.deltas, self.text.partial, self.text.frames
        max_frames = self.max_utterance_frames
        columns = zip(slot_list, rows.stream_id, rows.samples, rows.is_last, rows.end_utterance, fork_list)
        for i, (slot, stream_id, chunk, last, end, fork) in enumerate(columns):
            if slot < 0:
                continue
            now = now_list[i]
            delta = deltas[slot] if slot in deltas else None

            def emit(final: Optional[Final]) -> None:
                if final is not None:
                    utt_start[i] = final.end
                    finals.setdefault(i, []).append(final)
                    restarted.add(i)

            if fork:  # the utterance so far + the forked tail's tokens; the stream stays as it was
                now = (store.samples[slot] + len(chunk)) / self.sample_rate
                final = self._final(self._utterance(slot, delta), now, utt_start[i])
                emit(final)
                if final is not None:
                    self._mark(stream_id, final, int(plan.marker[i]), now, plan)
                plan.deltas.pop(slot, None)
                plan.finished.append((slot, "clear", None))
                utt_tokens[i], split[i] = 0, True
                drop_before[i] = store.frames[slot] + -(-len(chunk) * self.frames_per_chunk // self.chunk_samples)
                continue
            if plan.ended[i]:
                final = self._final(self._utterance(slot, delta), now, utt_start[i])
                emit(final)
                if final is not None:
                    self._mark(stream_id, final, int(plan.marker[i]), now, plan)
                if last:
                    plan.closed.append((stream_id, slot))
                    continue
                plan.finished.append((slot, "clear", None))
                plan.restart.append(slot)
                utt_offset[i], silent[i], utt_tokens[i], split[i] = frames[i], 0, 0, False
                if end:
                    split[i] = True
                continue
            text, changed = (delta.partial, True) if delta is not None else (texts[slot], False)
            # max_utterance_s since the utterance's first token: cut it (inline: runs for every row)
            first = heard[slot] or (delta.frames if delta is not None else ())
            if max_frames is not None and first and frames[i] - first[0] >= max_frames:
                utterance = self._utterance(slot, delta)
                cut = self.text.cut_index(utterance[0])
                emit(self._final(tuple(x[:cut] for x in utterance), now, utt_start[i]))
                plan.finished.append((slot, "keep", cut))
                kept = utterance[0][cut:]
                utt_tokens[i], split[i], changed = len(kept), True, True
                text = self.text.texts(kept)[1]
            if end:
                skip = plan.finished[-1][2] if plan.finished and plan.finished[-1][0] == slot else 0
                emit(self._final(tuple(x[skip:] for x in self._utterance(slot, delta)), now, utt_start[i]))
                if skip:
                    plan.finished[-1] = (slot, "clear", None)
                else:
                    plan.finished.append((slot, "clear", None))
                split[i], utt_tokens[i] = True, 0
            elif text and (changed or not sparse):
                if rows.offset is None:
                    partials[i] = Partial(text=text, start=float(utt_start[i]), end=now)
                else:
                    start = partial_start[i] if i not in restarted else round(float(utt_start[i] + rows.offset[i]), 3)
                    partials[i] = Partial(text=text, start=start, end=partial_end[i], speaker=rows.speaker[i])
        if not sparse:
            plan.outputs = outputs = [StepOutput() for _ in range(n)]
            for i, events in finals.items():
                outputs[i].finals = events
            for i, partial in partials.items():
                outputs[i].partial = partial
        live = slots >= 0
        rows = slots[live]
        plan.host.update({
            "samples": (rows, samples[live]), "frames": (rows, frames[live]), "utt_offset": (rows, utt_offset[live]),
            "utt_start": (rows, utt_start[live]), "silent": (rows, silent[live]),
            "utt_tokens": (rows, utt_tokens[live]), "split": (rows, split[live]),
            "drop_before": (rows, drop_before[live]),
        })

    def _utterance(self, slot: int, delta) -> tuple[list, list, list]:
        """The utterance's tokens, stream frames and confidences with this step's delta (a copy)."""
        t = self.text
        if delta is None:
            return list(t.tokens[slot]), list(t.frames[slot]), list(t.confidence[slot])
        return t.tokens[slot] + delta.tokens, t.frames[slot] + delta.frames, t.confidence[slot] + delta.confidence

    def _final(self, utterance: tuple[list, list, list], now: float, utt_start: float) -> Optional[Final]:
        """An utterance (tokens, frames, confidences) as a final, with NeMo's words."""
        words = self.text.words_of(*utterance)
        line = self.text.sep.join(w.text for w in words).strip()
        if not line:
            return None
        out = [
            Word(word=w.text.strip(), start=round(min(w.start, now), 3), end=round(min(w.end, now), 3),
                 confidence=round(float(w.conf), 4))
            for w in words
            if w.text.strip()
        ]
        start = out[0].start if out else float(utt_start)
        end = out[-1].end if out else now
        return Final(text=line, start=start, end=end, words=out)
