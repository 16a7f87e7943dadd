"""Prompt-conditioned multilingual streaming (Nemotron 3.5 ASR): each stream its own language, one batch.

The model (NeMo's `EncDecRNNTBPEModelWithPrompt`) concatenates a one-hot language prompt to every
encoder frame and projects it back with `prompt_kernel` before the decoder. NeMo applies one prompt to a
whole call (`set_inference_prompt`); here each slot holds its prompt index (a host vector indexed by
slot), and a step builds a [B, num_prompts] one-hot from its rows, so sessions in different languages
share every batch. A stream's language comes with its first StepItem and with any item after a client
`configure` changes it; it applies from that chunk on (the encoder cache is language-free: the prompt
enters after the encoder, so nothing else has to restart).

`auto`: the model picks the language and ends each sentence with a tag piece (`<es-ES>`); the tag is cut
from the text and words, and the final (and the partials after it) carry the detected locale.
"""

from __future__ import annotations

import os
import re
import tarfile
from typing import Optional

import numpy as np

from pipecat_nvasr.protocol import Partial

from ..engine.adapter import StepItem, StepOutput
from ..languages import AUTO
from .vectorised import VectorisedRNNTAdapter

# Hugging Face ids of prompt-conditioned models (a hub model's config is not known before download)
PROMPT_MODELS = ("nvidia/nemotron-3.5-asr-streaming-0.6b",)


def takes_prompt(model: str) -> bool:
    """Whether `model` (a hub id, a local .nemo, a `random:` spec) is language-prompted, without loading it."""
    from .. import random_models

    if random_models.is_random(model):
        return bool(random_models.ARCHS[random_models.arch_of(model)].get("prompts"))
    if os.path.isfile(model):
        with tarfile.open(model, "r:*") as tar:
            for member in tar:
                if member.name.endswith("model_config.yaml"):
                    return b"prompt_dictionary" in tar.extractfile(member).read()
        return False
    return model in PROMPT_MODELS


_TAG = re.compile(r"\s*<([A-Za-z]{2,3}(?:-[A-Za-z0-9]{2,4})?)>")


class MultilingualRNNTAdapter(VectorisedRNNTAdapter):
    def __init__(self, model: str, *args, **kwargs):
        super().__init__(model, *args, **kwargs)
        asr = self.wrapper.asr_model
        prompts = asr.cfg.model_defaults.get("prompt_dictionary") if getattr(asr, "concat", False) else None
        if not prompts:
            raise ValueError(f"{model} has no language prompt (model_defaults.prompt_dictionary); "
                             "serve it with the English nemotron adapter")
        self.prompt_index = {str(k): int(v) for k, v in prompts.items()}
        self.locales = tuple(self.prompt_index)
        self.languages = tuple(sorted({loc.split("-")[0].lower() for loc in self.locales if loc != AUTO}))
        # NeMo's default prompt is index 0 (en-US on Nemotron 3.5)
        self.default_locale = min(self.prompt_index, key=self.prompt_index.get)
        self.num_prompts = int(asr.num_prompts)
        self._kernel = asr.prompt_kernel
        self._locale_of_index = {v: k for k, v in self.prompt_index.items()}
        self._prompt = np.zeros(self.max_streams, np.int64)  # slot → prompt index
        self._detected = [None] * self.max_streams  # slot → locale the model last tagged (auto)
        self._items: list[StepItem] = []
        self._changes: dict[int, int] = {}

    # ------------------------------------------------------------------ engine contract

    def prepare(self, items: list[StepItem]):
        """The vectorised step with each row's prompt; then the events' language tags. Writes
        nothing: the slots' new prompts and detected locales go into the plan for `commit`."""
        changes = {}
        for i, item in enumerate(items):
            if item.language is not None or item.is_first:
                locale = item.language or self.default_locale
                if locale not in self.prompt_index:
                    raise ValueError(f"stream {item.stream_id}: locale {locale!r} is not one of {list(self.locales)}")
                changes[i] = self.prompt_index[locale]
        self._items, self._changes = items, changes
        plan = super().prepare(items)
        plan.prompts = {int(plan.slots[i]): index for i, index in changes.items() if plan.slots[i] >= 0}
        plan.detected = {int(plan.slots[i]): None for i, item in enumerate(items) if item.is_first and plan.slots[i] >= 0}
        for slot, out in zip(plan.slots.tolist(), plan.outputs):
            if slot >= 0:
                self._tag_events(plan, slot, out)
        return plan

    def commit(self, plan) -> list:
        for slot, index in plan.prompts.items():  # the model calls are done: the new prompts stick
            self._prompt[slot] = index
        for slot, locale in plan.detected.items():
            self._detected[slot] = locale
        return super().commit(plan)

    def _after_encoder(self, encoded, items: np.ndarray):
        """Apply each row's prompt: [B, D, T] → cat one-hot [B, T, P] → prompt_kernel → [B, D, T].

        Reads state only: a row whose item brings a new language uses it here, and the slot's
        prompt is written by `commit`, so a failed step changes nothing."""
        torch = self._torch
        slot_of, stepped, changes = self.store.slot_of, self._items, self._changes
        index = [changes.get(i, -1) for i in items.tolist()]
        for row, i in enumerate(items.tolist()):
            if index[row] < 0:
                index[row] = int(self._prompt[slot_of[stepped[i].stream_id]])
        rows = torch.tensor(index, dtype=torch.long).to(encoded.device, non_blocking=True)
        onehot = torch.nn.functional.one_hot(rows, self.num_prompts).to(encoded.dtype)
        frames = encoded.transpose(1, 2)
        prompt = onehot[:, None, :].expand(-1, frames.shape[1], -1)
        return self._kernel(torch.cat([frames, prompt], dim=-1)).to(encoded.dtype).transpose(1, 2)

    # ------------------------------------------------------------------ language on the events

    def _tag_events(self, plan, slot: int, out: StepOutput) -> None:
        """Cut `auto`'s language tags from a slot's finals and partial; label them with the language."""
        finals = []
        for final in out.finals:
            text, tag = self._untag(final.text)
            if tag is not None:
                plan.detected[slot] = tag
                final.words = [w for w in final.words if self._untag_word(w)]
                if not text:
                    continue
                final.text = text
            final.language = self._language(plan, slot)
            finals.append(final)
        out.finals = finals
        partial: Optional[Partial] = out.partial
        if partial is not None:
            text, tag = self._untag(partial.text)
            if tag is not None:
                plan.detected[slot] = tag
            out.partial = Partial(text=text, start=partial.start, end=partial.end,
                                  language=self._language(plan, slot)) if text else None

    def _language(self, plan, slot: int) -> Optional[str]:
        """The requested locale, or in auto mode the one the model last tagged (None before any)."""
        locale = self._locale_of_index[int(plan.prompts.get(slot, self._prompt[slot]))]
        if locale != AUTO:
            return locale
        return plan.detected[slot] if slot in plan.detected else self._detected[slot]

    def _untag(self, text: str) -> tuple[str, Optional[str]]:
        """Text without language tags, and the last tag that names a served locale."""
        tags = [t for t in _TAG.findall(text) if t in self.prompt_index]
        return (_TAG.sub("", text).strip(), tags[-1]) if tags else (text, None)

    def _untag_word(self, word) -> bool:
        word.word = _TAG.sub("", word.word).strip()
        return bool(word.word)
