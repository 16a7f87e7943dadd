"""A multitalker finalize from a forked tail: every open speaker's final at the next step.

With the diarizer's look-ahead a session holds its newest chunks back (the ASR hears a chunk once
the diarizer has seen the audio after it), so a finalize's tail is those held chunks plus the
partial chunk up to the finalize point. Waiting for it costs a chunk of audio plus a sub-step per
held chunk; draining it at once would diarize the held chunks without their look-ahead and
commit that into the session.

Instead the session is COPIED into a spare session slot: its host bookkeeping, its diarizer row
(`StreamingDiarizer.copy_rows`) and each open speaker row (`VectorisedRNNTAdapter.clone`). The
copy takes the step in the session's place, batched with every other session: it drains the held
chunks and the zero-padded partial chunk as a finalize does, the partial chunk as forked row items
(nothing of them stored), and its finals answer the finalize. The copy is then dropped. The
session itself has not moved: when the client's audio fills the chunk it diarizes the held chunks
with their real look-ahead and steps them exactly as without the finalize.

The split is decided with encoder frames, as the single-stream fork does: each open row's
utterance ends now (`split`: its text went out in the copy's final) and the tokens it writes over
the frames the copy was stepped ahead are dropped; a speaker row the copy opened gets that floor
when the session's own row for the speaker opens (`floors`), measured from the session sample
where the finalize fell (a row that opens later than that drops nothing).
"""

from __future__ import annotations

import numpy as np

# per-session host bookkeeping, indexed by session slot: a copy takes all of it
SESSION_ARRAYS = ("row_id", "quiet", "since_spoke", "talking", "row_start", "row_fed", "samples", "diarized", "held",
                  "held_len", "held_n", "past_audio", "past_probs", "past_count", "fork_point")


class ForkedFinalize:
    """Mixed into MultitalkerAdapter (it provides `_step`, the session arrays, `asr`, `diar`,
    `boost`, `_next_row`, `_copies`, `fork_slots`, `chunk_samples`)."""

    def _step_with_copies(self, items, slots, opened):
        """`_step`, with each forked finalize's session replaced by its copy (at most `fork_slots`)."""
        forks = [(i, int(slots[i])) for i, item in enumerate(items) if item.fork]
        copies = []
        try:
            points = [int(self.samples[slot] + self.held_len[slot, : self.held_n[slot]].sum() + len(items[i].samples))
                      for i, slot in forks]  # the finalize's session sample
            for i, slot in forks:
                copies.append(self._fork_session(slot))
                slots[i] = copies[-1]
            outputs = self._step(items, slots, opened)
            for (_, slot), copy, point in zip(forks, copies, points):
                self._split_at_fork(slot, copy, point)
            return outputs
        finally:
            for copy in copies:
                self._drop_copy(copy)

    def _fork_session(self, slot: int) -> int:
        """A spare session slot holding an exact copy of session `slot` (rows cloned under new ids)."""
        if not self._copies:
            raise RuntimeError("no spare multitalker session slot for a forked finalize")
        copy = self._copies.pop()
        for name in SESSION_ARRAYS:
            array = getattr(self, name)
            array[copy] = array[slot]
        if slot in self.boost:
            self.boost[copy] = self.boost[slot]
        self.row_id[copy] = -1
        try:
            self.diar.copy_rows([slot], [copy])
            for k, row in enumerate(self.row_id[slot].tolist()):
                if row >= 0:
                    clone, self._next_row = self._next_row, self._next_row + 1
                    self.asr.clone(row, clone)
                    self.row_id[copy, k] = clone
        except BaseException:
            self._drop_copy(copy)
            raise
        return copy

    def _split_at_fork(self, slot: int, copy: int, point: int) -> None:
        """After the copy answered the finalize: every speaker the copy finalized has its utterance
        split in the session at the frames the copy ran ahead (`point`: the finalize's sample)."""
        frames_per_sample = self.asr.frames_per_chunk / self.chunk_samples
        for k in np.flatnonzero(self.row_id[copy] >= 0).tolist():
            row = int(self.row_id[slot, k])
            if row >= 0:
                ahead = int(self.row_fed[copy, k] - self.row_fed[slot, k])
                self.asr.split(row, int(np.ceil(ahead * frames_per_sample)))
            else:  # a row the copy opened: the session's own row drops what the final holds, once it opens
                self.fork_point[slot, k] = point

    def _opening_floor(self, slot: int, k: int, row: int, started: int) -> None:
        """A row of session `slot` opens at session sample `started`: the part of it before the last
        forked finalize's point (speaker k's words there are in that final) is dropped."""
        ahead = int(self.fork_point[slot, k]) - started
        if ahead > 0:
            self.asr.floors[row] = int(np.ceil(ahead * self.asr.frames_per_chunk / self.chunk_samples))

    def _drop_copy(self, copy: int) -> None:
        self.asr.release_all(self.row_id[copy][self.row_id[copy] >= 0].tolist())
        self.row_id[copy] = -1
        self.boost.pop(copy, None)
        self._copies.append(copy)
