"""Cut a stream into utterances from per-window VAD decisions (pure logic, no model).

A window that starts speech opens an utterance with up to `pre_roll` samples of the audio
before it (the VAD confirms speech only after `start_secs`, so the onset lies in the past).
The utterance ends when the VAD is quiet again (after its stop silence), or is cut at
`max_samples` — then the next utterance starts at once, so long speech loses nothing.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Optional

import numpy as np


@dataclass
class Utterance:
    start: int  # stream sample of the first sample
    samples: np.ndarray

    @property
    def end(self) -> int:
        return self.start + len(self.samples)


class UtteranceCutter:
    def __init__(self, pre_roll_samples: int, max_samples: int):
        self.pre_roll_samples = pre_roll_samples
        self.max_samples = max_samples
        self.position = 0  # stream samples seen
        self._pre_roll: deque[np.ndarray] = deque()
        self._pre_roll_len = 0
        self._parts: Optional[list[np.ndarray]] = None  # the open utterance, if any
        self._length = 0
        self._start = 0

    @property
    def in_utterance(self) -> bool:
        return self._parts is not None

    def push(self, window: np.ndarray, speech: bool, quiet: bool) -> Optional[Utterance]:
        """Feed one window; `speech`: the VAD confirms speech, `quiet`: it has fully stopped."""
        before = self.position
        self.position += len(window)
        if self._parts is None:
            if speech:
                self._open(before - self._pre_roll_len, list(self._pre_roll) + [window])
                self._clear_pre_roll()
            else:
                self._remember(window)
            return None
        self._parts.append(window)
        self._length += len(window)
        if quiet:
            return self._cut()
        if self._length >= self.max_samples:
            done = self._cut()
            self._open(self.position, [])  # speech goes on: the next utterance starts here
            return done
        return None

    def flush(self, tail: np.ndarray, starting: bool = False) -> Optional[Utterance]:
        """End of stream or finalize: the open utterance plus `tail` (samples short of a window).

        `starting`: the VAD heard speech it has not confirmed yet; keep it rather than lose it.
        """
        if self._parts is None and starting:
            self._open(self.position - self._pre_roll_len, list(self._pre_roll))
        self._clear_pre_roll()
        self.position += len(tail)
        if self._parts is None:
            return None
        self._parts.append(tail)
        self._length += len(tail)
        return self._cut()

    def _open(self, start: int, parts: list[np.ndarray]) -> None:
        self._parts = parts
        self._length = sum(len(p) for p in parts)
        self._start = start

    def _cut(self) -> Optional[Utterance]:
        parts, self._parts = self._parts, None
        if not parts or not self._length:
            return None
        return Utterance(self._start, np.concatenate(parts).astype(np.float32, copy=False))

    def _remember(self, window: np.ndarray) -> None:
        self._pre_roll.append(window)
        self._pre_roll_len += len(window)
        while self._pre_roll and self._pre_roll_len - len(self._pre_roll[0]) >= self.pre_roll_samples:
            self._pre_roll_len -= len(self._pre_roll.popleft())

    def _clear_pre_roll(self) -> None:
        self._pre_roll.clear()
        self._pre_roll_len = 0
