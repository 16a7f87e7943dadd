"""A vectorised step's items as columns: what the step reads of them, with no object per row.

The engine hands the step a list of `StepItem`s (`Rows.of`, one pass per column). The multitalker
builds the rows of its ASR step straight from its arrays (`Rows(...)`), so a speaker row costs no
Python object on the way in, and with `sparse` none on the way out either: the step's events come
back as `Prepared.finals` / `Prepared.partials`, keyed by row, for the rows that have one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from ..engine.adapter import StepItem


@dataclass
class Rows:
    stream_id: list[int]
    samples: list[np.ndarray]  # each row's chunk (a last one may be shorter, even empty)
    is_first: list[bool]
    is_last: list[bool]
    end_utterance: list[bool]
    fork: list[bool]
    boost: dict[int, list] = field(default_factory=dict)  # row → the key phrases given with it
    # sparse: events only where a row has one, as `Prepared.finals/partials` (no StepOutput per
    # row), and a partial only when its text changed in the step — the session sends a partial
    # only when its text differs from the last one it sent (engine/session.py `deliver`)
    sparse: bool = False
    # seconds added to the partials' times, and their speaker, per row (sparse only: the
    # multitalker's rows, in session time)
    offset: Optional[np.ndarray] = None
    speaker: Optional[list[str]] = None

    def __len__(self) -> int:
        return len(self.stream_id)

    @classmethod
    def of(cls, items: list[StepItem]) -> "Rows":
        return cls(
            stream_id=[item.stream_id for item in items], samples=[item.samples for item in items],
            is_first=[item.is_first for item in items], is_last=[item.is_last for item in items],
            end_utterance=[item.end_utterance for item in items], fork=[item.fork for item in items],
            boost={i: item.boost for i, item in enumerate(items) if item.boost is not None},
        )
