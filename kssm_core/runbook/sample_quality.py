"""Is a generated sample language? A classifier you can defend: real words, phrases, grammar slips, repetition.

Label "words" (words and phrases) needs all of: at least `sample_words_share` of the word tokens are English
words; a phrase (3 English words in a row); function words (the, of, and, is ...) making up at least
`sample_min_function_share` of the words, as in prose (a salad of content words has almost none); at most
`sample_max_symbols` of the visible characters code or markup symbols (# _ | * < > = ...); few
grammar slips (`sample_max_slips` per word: a determiner followed by another determiner, a verb "be" or a
preposition, "of and", "and or", a doubled function word); and no loop (repeated word trigrams at most
`sample_max_repeat`). "fragments": at least `sample_fragments_share` English words otherwise; "gibberish":
less, or fewer than `sample_min_words` word tokens.

The lexicon is built offline: a built-in list of common English words plus every word seen twice in the
embedded default corpus (Python's own English help text), with simple suffix stripping (-s, -ed, -ing, -ly).
Measured on 35-word windows of the five books in ../shared/corpus: 80-86% of words known, function words
40-63% (5th-95th percentile), grammar slips at most 1 in 35 words, symbols at most 3.1%; the same text with each word's letters
scrambled: about 20% known; random letter strings about 3%; a salad of common content words: function
words under 15%; a salad weighted like English function words: 2 or more slips in 2 of 3 samples.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache

from kssm_core.runbook.criteria import DEFAULT, Criteria

_WORD_RE = re.compile(r"[A-Za-z]+(?:'[A-Za-z]+)?")
_CONTRACTIONS = ("'s", "'t", "'ll", "'re", "'ve", "'d", "'m")
_SUFFIXES = ("ness", "ment", "ing", "est", "ful", "less", "ly", "ed", "er", "es", "s", "d")

COMMON_WORDS = """
a ability able about above accept accord according account across act action activity actual actually add
address admit advance advantage affair affection afraid after afternoon again against age agent ago agree
agreeable aid aim air all allow allowed almost alone along already also alter although always am among amount
an analysis ancient and anger angry animal animals another answer anxious any anyone anything apart appear
appearance application approach are area argument arise arm army around arrange arrive art as ask assure at
attack attempt attend attention attribute aunt available avoid aware away baby back bad bag ball bank bar bare
base based be bear beat beautiful beauty became because become bed been before beg began begin behaviour
behind being believe belong beloved below beneath beside best better between beyond bid big bind bird birth
bit black bless block blood blow blue board boat body bold bone book bore born both bottom bound bow box boy
brain branch brave bread break breath breathe bride brief bright brilliant bring broad broke brother brought
brown build built burn business but buy by call called calm came can cannot capital captain car care carriage
carry case cases cast cat catch cause ceased centre century certain chair chance change character charge check
cheerful child children choice choose church circle city civil claim class clear close cloud code cold colour
come comfort command common companion company complete compose computer concern condition conditions conduct
confess confidence connection conscious consent consequence consider contain contains content context continue
control conversation convince cook cool copy corner could count country courage course cousin cover create
creature cross crowd cruel cry curious current custom cut daily dance danger dare dark data daughter day dead
deal dear death decide deed deep default define degree delight deny depend describe described description
deserve design desire despair destroy detail determine determined develop devil did die differ difference
different difficult dine dinner direct direction disappointment discover dislike distance distress divine do
doctor document does dog done door doubt doubtless down draw drawing dreadful dream dress drew drink drive
drop dry during duty dwell each eager ear early earth ease east easy eat edge effect effects effort eight
either eldest elegant element elizabeth else end enemy engage enjoy enough enter entire entirely equal error
escape especially estate esteem even evening event ever every everything evident evil exact example
exceedingly excellent except exclaim excuse exist existence expect experience explain expression external
extraordinary extreme eye face fact facts fair faith fall family famous fancy far farm fast fate father favour
fear feature feeble feel feeling feet fell fellow felt female fever few field fight figure file fill final
find fine finger finish fire first fish fit five fled flesh floor flower fly follow following folly fond food
fool foot for force foreign forest forget forgive form format formed former forms forth fortunate fortune
forward found four free frequent frequently fresh friend fright from front fruit full function further future
gain garden gave gay gaze general generally generous genius gentle gentleman gentlemen get girl give given
glad glance gloomy go god gold gone good got government grace gracious grand grass grateful grave great green
grief ground group grow guard guess guilty habit had hair half hand handsome happen happy hard hardly has hat
hate have he head health hear heard heart heat heaven heavy held help hence her here herself hesitate high
hill him himself his history hold home honest honour hope horror horse hostile hot hour house how however
human humble hundred hurt husband i idea idle if ignorance ill imagine immediately important impossible in
inclination include including indeed indifferent individuals inform information inheritance innocent input
inside instance instead instinct intend intention interest interface into introduce invite is island it item
its itself join joined journey joy judge just keep kept key kind kindness king knew know knowledge labour lady
lake land language large last late lately laugh law lay lead learn least leave led left leg leisure length
less let letter level liberty library lie life light like likely limit line lips list listen little live
lively local lonely long longer look lord lose lost lot love low machine made make man manner manners many
mark marriage married marry master matter may me mean means meet member memory men mere merely method mild
mind minute miss mistake mistress mode modest modification module moment money month mood moon moral more
morning most mother motive mountain mournful mouth move mr mrs much music must my myself name named nation
natural nature near nearly necessary need neither nephew never new next niece night nine no noble none nor
normal north nose not note nothing notice now number o object oblige observe occasion occupy odd of off offer
office often oh old on once one only open operation opinion opportunity option or order organic other others
ought our out output outside over own page pain paper parameter pardon part particular party pass passion past
patience pause pay peace people perfect perfectly perhaps period person persuade pick picture piece pity place
plain plan plant plants play pleasant please pleased pleasure point polite poor position possible poverty
power praise prefer prejudice present press pretty pride prince principle prisoner private probable probably
problem proceed process produce program promise proof proper proud prove provide provided public pull purpose
put quarrel queen question quick quiet quite race rage rain raise ran rank rapid rarely rather reach read
readily ready real reason receive recollect record recover red reference refuse regard regret reject relate
related relation relief rely remain remark remember removed repeat reply represent request required resolve
respect rest restless result retire return reward rich ride right ring rise river road rock room rose round
rude ruin rule run sad safe said sail sake same sat satisfy save saw say scarcely scene scheme sea season seat
second secret section see seem seen seldom selection self sell send sense sensible sent sequence serious
servant serve set seven several shade shall shame shape she ship short should shoulder show side sigh sight
sign silence silent simple since sincere sing single sister sit situation six size skin sky sleep slight small
smile snow so society soft soldier solemn some someone something sometimes son song soon sorrow sorry sort
soul sound source south space speak special species specific spirit spite spoke spot spring stand standard
star start state statement stay step still stone stood stop story strange stranger street strength string
strong structure struggle study subject succeed success such sudden suddenly suffer sufficient summer sun
support suppose sure surprise suspect suspicion sweet sympathy system table take taken talk tall taste teach
tear tell temper ten tender term terrible test text than thank that the thee their them themselves then there
therefore these they thing think third this those thou though thought thousand three through throw thus thy
till time to today together told tomorrow tone too took top torn touch toward towards town tranquil treat tree
tremble trial triumph trouble true trust truth try turn twenty two type uncle under understand uneasy unhappy
unless until up upon us use used user using usual usually vain value variable variation varieties various vast
version very view village violent virtue visit voice wait walk walked wall wandered want war warm warmth was
watch water wave way we weak wealth wear weary weather week welcome well went wept were west what whatever
when where whether which while white who whole whom whose why wicked wide wife wild will win wind window
winter wisdom wise wish wit with within without witness woman women wonder wood word work world worse would
wretched write wrong year yes yet yield you young your yourself
"""


# Function words: their share and their order are what word salad gets wrong.
FUNCTION_WORDS = frozenset("""
the a an of and to in is it that for was with as on be at by this had not are but from or have his her they he
she i you we which were their been has would there one all will so no can if my me what when who more our its
them than then into could these only some any your out up about do said may such also should other how over
most very
""".split())
_DET = frozenset("the a an its their my your our every each".split())
_AUX = frozenset("is are was were be been am".split())
_PREP = frozenset("of in for with at by from into upon".split())
_CONJ = frozenset("and or but nor".split())
_SUBJ = frozenset("i he she they we".split())
_AFTER_DET_BAD = _DET | _AUX | _PREP | _CONJ | _SUBJ
_AFTER_PREP_BAD = _AUX | _CONJ | _PREP
_SYMBOLS = frozenset("#_|*<>{}[]=@$%^~`\\/+")


def grammar_slips(words: list[str]) -> int:
    """Adjacent pairs English does not allow: "the is", "of and", "and or", "the the" (lower-case words)."""
    slips = 0
    for a, b in zip(words, words[1:]):
        if a in _DET and b in _AFTER_DET_BAD:
            slips += 1
        elif a == b and a in FUNCTION_WORDS:
            slips += 1
        elif a in _CONJ and b in _CONJ:
            slips += 1
        elif a in _PREP and b in _AFTER_PREP_BAD:
            slips += 1
    return slips


@lru_cache(maxsize=1)
def lexicon() -> frozenset[str]:
    """Common English words plus the embedded corpus's vocabulary (words seen at least twice)."""
    words = set(COMMON_WORDS.split())
    try:
        from kssm_core.training.corpus import embedded_default_corpus

        counts: Counter[str] = Counter()
        for doc in embedded_default_corpus().documents:
            counts.update(w.lower() for w in re.findall(r"[A-Za-z]+", doc))
        words.update(w for w, n in counts.items() if n >= 2 and len(w) > 1)
    except Exception:  # noqa: BLE001 - the built-in list alone still separates prose from noise
        pass
    return frozenset(words)


