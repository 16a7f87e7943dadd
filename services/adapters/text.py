"""Utterance text, built incrementally: only streams that emitted tokens this step do any work.

A partial is the utterance's SentencePiece pieces joined (a leading `▁` becomes the word
separator), so each new token appends its piece's text — never re-decoding or re-scanning the
whole utterance: the space-before-punctuation rule runs over the new text only (plus any
whitespace held back from the previous step). Finals are rare (one per utterance): their words,
word timestamps and confidences come from NeMo's own `BPEDecoder.group_tokens_into_words` over
the utterance's tokens, frames and confidences, exactly as NeMo's pipeline builds them.

Two phases, for the step's atomicity: `delta(...)` computes a step's change without touching
anything (the step's prepare), `apply(...)` stores it (its commit).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from nemo.collections.asr.inference.utils.constants import POST_WORD_PUNCTUATION, SENTENCEPIECE_UNDERSCORE


@dataclass
class Delta:
    """A step's new tokens for one slot, and the utterance text they make."""

    tokens: list[int]
    frames: list[int]  # stream frames, made increasing after the utterance's last one
    confidence: list[float]
    clean: str  # the utterance's text with the punctuation rule applied (trailing space included)
    partial: str


class UtteranceText:
    def __init__(self, num_slots: int, vocabulary: list[str], bpe_decoder, sep: str, leading_punctuation: str):
        self.piece_text = [p.replace(SENTENCEPIECE_UNDERSCORE, sep) if p.startswith(SENTENCEPIECE_UNDERSCORE) else p
                           for p in vocabulary]
        # a piece that starts a word: an utterance may be cut before it (max utterance length)
        self.word_start = [p.startswith(SENTENCEPIECE_UNDERSCORE) for p in vocabulary]
        self.bpe = bpe_decoder
        self.sep = sep
        self.leading = re.compile(leading_punctuation) if leading_punctuation else None
        self.tokens: list[list[int]] = [[] for _ in range(num_slots)]
        self.frames: list[list[int]] = [[] for _ in range(num_slots)]  # stream frames
        self.confidence: list[list[float]] = [[] for _ in range(num_slots)]
        self.clean = [""] * num_slots
        self.partial = [""] * num_slots  # what a Partial carries now

    def clear(self, slot: int) -> None:
        self.tokens[slot] = []
        self.frames[slot] = []
        self.confidence[slot] = []
        self.clean[slot] = ""
        self.partial[slot] = ""

    def copy(self, source: int, target: int) -> None:
        for lists in (self.tokens, self.frames, self.confidence):
            lists[target] = list(lists[source])
        self.clean[target], self.partial[target] = self.clean[source], self.partial[source]

    def delta(self, slot: int, tokens: list[int], frames: list[int], confidence: list[float]) -> Delta:
        old = self.frames[slot]
        if old and frames[0] <= old[-1]:  # NeMo's merge_timesteps: keep frames increasing
            gap = old[-1] - frames[0] + 1
            frames = [f + gap for f in frames]
        clean = self._append(self.clean[slot], "".join([self.piece_text[t] for t in tokens]))
        return Delta(tokens, frames, confidence, clean, clean.strip())

    def _append(self, clean: str, new: str) -> str:
        """`clean + new` with spaces before punctuation removed, scanning only the new part."""
        if self.leading is None:
            return clean + new
        body = clean.rstrip()
        return body + self.leading.sub(r"\1", clean[len(body):] + new)

    def apply(self, slot: int, delta: Delta) -> None:
        self.tokens[slot] += delta.tokens
        self.frames[slot] += delta.frames
        self.confidence[slot] += delta.confidence
        self.clean[slot] = delta.clean
        self.partial[slot] = delta.partial

    def cut_index(self, tokens: list[int]) -> int:
        """Where an utterance may be cut: before its last word-starting token (all of it if none)."""
        for i in range(len(tokens) - 1, 0, -1):
            if self.word_start[tokens[i]]:
                return i
        return len(tokens)

    def words_of(self, tokens: list[int], frames: list[int], confidence: list[float]):
        """NeMo's words (text, start, end in seconds, conf) of an utterance's tokens; reads only."""
        if not tokens:
            return []
        words, _ = self.bpe.group_tokens_into_words(tokens, frames, confidence)
        if words and words[0].text in POST_WORD_PUNCTUATION:
            words = words[1:]  # NeMo drops a leading punctuation word when no word precedes it
        return words

    def keep_from(self, slot: int, index: int) -> None:
        """The utterance becomes its tokens from `index` on (the rest went out as a final)."""
        tokens, frames, conf = self.tokens[slot][index:], self.frames[slot][index:], self.confidence[slot][index:]
        self.clear(slot)
        if tokens:
            self.apply(slot, Delta(tokens, frames, conf, *self.texts(tokens)))

    def texts(self, tokens: list[int]) -> tuple[str, str]:
        """(clean text, partial) of an utterance made of `tokens` alone."""
        clean = self._append("", "".join([self.piece_text[t] for t in tokens]))
        return clean, clean.strip()
