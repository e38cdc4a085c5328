"""The official VQA answer normalisation and soft accuracy, as vlm-evaluation scores VQAv2 and VizWiz.

The rules are those of the VQA evaluation script (GT-Vision-Lab/VQA `vqaEval.py`, `VQAEval.processPunctuation` and
`processDigitArticle`), in the version vlm-evaluation vendors (`vlm_eval/util/evaluation/vqav2/eval.py`, refactored
from Salesforce LAVIS) and, for VizWiz, the VizWiz variant it vendors (`vlm_eval/util/evaluation/vizwiz/eval.py`).

An answer is normalised in two steps:
1. `process_punctuation`: each mark of `PUNCTUATION` is deleted when the text has it next to a space or the text holds
   a digit-comma-digit ("10,000") anywhere, and otherwise replaced by a space; then every period not followed by a digit
   is deleted (`PERIOD_STRIP`, at most 32 of them: see below). Apostrophes and colons are not in the list and survive.
2. `process_digit_article`: lowercase, split on whitespace, number words "none" ... "ten" -> "0" ... "10", the articles
   a / an / the dropped, then the contractions map ("dont" -> "don't"), joined by single spaces.

Soft accuracy (`soft_accuracy`): the mean over the 10 annotators i of min(1, #{j != i : answer_j == prediction} / 3),
the "10 choose 9" average of the VQA paper's min(#humans / 3, 1).

What is normalised on each side (vlm-evaluation, which produced the paper's numbers):
- VQAv2 (`vqa_accuracy`): the prediction goes through both steps; every ground-truth answer through punctuation
  only, always. The current GT-Vision-Lab script punctuation-processes the ground truth only when the 10 answers
  disagree (and has a different punctuation list: ':' and "'" in, '{', '}', '-' and '!' out); vlm-evaluation's
  LAVIS-derived copy does it unconditionally and never applies the digit/article step to the ground truth, so neither
  do we. (VQAv2's answers are already normalised by the dataset, so the variants rarely differ.)
- VizWiz (`vizwiz_accuracy`): the prediction goes through both steps, with VizWiz's own contractions map
  (`VIZWIZ_CONTRACTIONS`: the same entries, most apostrophes written as backticks, "dont" -> "don`t"); the ground truth
  is compared as it is in `val.json`, not normalised at all.

Faithfully kept quirks of the official code:
- `PERIOD_STRIP` is `(?!<=\\d)(\\.)(?!\\d)`: the intended look-behind is written as a look-ahead for the text "<=" and
  a digit, which never matches before a period, so the rule is "a period not followed by a digit" ("1." -> "1",
  "3.5" stays).
- The official call is `periodStrip.sub("", text, re.UNICODE)`, whose third positional argument is `count`:
  `re.UNICODE == 32`, so at most 32 periods are deleted. We pass `count=32`.
- Contraction keys with capitals ("Im", "Ive") never match lowercased text; "somebody'd" maps to "somebodyd".
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

CONTRACTIONS: dict[str, str] = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's", "howd": "how'd",
    "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm", "Ive": "I've",
    "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll", "let's": "let's",
    "maam": "ma'am", "mightnt": "mightn't", "mightnt've": "mightn't've", "mightn'tve": "mightn't've",
    "mightve": "might've", "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't", "notve": "not've",
    "oclock": "o'clock", "oughtnt": "oughtn't", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at",
    "shant": "shan't", "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's", "shouldve": "should've",
    "shouldnt": "shouldn't", "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've",
    "somebody'd": "somebodyd", "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll", "somebodys": "somebody's", "someoned": "someone'd", "someoned've": "someone'd've",
    "someone'dve": "someone'd've", "someonell": "someone'll", "someones": "someone's", "somethingd": "something'd",
    "somethingd've": "something'd've", "something'dve": "something'd've", "somethingll": "something'll",
    "thats": "that's", "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've",
    "therere": "there're", "theres": "there's", "theyd": "they'd", "theyd've": "they'd've", "they'dve": "they'd've",
    "theyll": "they'll", "theyre": "they're", "theyve": "they've", "twas": "'twas", "wasnt": "wasn't",
    "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've", "werent": "weren't", "whatll": "what'll",
    "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd",
    "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've", "who'dve": "who'd've",
    "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll", "whyre": "why're", "whys": "why's",
    "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't", "wouldnt've": "wouldn't've",
    "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll", "y'allll": "y'all'll",
    "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've", "youd": "you'd",
    "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're", "youve": "you've",
}  # fmt: skip

# VizWiz's map (vlm-evaluation's vizwiz/eval.py) is the one above with the apostrophes written as backticks, except
# for these keys, whose apostrophe is kept (in the values of the first set, in the keys of the second).
_VIZWIZ_APOSTROPHE_VALUES = frozenset({"aint", "arent", "cant", "couldve", "couldnt", "weve", "wheres", "whove"})
_VIZWIZ_APOSTROPHE_KEYS = frozenset({"couldn'tve", "hadn'tve"})
VIZWIZ_CONTRACTIONS: dict[str, str] = {
    (key if key in _VIZWIZ_APOSTROPHE_KEYS else key.replace("'", "`")): (
        value if key in _VIZWIZ_APOSTROPHE_VALUES else value.replace("'", "`")
    )
    for key, value in CONTRACTIONS.items()
}

NUMBER_MAP: dict[str, str] = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
    "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}  # fmt: skip
ARTICLES = ("a", "an", "the")
PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?",
               "!")  # fmt: skip

PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
COMMA_STRIP = re.compile(r"(\d)(,)(\d)")
PERIOD_STRIP_COUNT = 32  # re.UNICODE, passed as `count` by the official code (see the module docstring)


def process_punctuation(text: str) -> str:
    """The official `processPunctuation`: marks deleted or turned into spaces, then periods not before a digit
    deleted."""
    has_digit_comma = COMMA_STRIP.search(text) is not None
    out = text
    for mark in PUNCTUATION:
        if f"{mark} " in text or f" {mark}" in text or has_digit_comma:
            out = out.replace(mark, "")
        else:
            out = out.replace(mark, " ")
    return PERIOD_STRIP.sub("", out, count=PERIOD_STRIP_COUNT)


def process_digit_article(text: str, contractions: Mapping[str, str] = CONTRACTIONS) -> str:
    """The official `processDigitArticle`: lowercase, number words -> digits, articles dropped, contractions fixed."""
    words = [NUMBER_MAP.get(word, word) for word in text.lower().split()]
    return " ".join(contractions.get(word, word) for word in words if word not in ARTICLES)


def normalize_prediction(text: str, contractions: Mapping[str, str] = CONTRACTIONS) -> str:
    """A model's answer as the official scorer compares it: newlines / tabs -> spaces, stripped, both steps."""
    text = text.replace("\n", " ").replace("\t", " ").strip()
    return process_digit_article(process_punctuation(text), contractions)


def soft_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """Mean over annotators i of min(1, #{j != i : answers[j] == prediction} / 3), in [0, 1]; both sides as given
    (already normalised). 0 for no answers."""
    if not answers:
        return 0.0
    matches = sum(answer == prediction for answer in answers)
    # Leaving out a matching annotator leaves matches - 1 others that match; leaving out another leaves all of them.
    return sum(min(1.0, (matches - (answer == prediction)) / 3) for answer in answers) / len(answers)


def vqa_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """VQAv2 as vlm-evaluation scores it: the prediction normalised, each answer punctuation-processed; in [0, 1]."""
    return soft_accuracy(normalize_prediction(prediction), [process_punctuation(a) for a in answers])


def vizwiz_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """VizWiz as vlm-evaluation scores it: the prediction normalised (VizWiz's contractions), the answers as they are;
    "unanswerable" is an ordinary answer string. In [0, 1]."""
    return soft_accuracy(normalize_prediction(prediction, VIZWIZ_CONTRACTIONS), list(answers))


def mean_percent(values: Sequence[float]) -> float:
    """100 x the mean of per-item accuracies in [0, 1] (0 for no items)."""
    return 100.0 * sum(values) / len(values) if values else 0.0