def is_word(token: str, lex: frozenset[str] | None = None) -> bool:
    """Is this (lower-case) token an English word, allowing common inflections?"""
    lex = lex if lex is not None else lexicon()
    w = token.lower()
    for c in _CONTRACTIONS:
        if w.endswith(c) and len(w) > len(c):
            w = w[: -len(c)]
            if w.endswith("n") and c == "'t":  # don't -> do, can't -> ca(n)
                w = w[:-1] or w
            break
    if w in lex:
        return True
    for s in ("ies", "ied", "ily", "ier", "iest", "iness"):  # cities -> city, happily -> happy
        if w.endswith(s) and w[: -len(s)] + "y" in lex:
            return True
    for s in _SUFFIXES:
        if w.endswith(s) and len(w) - len(s) >= 2:
            b = w[: -len(s)]
            if b in lex or b + "e" in lex or (len(b) > 2 and b[-1] == b[-2] and b[:-1] in lex):
                return True
    return False


@dataclass(frozen=True)
class SampleQuality:
    label: str  # "words" | "fragments" | "gibberish"
    n_words: int  # word tokens (letters, maybe an apostrophe)
    real_share: float  # share of them that are English words
    longest_phrase: int  # longest run of consecutive English words
    repeat_ratio: float  # 1 - distinct word trigrams / trigrams (0 = no loop)
    function_share: float = 0.0  # share of the words that are function words (prose: about 0.4-0.6)
    slips: int = 0  # grammar slips (see grammar_slips)
    symbol_share: float = 0.0  # share of visible characters that are code / markup symbols

    def describe(self) -> str:
        return (f"{self.real_share:.0%} of {self.n_words} words are English, longest phrase {self.longest_phrase}, "
                f"function words {self.function_share:.0%}, grammar slips {self.slips}, symbols {self.symbol_share:.0%}, "
                f"repeated trigrams {self.repeat_ratio:.0%}")


