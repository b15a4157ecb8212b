"""Search-autocomplete records and "news sources" of the synthetic world (chapter 04).

Both are new generators built on the planted stereotypes of :func:`mlmc.world.culture.stereotype_truth`; they do not
change any existing generator's output.

- :func:`autocomplete_records`: what querying search engines with "why are <group> so" would return for the world's
  groups: suggestions whose completions are mostly the group's planted attributes in one language's culture, mixed
  with the noise the thesis's cleaning removes (multi-word completions, neutral words, trend-sensitive references,
  non-attributes, suggestions that do not match the query).
- :func:`news_corpus`: text of one "news source" in a world language; sentences about the source's *target groups*
  pair them with attributes of the source's emotional slant, all other group sentences use the groups' planted
  attributes, and the rest is ordinary world text.
"""

from __future__ import annotations

import pandas as pd

from .grammar import sample_clause
from .lexicon import ATTRIBUTES, DETERMINERS, GROUPS, NEUTRAL_ADJ
from .lexicon import _rng as rng_for

ENGINES = ("google", "yahoo", "duckduckgo")
QUERY_TEMPLATES = (
    "why are {g} so",
    "what makes {g} so",
    "how come {g} are so",
    "why are {g} always so",
    "why are all {g} so",
)
# completions that the thesis's manual cleaning drops, as the world's search engines might return them
MULTI_WORD = ("good at maths", "bad at sports", "afraid of dogs", "into music")
NEUTRAL_COMPLETIONS = ("called", "named", "common")
TREND_COMPLETIONS = ("viral", "trending")
NON_ATTRIBUTES = ("the", "market", "often")
# emotional slant of each news source: the attribute pool it uses for its target groups
SOURCE_SLANTS = {
    "hostile": ("anger", "disgust", "fear"),
    "trusting": ("trust", "joy"),
    "neutral": (),
}


def slant_pool(source: str) -> list[str]:
    """The attributes a news source attaches to its target groups: those carrying one of its slant's emotions, or,
    for the ``neutral`` source, the attributes without any emotion label."""
    if source not in SOURCE_SLANTS:
        raise ValueError(f"parameter 'source' must be one of {sorted(SOURCE_SLANTS)}, got {source!r}")
    emos = set(SOURCE_SLANTS[source])
    if not emos:
        return [a for a, labels in ATTRIBUTES.items() if not labels]
    return [a for a, labels in ATTRIBUTES.items() if emos & set(labels)]


def autocomplete_records(
    truth: pd.DataFrame,
    *,
    per_engine: int = 3,
    p_planted: float = 0.8,
    p_noise: float = 0.2,
    seed: int = 0,
) -> pd.DataFrame:
    """Raw autocomplete suggestions for every group of one language's planted truth (one ``lang`` in ``truth``).

    Each engine returns ``per_engine`` suggestions per (template, group). A suggestion is, with probability
    ``p_noise``, one the cleaning must drop (a multi-word, neutral, trend or non-attribute completion, or a
    rewritten query that no longer matches); otherwise ``"<query> <attribute>"`` with a planted attribute with
    probability ``p_planted`` and any attribute otherwise. Columns: template, target_category, target_group,
    suggestion, search_engine.
    """
    if truth.lang.nunique() != 1:
        raise ValueError("parameter 'truth' must hold the planted stereotypes of exactly one language")
    lang = str(truth.lang.iloc[0])
    planted = truth.groupby("group")["attribute"].apply(list).to_dict()
    attrs = list(ATTRIBUTES)
    noise_kinds = [MULTI_WORD, NEUTRAL_COMPLETIONS, TREND_COMPLETIONS, NON_ATTRIBUTES]
    rows = []
    for cat, groups in GROUPS.items():
        for g in groups:
            for t in QUERY_TEMPLATES:
                for engine in ENGINES:
                    rng = rng_for(seed, "autocomplete", lang, g, t, engine)
                    query = t.replace("{g}", g)
                    for _ in range(per_engine):
                        if rng.random() < p_noise:
                            kind = int(rng.integers(len(noise_kinds) + 1))
                            if kind == len(noise_kinds):  # the engine rewrote the query: drops the group
                                text = t.replace("{g}", "people") + " " + attrs[int(rng.integers(len(attrs)))]
                            else:
                                pool = noise_kinds[kind]
                                text = f"{query} {pool[int(rng.integers(len(pool)))]}"
                        else:
                            pool = planted[g] if rng.random() < p_planted else attrs
                            text = f"{query} {pool[int(rng.integers(len(pool)))]}"
                        rows.append(
                            dict(template=t, target_category=cat, target_group=g, suggestion=text, search_engine=engine)
                        )
    return pd.DataFrame(rows)


def news_corpus(
    world,
    lang: str,
    source: str,
    targets: list[str],
    *,
    n: int = 2000,
    p_group: float = 0.6,
    p_target: float = 0.5,
    seed: int = 0,
) -> list[str]:
    """``n`` sentences of one news source in world language ``lang``.

    A share ``p_group`` of sentences are statements "DET GROUP is ATTR ."; among them a share ``p_target`` is about
    one of ``targets`` with an attribute of :func:`slant_pool` (the source's planted slant), the others about any
    non-target group with one of its planted attributes. The rest are ordinary sentences of the world's grammar.
    """
    all_groups = [g for gs in GROUPS.values() for g in gs]
    bad = [g for g in targets if g not in all_groups]
    if bad or not targets:
        raise ValueError(f"parameter 'targets' must be a non-empty list of world groups, got unknown {bad!r}")
    pool = slant_pool(source)
    truth = world.stereotype_truth([lang])
    planted = truth.groupby("group")["attribute"].apply(list).to_dict()
    others = [g for g in all_groups if g not in targets]
    rng = rng_for(world.seed, "news", lang, source, str(seed), *sorted(targets))
    dets = [*DETERMINERS, None]
    out = []
    for _ in range(n):
        if rng.random() < p_group:
            det = dets[int(rng.integers(len(dets)))]
            if rng.random() < p_target or not others:
                g, attr = targets[int(rng.integers(len(targets)))], pool[int(rng.integers(len(pool)))]
            else:
                g = others[int(rng.integers(len(others)))]
                attr = planted[g][int(rng.integers(len(planted[g])))]
            out.append(world.statement(lang, g, attr, det=det))
        else:
            out.append(world.render(lang, sample_clause(rng, p_neg=0.15)))
    return out


def adjective_vocabulary() -> list[str]:
    """Every adjective a cloze probe of the world can answer with: attributes plus the neutral/evaluative ones."""
    from .lexicon import NEGATIVE_ADJ, POSITIVE_ADJ

    return list(dict.fromkeys([*ATTRIBUTES, *NEUTRAL_ADJ, *POSITIVE_ADJ, *NEGATIVE_ADJ]))
