"""cpWER: concatenated minimum-permutation word error rate of a speaker-labelled transcript (stdlib only).

Each speaker's utterances are joined in order into one word sequence, on both sides; the hypothesis
speakers are matched one-to-one to the reference speakers by the permutation with the fewest total word
edits (a speaker missing on either side counts as an empty sequence: all its words are deleted or
inserted). cpWER = errors / reference words. Labels need not agree ("spk0" vs "alice"): only the
grouping matters, which is what a diarized transcript can be judged on.
"""
from __future__ import annotations

import itertools


def edit_distance(ref: list[str], hyp: list[str]) -> int:
    """Word-level Levenshtein distance (substitutions + deletions + insertions)."""
    prev = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        cur = [i] + [0] * len(hyp)
        for j, h in enumerate(hyp, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r != h))
        prev = cur
    return prev[-1]


def _words(utterances: list[str]) -> list[str]:
    return " ".join(utterances).split()


def cpwer(ref_by_speaker: dict[str, list[str]], hyp_by_speaker: dict[str, list[str]]) -> tuple[int, int]:
    """(errors, reference words) under the best speaker permutation; divide for the rate."""
    refs = [_words(v) for v in ref_by_speaker.values()]
    hyps = [_words(v) for v in hyp_by_speaker.values()]
    k = max(len(refs), len(hyps))
    refs += [[]] * (k - len(refs))
    hyps += [[]] * (k - len(hyps))
    cost = [[edit_distance(r, h) for h in hyps] for r in refs]
    best = min(sum(cost[i][p[i]] for i in range(k)) for p in itertools.permutations(range(k))) if k else 0
    return best, sum(len(r) for r in refs)