def classify_sample(text: str, criteria: Criteria = DEFAULT) -> SampleQuality:
    c = criteria
    tokens = _WORD_RE.findall(text or "")
    lex = lexicon()
    known = [is_word(t, lex) for t in tokens]
    n = len(tokens)
    share = sum(known) / n if n else 0.0
    longest = run = 0
    for k in known:
        run = run + 1 if k else 0
        longest = max(longest, run)
    lower = [t.lower() for t in tokens]
    grams = list(zip(lower, lower[1:], lower[2:]))
    repeat = 1 - len(set(grams)) / len(grams) if grams else 0.0
    fshare = sum(1 for w in lower if w in FUNCTION_WORDS) / n if n else 0.0
    slips = grammar_slips(lower)
    visible = [ch for ch in (text or "") if not ch.isspace()]
    symbols = sum(1 for ch in visible if ch in _SYMBOLS) / len(visible) if visible else 0.0
    if n < c.sample_min_words or share < c.sample_fragments_share:
        label = "gibberish"
    elif (share >= c.sample_words_share and longest >= 3 and repeat <= c.sample_max_repeat
          and fshare >= c.sample_min_function_share and slips <= c.sample_max_slips * max(1, n - 1)
          and symbols <= c.sample_max_symbols):
        label = "words"
    else:
        label = "fragments"
    return SampleQuality(label, n, share, longest, repeat, fshare, slips, symbols)
