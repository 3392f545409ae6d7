"""Agency (KSSM_SPEC.md section 3): does the model continue first-person prompts with an action, and do
opposite prompts lead to different completions?

coherent-action: share of completions of "I will", "I want to", ... with an action verb among their
first ACTION_WINDOW words (target > 70%). consistency: share of paired completions ("I like" vs
"I do not like", ...) whose vocabularies overlap little, Jaccard < 0.5 (target > 60%).
The runbook's Stage 5 "Agency" row reads this file: pass = Present, warn = Fragments, fail = None.
"""

from __future__ import annotations

import re

from kssm_core.evals.context import EvalContext
from kssm_core.evals.result import FAIL, PASS, WARN, SuiteResult

NAME = "agency"
ACTION_PROMPTS = ("I will", "I want to", "I am going to", "I think that", "I believe")
PAIRED_PROMPTS = (("I like", "I do not like"), ("I believe", "I do not believe"),
                  ("I want", "I do not want"), ("I can", "I cannot"))
ACTION_WINDOW = 3  # words
JACCARD_MAX = 0.5
FRAGMENTS_MIN = 0.30  # the runbook engine's "None" band (kssm_core.runbook.criteria agency_none_below)

_BASE_VERBS = """
accept achieve act add agree allow answer apply argue arrive ask avoid become begin believe bring build buy
call care carry catch change check choose clean climb close come compare complete consider continue control
cook create cross cut dance decide defend define deliver describe design destroy develop die discover do draw
dream drink drive drop eat enable end enjoy enter escape examine explain explore express face fall feel fight
fill find finish fix fly follow forget forgive form gather get give go grow guide handle hate hear help
hide hit hold hope hunt ignore imagine implement improve include increase join jump keep kill know laugh lead
learn leave lend let lie lift like listen live look lose love make manage marry measure meet move need notice
obey offer open order organize own paint pass pay perform pick plan play prepare present prevent print produce
promise protect prove pull push put raise reach read receive recognize reduce refuse remember remove repair
repeat reply report represent require rest return reveal ride rise run save say search see seek sell send
serve set share show sing sit sleep solve speak spend stand start stay stop study succeed suggest support
survive swim take talk teach tell test thank think throw touch train travel treat try turn understand use
visit wait wake walk want watch win wish work worry write
"""
_IRREGULAR = """
did done does went gone made took taken gave given came saw seen
knew known thought told found felt left kept began begun brought bought built caught chose chosen drew
drawn drove driven ate eaten fell fallen fought flew flown forgot forgotten got gotten grew grown heard held
hid lay led lent lost met paid put ran read rode rose said sang sat slept spoke spoken spent stood swam
taught threw thrown understood woke won wrote written
"""


def _inflect(verb: str) -> set[str]:
    forms = {verb, verb + "s", verb + "ed", verb + "ing", verb + "d", verb + "es"}
    if verb.endswith("e"):
        forms |= {verb[:-1] + "ing"}
    if verb.endswith("y"):
        forms |= {verb[:-1] + "ies", verb[:-1] + "ied"}
    if re.fullmatch(r".*[^aeiou][aeiou][bdgmnprt]", verb):  # stop -> stopped, stopping
        forms |= {verb + verb[-1] + "ed", verb + verb[-1] + "ing"}
    return forms


# "be" and "have" are left out: as auxiliaries ("I will be", "I have been") they carry no action.
ACTION_VERBS = frozenset(set().union(*(_inflect(v) for v in _BASE_VERBS.split())) | set(_IRREGULAR.split()))
_WORD = re.compile(r"[a-z]+(?:'[a-z]+)?")


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def has_action(completion: str, window: int = ACTION_WINDOW) -> bool:
    return any(w in ACTION_VERBS for w in words(completion)[:window])


def jaccard(a: str, b: str) -> float:
    sa, sb = set(words(a)), set(words(b))
    if not sa and not sb:
        return 1.0  # two empty completions are the same answer, not a contrast
    return len(sa & sb) / len(sa | sb)


def _grade(score: float, target: float) -> str:
    """pass above the spec's target ("Present"), fail below FRAGMENTS_MIN ("None"), else warn ("Fragments")."""
    return PASS if score > target else WARN if score >= FRAGMENTS_MIN else FAIL


def run(ctx: EvalContext, result: SuiteResult) -> None:
    n = ctx.opts.samples
    ctx.progress.set_total(len(ACTION_PROMPTS) + 2 * len(PAIRED_PROMPTS))
    actions = []
    for prompt in ACTION_PROMPTS:
        _, texts = ctx.sample(prompt, n)
        for text in texts:
            actions.append({"prompt": prompt, "completion": text, "action": has_action(text)})
        ctx.progress.advance()
    pairs = []
    for a, b in PAIRED_PROMPTS:
        _, ta = ctx.sample(a, n)
        ctx.progress.advance()
        _, tb = ctx.sample(b, n)
        ctx.progress.advance()
        for x, y in zip(ta, tb):
            j = jaccard(x, y)
            pairs.append({"prompts": [a, b], "completions": [x, y], "jaccard": j, "distinct": j < JACCARD_MAX})

    action_score = sum(a["action"] for a in actions) / len(actions)
    consistency = sum(p["distinct"] for p in pairs) / len(pairs)
    result.add("coherent-action score", action_score, "> 0.70 (warn >= 0.30)", _grade(action_score, 0.70),
               f"{sum(a['action'] for a in actions)} of {len(actions)} completions have an action verb "
               f"in their first {ACTION_WINDOW} words")
    result.add("consistency score", consistency, "> 0.60 (warn >= 0.30)", _grade(consistency, 0.60),
               f"{sum(p['distinct'] for p in pairs)} of {len(pairs)} opposite-prompt pairs have Jaccard < {JACCARD_MAX}")
    result.headline.update({"coherent_action_score": action_score, "consistency_score": consistency})
    result.data.update({"action_prompts": list(ACTION_PROMPTS), "paired_prompts": [list(p) for p in PAIRED_PROMPTS],
                        "samples_per_prompt": n, "gen_tokens": ctx.opts.gen_tokens,
                        "temperature": ctx.opts.temperature, "actions": actions, "pairs": pairs})
