"""Utterance text, built incrementally: only streams that emitted tokens this step do any work.

A partial is the utterance's SentencePiece pieces joined (a leading `▁` becomes the word
separator), so each new token appends its piece's text to the utterance's raw string —
never re-decoding the whole hypothesis. Finals are rare (one per utterance): their words,
word timestamps and confidences come from NeMo's own `BPEDecoder.group_tokens_into_words`
over the utterance's tokens, frames and confidences, exactly as NeMo's pipeline builds them.
"""

from __future__ import annotations

import re

from nemo.collections.asr.inference.utils.constants import POST_WORD_PUNCTUATION, SENTENCEPIECE_UNDERSCORE


class UtteranceText:
    def __init__(self, num_slots: int, vocabulary: list[str], bpe_decoder, sep: str, leading_punctuation: str):
        self.piece_text = [p.replace(SENTENCEPIECE_UNDERSCORE, sep) if p.startswith(SENTENCEPIECE_UNDERSCORE) else p
                           for p in vocabulary]
        self.bpe = bpe_decoder
        self.sep = sep
        self.leading = re.compile(leading_punctuation) if leading_punctuation else None
        self.tokens: list[list[int]] = [[] for _ in range(num_slots)]
        self.frames: list[list[int]] = [[] for _ in range(num_slots)]  # stream frames
        self.confidence: list[list[float]] = [[] for _ in range(num_slots)]
        self.raw = [""] * num_slots
        self.partial = [""] * num_slots  # what a Partial carries now

    def clear(self, slot: int) -> None:
        self.tokens[slot] = []
        self.frames[slot] = []
        self.confidence[slot] = []
        self.raw[slot] = ""
        self.partial[slot] = ""

    def extend(self, slot: int, tokens: list[int], frames: list[int], confidence: list[float]) -> None:
        old = self.frames[slot]
        if old and frames[0] <= old[-1]:  # NeMo's merge_timesteps: keep frames increasing
            gap = old[-1] - frames[0] + 1
            frames = [f + gap for f in frames]
        self.tokens[slot] += tokens
        old += frames
        self.confidence[slot] += confidence
        raw = self.raw[slot] + "".join([self.piece_text[t] for t in tokens])
        self.raw[slot] = raw
        self.partial[slot] = (self.leading.sub(r"\1", raw) if self.leading else raw).strip()

    def words(self, slot: int):
        """NeMo's words (text, start, end in seconds, conf) for the utterance in `slot`."""
        if not self.tokens[slot]:
            return []
        words, _ = self.bpe.group_tokens_into_words(self.tokens[slot], self.frames[slot], self.confidence[slot])
        if words and words[0].text in POST_WORD_PUNCTUATION:
            words = words[1:]  # NeMo drops a leading punctuation word when no word precedes it
        return words
