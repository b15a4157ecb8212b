"""Planted culture of the synthetic world: group stereotypes, value answers, bias strength (chapters 04-07).

Nothing here describes real groups or countries: associations are drawn at random from the world's seed, so every
measurement in the book can be checked against a known answer. Languages in one *culture zone* share a centroid,
so their value answers resemble each other, as neighbouring countries' survey answers do.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .lexicon import ATTRIBUTES, GROUPS, VALUE_ITEMS, _rng

CULTURE_ZONES: dict[str, tuple[str, ...]] = {
    "north_west": ("en", "de", "nl", "af", "no", "fo", "et"),
    "south_europe": ("es", "gl", "fr", "it", "ro", "mt"),
    "east_europe": ("ru", "cs", "sr", "lt", "hy", "hu"),
    "west_asia": ("ar", "fa", "ur", "tr"),
    "south_asia": ("hi", "mr", "ta"),
    "east_asia": ("ko", "zh"),
    "south_east": ("id", "tl", "yo"),
}
ZONE_OF = {lang: zone for zone, langs in CULTURE_ZONES.items() for lang in langs}
N_PLANTED = 3


def stereotype_truth(seed: int, langs: list[str], shift: float = 0.34) -> pd.DataFrame:
    """Planted group -> attribute associations per language.

    Each group gets ``N_PLANTED`` attributes world-wide; in each language each of them is replaced by another
    attribute with probability ``shift``, so languages agree on most but not all stereotypes.
    Columns: lang, category, group, attribute, rank.
    """
    attrs = list(ATTRIBUTES)
    rows = []
    for cat, groups in GROUPS.items():
        for g in groups:
            base = list(_rng(seed, "stereo", g).choice(attrs, size=N_PLANTED, replace=False))
            for lang in langs:
                rng = _rng(seed, "stereo", g, lang)
                planted = []
                for a in base:
                    if rng.random() < shift:
                        a = str(rng.choice([x for x in attrs if x not in base and x not in planted]))
                    planted.append(str(a))
                rows += [dict(lang=lang, category=cat, group=g, attribute=a, rank=i) for i, a in enumerate(planted)]
    return pd.DataFrame(rows)


def bias_strength(seed: int, langs: list[str], lo: float = 0.6, hi: float = 0.9) -> pd.Series:
    """Per-language probability that a statement about a group uses one of its planted attributes."""
    return pd.Series({lang: float(_rng(seed, "bias", lang).uniform(lo, hi)) for lang in langs}, name="p_planted")


def value_truth(seed: int, langs: list[str], spread: float = 1.5, noise: float = 0.35) -> pd.DataFrame:
    """Planted probability of answer option 1 per (language, WVS-style item).

    p = sigmoid(b_q + u_q . c_L): item bias b_q, item loading u_q (2-d), culture vector c_L = zone centroid + noise.
    Columns: lang, zone, qid, category, subject, opt1, opt2, p_opt1.
    """
    zones = sorted(CULTURE_ZONES)
    cent = {z: _rng(seed, "zone", z).normal(0.0, 1.0, size=2) for z in zones}
    rows = []
    for qid, cat, subject, o1, o2 in VALUE_ITEMS:
        r = _rng(seed, "item", qid)
        b, u = r.normal(0.0, 0.7), r.normal(0.0, spread, size=2)
        for lang in langs:
            c = cent[ZONE_OF[lang]] + _rng(seed, "culture", lang).normal(0.0, noise, size=2)
            p = 1.0 / (1.0 + np.exp(-(b + u @ c)))
            rows.append(
                dict(
                    lang=lang,
                    zone=ZONE_OF[lang],
                    qid=qid,
                    category=cat,
                    subject=subject.replace(" ", "_"),
                    opt1=o1,
                    opt2=o2,
                    p_opt1=float(p),
                )
            )
    return pd.DataFrame(rows)
