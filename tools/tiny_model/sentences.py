"""Sentence generator for the tiny synthetic corpus.

Voice-agent style templates (so the demo reads naturally) mixed with random word strings (so the model
learns the acoustics of every word, not just the templates). Every word comes from words.txt; the
generator checks that, so the vocabulary file stays the single source of truth.
"""
from __future__ import annotations

import random
from pathlib import Path

HERE = Path(__file__).resolve().parent
WORDS = [w.strip() for w in (HERE / "words.txt").read_text().split() if w.strip()]
_WORDSET = set(WORDS)

DIGITS = "zero one two three four five six seven eight nine".split()
NUMS = DIGITS[1:] + ["ten"]
FOOD = "pizza pasta salad coffee tea water".split()
SIZE = "large small medium extra".split()
WHEN = ("today tomorrow tonight", "morning afternoon evening", "monday tuesday wednesday thursday friday")
DAYS = "today tomorrow tonight monday tuesday wednesday thursday friday".split()
PART = "morning afternoon evening".split()
THINGS = "meeting call alarm reminder timer table".split()
SHORT = ["yes", "no", "hello", "hi", "okay", "sure", "sorry", "goodbye", "help", "stop", "start", "repeat",
         "yes please", "no thanks", "thank you", "thanks", "okay thanks", "hello there", "repeat again",
         "please help", "stop please", "sure", "no sorry", "yes thank you"]


def _when(r: random.Random) -> str:
    c = r.random()
    if c < 0.5:
        return r.choice(DAYS)
    if c < 0.8:
        return f"{r.choice(['tomorrow', 'monday', 'friday', 'tuesday'])} {r.choice(PART)}"
    return f"next {r.choice(['week', 'monday', 'friday', 'weekend'])}"


def _digits(r: random.Random, lo: int, hi: int) -> str:
    return " ".join(r.choice(DIGITS) for _ in range(r.randint(lo, hi)))


def _template(r: random.Random) -> str:
    n, food, size, when = r.choice(NUMS), r.choice(FOOD), r.choice(SIZE), _when(r)
    thing = r.choice(THINGS)
    options = [
        lambda: r.choice(SHORT),
        lambda: f"i want to order a {size} {food}",
        lambda: f"order {n} {food}",
        lambda: f"can i order a {food} {r.choice(['with', 'without'])} cheese",
        lambda: f"{size} {food} please",
        lambda: f"what is the weather {when}",
        lambda: f"is it {r.choice(['cold', 'warm', 'sunny'])} {when}",
        lambda: f"rain {when}",
        lambda: f"schedule a meeting {when}",
        lambda: f"schedule a {thing} at {n}",
        lambda: f"cancel my {thing} {when}",
        lambda: f"move my {thing} to {when}",
        lambda: f"set a timer for {n} minutes",
        lambda: f"set an alarm at {n}",
        lambda: f"book a table for {n} {when}",
        lambda: f"call me {when} at {n}",
        lambda: f"my number is {_digits(r, 2, 4)}",
        lambda: f"send a message to my {r.choice(['meeting', 'table', 'call'])}",
        lambda: f"how much is the {food}",
        lambda: f"check the price",
        lambda: f"what time is it",
        lambda: f"play music {when}",
        lambda: f"turn the lights {r.choice(['on', 'off'])}",
        lambda: f"turn {r.choice(['on', 'off'])} the music",
        lambda: f"i need {n} hours",
        lambda: f"{n} minutes please",
        lambda: f"can you help me {when}",
        lambda: f"{r.choice(['yes', 'no', 'okay'])} {r.choice(['please', 'thanks'])} {r.choice(['order', 'cancel', 'check'])} the {r.choice(FOOD + THINGS)}",
        lambda: _digits(r, 1, 5),
    ]
    return r.choice(options)()


def _random_words(r: random.Random) -> str:
    k = r.choices([1, 2, 3, 4, 5, 6], weights=[2, 3, 3, 3, 2, 1])[0]
    return " ".join(r.choice(WORDS) for _ in range(k))


def sentence(r: random.Random) -> str:
    """One utterance: ~60 % template, ~40 % random words; 1-8 words."""
    s = _template(r) if r.random() < 0.6 else _random_words(r)
    words = s.split()[:8]
    bad = [w for w in words if w not in _WORDSET]
    assert not bad, f"words outside words.txt: {bad} in {s!r}"
    return " ".join(words)


def split_sentences(seed: int, n_train: int, n_test: int, n_template: int = 60) -> tuple[list[str], list[str]]:
    """Draw a train list (repeats allowed) and a test list of DISTINCT sentences never in train.

    Test sentences are drawn first, with 3-8 words, so held-out sentences are real sentences, not
    single words that training inevitably covers; the first `n_template` are template sentences
    (natural phrases for tests/assets and the demo).
    """
    r = random.Random(seed)
    test: list[str] = []
    seen: set[str] = set()
    while len(test) < n_test:
        s = _template(r) if len(test) < n_template else sentence(r)
        if 3 <= len(s.split()) <= 8 and s not in seen:
            seen.add(s)
            test.append(s)
    train = []
    while len(train) < n_train:
        s = sentence(r)
        if s not in seen:
            train.append(s)
    return train, test


if __name__ == "__main__":
    tr, te = split_sentences(0, 20, 10)
    print("\n".join(tr + ["--"] + te))
