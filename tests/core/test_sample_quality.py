"""The sample classifier on real prose (tests/fixtures/prose) versus scrambled-letter and random-token text."""

from __future__ import annotations

import random
import re
from pathlib import Path


from kssm_core.runbook.criteria import Criteria
from kssm_core.runbook.sample_quality import classify_sample, is_word

PROSE = Path(__file__).resolve().parents[1] / "fixtures" / "prose"  # excerpts of five public-domain books
BOOKS = sorted(PROSE.glob("*.txt"))


def windows(n_per_book=8, words=40):
    """Sample-sized windows (about a 50-token sample) from the body of each book."""
    rnd = random.Random(7)
    out = []
    for book in BOOKS:
        toks = book.read_text(encoding="utf-8").split()  # excerpts from the books' bodies: no licence text
        for _ in range(n_per_book):
            i = rnd.randrange(0, len(toks) - words)
            out.append(" ".join(toks[i:i + words]))
    return out


def scramble_letters(text: str, rnd: random.Random) -> str:
    return re.sub(r"[A-Za-z]+", lambda m: "".join(rnd.sample(m.group(0), len(m.group(0)))), text)


def random_tokens(n: int, rnd: random.Random) -> str:
    """What an untrained BPE model emits: random subword pieces glued with spaces and punctuation."""
    pieces = ["th", "qu", "ng", "zx", "ei", "pr", "ck", "ow", "vr", "al", "mb", "ix", "st", "oo", "gh", "rk"]
    return " ".join("".join(rnd.choice(pieces) for _ in range(rnd.randint(1, 3))) + rnd.choice(["", ",", "."])
                    for _ in range(n))


def test_the_prose_fixtures_are_there():
    assert len(BOOKS) == 5  # a missing fixture must fail, not skip the real-prose tests below


def test_real_prose_is_words_and_phrases():
    labels = [classify_sample(w).label for w in windows()]
    assert labels.count("words") / len(labels) >= 0.9, labels


def test_scrambled_letters_of_the_same_prose_are_gibberish():
    rnd = random.Random(1)
    labels = [classify_sample(scramble_letters(w, rnd)).label for w in windows()]
    assert labels.count("gibberish") / len(labels) >= 0.9, labels
    assert "words" not in labels


def test_random_tokens_are_gibberish():
    rnd = random.Random(2)
    labels = [classify_sample(random_tokens(40, rnd)).label for _ in range(40)]
    assert labels.count("gibberish") == len(labels), labels


def test_fragments_sit_between():
    rnd = random.Random(3)
    text = ("I think that the quick question of " + random_tokens(4, rnd) + " was not a " + random_tokens(5, rnd)
            + " we may " + random_tokens(4, rnd))
    q = classify_sample(text)
    assert q.label == "fragments", q


def test_a_loop_of_real_words_is_not_language():
    q = classify_sample("the cat and the cat and the cat and the cat and the cat and the cat")
    assert q.label == "fragments" and q.repeat_ratio > 0.5


def test_too_short_or_empty_is_gibberish():
    assert classify_sample("").label == "gibberish"
    assert classify_sample("The cat").label == "gibberish"
    assert classify_sample("!!! ### ... \u2603\u2603").label == "gibberish"


def test_inflections_and_contractions_are_words():
    for w in ("walked", "walking", "cities", "happily", "don't", "it's", "stopped", "making"):
        assert is_word(w), w
    for w in ("xqzv", "tlpq", "zzrt"):
        assert not is_word(w), w


def test_thresholds_come_from_criteria():
    text = "the of vrek and qzt the pomb was lurf it is gnarb in trelk a"
    assert classify_sample(text).label == "fragments"
    assert classify_sample(text, Criteria(sample_fragments_share=0.9)).label == "gibberish"


def test_word_salad_is_not_words_and_phrases():
    from kssm_core.runbook.sample_quality import COMMON_WORDS, FUNCTION_WORDS

    rnd = random.Random(4)
    content = [w for w in COMMON_WORDS.split() if w not in FUNCTION_WORDS]
    salad = [" ".join(rnd.choice(content) for _ in range(35)) for _ in range(30)]
    assert all(classify_sample(s).label == "fragments" for s in salad)  # real words, no function words
    fw = ["the", "the", "the", "of", "of", "and", "and", "a", "to", "to", "in", "is", "it", "that", "for", "was"]
    weighted = [" ".join(rnd.choice(fw) if rnd.random() < 0.45 else rnd.choice(content) for _ in range(35))
                for _ in range(60)]
    labels = [classify_sample(s).label for s in weighted]
    assert labels.count("fragments") / len(labels) >= 0.6, labels  # "the of", "and is", "the the" give it away


def test_code_symbol_soup_is_not_prose():
    text = "the value of __init__ is a #define and | the >> key = {attr} for the * module and $x of it"
    q = classify_sample(text)
    assert q.symbol_share > 0.04 and q.label == "fragments"
