"""Per-stream key-phrase boosting: one boosting graph per stream in NeMo's biasing multi-model.

A stream's phrases become a `GPUBoostingTreeModel` (tokenised into a prefix tree: the costly
part, done by `compile`, which touches no shared state and may run on any thread — the server
compiles a `configure`'s phrases before the session's next chunk reaches the inference thread)
and are then added to the decoder's multi-model (a buffer append, on the inference thread). A row
of the step carries its graph's id (-1: none).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Iterable, Optional

from pipecat_nvasr.protocol import BoostPhrase

CACHE = 256  # compiled phrase lists kept (many sessions of one app share a list)


class Boosting:
    def __init__(self, computer, tokenizer):
        self.computer = computer
        self.tokenizer = tokenizer
        self.by_slot: dict[int, object] = {}  # slot → its BiasingRequestItemConfig
        self._compiled: "OrderedDict[tuple, object]" = OrderedDict()
        self._lock = threading.Lock()  # compile runs off the inference thread

    @property
    def enabled(self) -> bool:
        return bool(self.computer.per_stream_biasing_enabled)

    @staticmethod
    def _key(phrases: list[BoostPhrase]) -> tuple:
        return tuple((b.phrase, float(b.weight)) for b in phrases)

    def compile(self, phrases: list[BoostPhrase]) -> None:
        """Tokenise `phrases` into their boosting graph, ahead of the step that uses it (any thread)."""
        if not phrases or not self.enabled:
            return
        key = self._key(phrases)
        with self._lock:
            if key in self._compiled:
                self._compiled.move_to_end(key)
                return
        from nemo.collections.asr.parts.context_biasing.boosting_graph_batched import (
            BoostingTreeModelConfig,
            GPUBoostingTreeModel,
        )

        tree = BoostingTreeModelConfig(key_phrases_list=[b.phrase for b in phrases], use_triton=False)
        model = GPUBoostingTreeModel.from_config(tree, tokenizer=self.tokenizer)
        with self._lock:
            self._compiled[key] = model
            while len(self._compiled) > CACHE:
                self._compiled.popitem(last=False)

    def build(self, phrases: list[BoostPhrase]) -> Optional[object]:
        """The config of a stream's graph, added to the multi-model (None: no phrases)."""
        if not phrases or not self.enabled:
            return None
        from nemo.collections.asr.parts.context_biasing.biasing_multi_model import BiasingRequestItemConfig

        self.compile(phrases)  # a no-op when the server compiled them already
        with self._lock:
            model = self._compiled[self._key(phrases)]
        cfg = BiasingRequestItemConfig(boosting_model_alpha=max(b.weight for b in phrases))
        cfg.multi_model_id = self.computer.biasing_multi_model.add_model(model=model, alpha=cfg.boosting_model_alpha)
        return cfg

    @staticmethod
    def id_of(cfg: Optional[object]) -> int:
        return -1 if cfg is None else int(cfg.multi_model_id)

    def model_id(self, slot: int) -> int:
        return self.id_of(self.by_slot.get(slot))

    def set(self, slot: int, cfg: Optional[object]) -> None:
        """`cfg` becomes the slot's graph; the one it had leaves the multi-model."""
        old = self.by_slot.pop(slot, None)
        if old is not None and old is not cfg:
            old.remove_from_multi_model(biasing_multi_model=self.computer.biasing_multi_model)
        if cfg is not None:
            self.by_slot[slot] = cfg

    def discard(self, cfgs: Iterable[Optional[object]]) -> None:
        """Take graphs added for a step that failed out of the multi-model again."""
        for cfg in cfgs:
            if cfg is not None:
                cfg.remove_from_multi_model(biasing_multi_model=self.computer.biasing_multi_model)
