"""cpWER (tools/multitalker/cpwer.py): concatenation per speaker, best permutation, missing speakers."""
import pytest

from tools.multitalker.cpwer import cpwer, edit_distance


def test_edit_distance_counts_each_kind_of_error():
    assert edit_distance("a b c".split(), "a b c".split()) == 0
    assert edit_distance("a b c".split(), "a x c".split()) == 1  # substitution
    assert edit_distance("a b c".split(), "a c".split()) == 1  # deletion
    assert edit_distance("a b c".split(), "a b c d".split()) == 1  # insertion
    assert edit_distance([], "a b".split()) == 2


def test_labels_do_not_matter_only_the_grouping():
    ref = {"A": ["hello there", "how are you"], "B": ["fine thanks"]}
    hyp = {"spk1": ["hello there how are you"], "spk0": ["fine thanks"]}
    assert cpwer(ref, hyp) == (0, 7)


def test_words_given_to_the_wrong_speaker_are_errors():
    ref = {"A": ["turn the lights on"], "B": ["yes please"]}
    hyp = {"x": ["turn the lights on please"], "y": ["yes"]}
    errors, n = cpwer(ref, hyp)
    assert (errors, n) == (2, 6)  # "please" inserted for A, deleted for B


def test_missing_and_extra_speakers_count_as_empty():
    ref = {"A": ["one two three"], "B": ["four five"]}
    assert cpwer(ref, {"x": ["one two three"]}) == (2, 5)
    assert cpwer(ref, {"x": ["one two three"], "y": ["four five"], "z": ["six"]}) == (1, 5)
    assert cpwer(ref, {}) == (5, 5)


def test_best_permutation_is_chosen():
    ref = {"A": ["a b c d"], "B": ["e f"]}
    hyp = {"s0": ["e f"], "s1": ["a b c x"]}
    assert cpwer(ref, hyp) == (1, 6)
    assert cpwer(ref, hyp)[0] / cpwer(ref, hyp)[1] == pytest.approx(1 / 6)
