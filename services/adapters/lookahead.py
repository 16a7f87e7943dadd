"""Which chunk each multitalker session transcribes in each sub-step of a step.

The diarizer looks `hold` chunks ahead, so a session holds its newest chunks back until the audio
after them has arrived; a finalize or the stream's end drains them (all of them, one sub-step
each). A step is one or more sub-steps, each with one chunk per session in it (`SubChunks`).

The common step, where every session holds exactly `hold` whole chunks and brings one more, is
built from the arrays alone: one window matrix, no per-session lists, copies or objects (issue 22).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np

from ..engine.adapter import StepItem


@dataclass
class SubChunks:
    """One chunk per session of one sub-step, over the step's items `members`. `samples[j]` is
    member j's chunk (empty: nothing due, but the session ends or finalizes in this sub-step) and
    `windows[j]` that chunk followed by its look-ahead, for the diarizer (None when empty)."""

    members: np.ndarray
    samples: Sequence[np.ndarray]
    lengths: np.ndarray
    windows: Sequence[Optional[np.ndarray]]
    window_lengths: np.ndarray
    is_last: np.ndarray
    end_utterance: np.ndarray
    fork: np.ndarray


def plan(items: list[StepItem], slots: np.ndarray, held: np.ndarray, held_len: np.ndarray,
         held_n: np.ndarray, hold: int) -> tuple[list[SubChunks], Callable[[], None]]:
    """The step's sub-steps, oldest chunk first, and `keep`: it stores what stays held, to be
    called once every sub-step succeeded. `held` [slots, hold, chunk] with `held_len` and
    `held_n` are the adapter's look-ahead buffers."""
    draining = [item.is_last or item.end_utterance or item.fork for item in items]
    if not any(draining) and (held_n[slots] == hold).all() and (held_len[slots, :hold] == held.shape[2]).all():
        return _steady(items, slots, held, hold)
    return _draining(items, slots, held, held_len, held_n, hold)


def _steady(items: list[StepItem], slots: np.ndarray, held: np.ndarray, hold: int):
    """Every session transcribes its oldest held chunk, with the rest and the new one as its
    look-ahead, and then holds the newest `hold` chunks."""
    count, n = len(items), held.shape[2]
    window = np.empty((count, (hold + 1) * n), np.float32)
    window[:, : hold * n] = held[slots, :hold].reshape(count, hold * n)
    for j, item in enumerate(items):  # (a whole chunk each: only a last or forked item is short)
        window[j, hold * n :] = item.samples
    no = np.zeros(count, bool)
    sub = SubChunks(members=np.arange(count), samples=window[:, :n], lengths=np.full(count, n, np.int64),
                    windows=window, window_lengths=np.full(count, window.shape[1], np.int64),
                    is_last=no, end_utterance=no, fork=no)

    def keep() -> None:
        held[slots, :hold] = window[:, n:].reshape(count, hold, n)

    return [sub], keep


def _draining(items: list[StepItem], slots: np.ndarray, held: np.ndarray, held_len: np.ndarray,
              held_n: np.ndarray, hold: int):
    """Any other step: per session its held chunks then the new one, all but `hold` of them due
    (all of them on a finalize or the stream's end); sub-step r takes each session's r-th due
    chunk, and a session that ends or finalizes joins its last one (with no audio if none is due)."""
    pending, due = [], np.empty(len(items), np.int64)
    for i, item in enumerate(items):
        slot = slots[i]
        chunks = [held[slot, j, : held_len[slot, j]] for j in range(held_n[slot])]
        if len(item.samples):
            chunks.append(item.samples)
        pending.append(chunks)
        drain = item.is_last or item.end_utterance
        due[i] = len(chunks) if drain else max(0, len(chunks) - hold)
    rounds = []
    for r in range(max(1, int(due.max(initial=0)))):
        take = np.flatnonzero(due > r)
        ends = [i for i, item in enumerate(items) if (item.is_last or item.end_utterance) and max(1, due[i]) - 1 == r]
        members = sorted(set(take.tolist()) | set(ends))
        if not members:
            continue
        samples, windows, last, end, fork = [], [], [], [], []
        for i in members:
            item, last_round, now = items[i], max(1, due[i]) - 1 == r, due[i] > r
            samples.append(pending[i][r] if now else item.samples[:0])
            windows.append(np.concatenate(pending[i][r : r + 1 + hold]) if now else None)
            last.append(item.is_last and last_round)
            end.append(item.end_utterance and last_round)
            fork.append(item.fork and last_round)
        rounds.append(SubChunks(members=np.array(members, np.int64), samples=samples,
                                lengths=np.array([len(s) for s in samples], np.int64), windows=windows,
                                window_lengths=np.array([0 if w is None else len(w) for w in windows], np.int64),
                                is_last=np.array(last, bool), end_utterance=np.array(end, bool),
                                fork=np.array(fork, bool)))

    def keep() -> None:
        for i in range(len(items)):
            slot, rest = slots[i], pending[i][due[i] :]
            held_n[slot] = len(rest)
            for j, chunk in enumerate(rest):
                held[slot, j, : len(chunk)] = chunk
                held_len[slot, j] = len(chunk)

    return rounds, keep
