"""The official VQA answer normalisation and soft accuracy (prismatic.eval.vqa_normalize) on hand-picked cases: the
contractions, number words, articles, punctuation rules and the official regexes' quirks, and the leave-one-out
min(#matches / 3, 1) average worked out by hand."""

from __future__ import annotations

import random

import pytest

from prismatic.eval.vqa_normalize import (
    CONTRACTIONS,
    VIZWIZ_CONTRACTIONS,
    normalize_prediction,
    process_digit_article,
    process_punctuation,
    soft_accuracy,
    vizwiz_accuracy,
    vqa_accuracy,
)


@pytest.mark.parametrize(
    ("raw", "normalised"),
    [
        ("dont", "don't"),  # contractions map
        ("Whats that", "what's that"),
        ("Two.", "2"),  # lowercase, number word, final period
        ("none", "0"),
        ("ten", "10"),
        ("eleven", "eleven"),  # the map stops at ten
        ("twenty two", "twenty 2"),
        ("a dog.", "dog"),  # article dropped
        ("The Cat and an apple", "cat and apple"),
        ("10,000", "10000"),  # a digit-comma-digit anywhere: every mark is deleted, not spaced
        ("1,5 and x-ray", "15 and xray"),
        ("3.5", "3.5"),  # a period before a digit stays
        ("1.", "1"),
        ("v1.2.", "v1.2"),
        ("yes, it is", "yes it is"),  # "," next to a space: deleted
        ("left-handed", "left handed"),  # "-" between letters: a space
        ("hot - dog", "hot dog"),  # " -": deleted, the double space collapses
        ("What?", "what"),
        ("It's fine!", "it's fine"),  # apostrophes are not punctuation here
        ("yes\nno\tmaybe ", "yes no maybe"),
        ("  Unanswerable. ", "unanswerable"),
    ],
)
def test_prediction_normalisation(raw: str, normalised: str) -> None:
    assert normalize_prediction(raw) == normalised


def test_punctuation_rules_and_official_quirks() -> None:
    assert process_punctuation("a,b") == "a b" and process_punctuation("a, b") == "a b"
    assert process_punctuation("(red)") == " red "
    assert process_punctuation("red (dark)") == "red dark "  # " (" has a space: deleted; ")" has none: a space
    # The official period regex deletes periods not followed by a digit, at most 32 of them (`count=re.UNICODE`).
    assert process_punctuation("e.g.") == "eg" and process_punctuation("." * 40) == "." * 8
    # Capitalised keys of the contractions map can never match lowercased text.
    assert process_digit_article("Im") == "im" and process_digit_article("somebody'd") == "somebodyd"


def test_contraction_maps() -> None:
    assert len(CONTRACTIONS) == len(VIZWIZ_CONTRACTIONS) == 120
    assert CONTRACTIONS["dont"] == "don't" and CONTRACTIONS["twas"] == "'twas"
    # VizWiz's copy writes most apostrophes as backticks; a few entries keep them.
    assert VIZWIZ_CONTRACTIONS["dont"] == "don`t" and VIZWIZ_CONTRACTIONS["let`s"] == "let`s"
    assert VIZWIZ_CONTRACTIONS["cant"] == "can't" and VIZWIZ_CONTRACTIONS["weve"] == "we've"
    assert VIZWIZ_CONTRACTIONS["couldn'tve"] == "couldn`t`ve" and "yall`d`ve" in VIZWIZ_CONTRACTIONS
    assert normalize_prediction("dont", VIZWIZ_CONTRACTIONS) == "don`t"


@pytest.mark.parametrize(("matching", "expected"), [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (10, 1.0)])
def test_soft_accuracy_by_hand(matching: int, expected: float) -> None:
    """k of 10 annotators agree: leaving out one of the k leaves k - 1 matches, leaving out another leaves k.
    k = 1: (9 x 1/3) / 10; k = 2: (8 x 2/3 + 2 x 1/3) / 10; k = 3: (7 x 1 + 3 x 2/3) / 10."""
    answers = ["yes"] * matching + ["no"] * (10 - matching)
    assert soft_accuracy("yes", answers) == pytest.approx(expected)
    random.Random(matching).shuffle(answers)  # the order of the annotators does not matter
    assert soft_accuracy("yes", answers) == pytest.approx(expected)


def test_soft_accuracy_equals_the_leave_one_out_loop() -> None:
    rng = random.Random(0)
    for _ in range(200):
        answers = [rng.choice("abc") for _ in range(rng.randint(1, 10))]
        loop = [min(1, sum(a == "a" for j, a in enumerate(answers) if j != i) / 3) for i in range(len(answers))]
        assert soft_accuracy("a", answers) == pytest.approx(sum(loop) / len(loop))
    assert soft_accuracy("a", []) == 0.0


def test_vqa_and_vizwiz_sides() -> None:
    assert vqa_accuracy("Two.", ["2"] * 10) == pytest.approx(1.0)
    assert vqa_accuracy("yes", ["yes"] * 3 + ["no"] * 7) == pytest.approx(0.9)
    assert vqa_accuracy("hot dog", ["hot-dog"] * 10) == pytest.approx(1.0)  # VQAv2 answers: punctuation processed
    assert vqa_accuracy("two", ["two"] * 10) == 0.0  # ... but never digit-processed (vlm-evaluation's copy)
    assert vizwiz_accuracy("hot dog", ["hot-dog"] * 10) == 0.0  # VizWiz answers: not processed at all
    assert vizwiz_accuracy("Unanswerable.", ["unanswerable"] * 3 + ["blue"] * 7) == pytest.approx(0.9)
    assert vizwiz_accuracy("Dont", ["don`t"] * 10) == pytest.approx(1.0)
    assert vizwiz_accuracy("Dont", ["don't"] * 10) == 0.0
