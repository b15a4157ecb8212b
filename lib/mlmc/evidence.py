"""Planted-truth checks as records: statistic, control, effect with interval, p-value, verdict (every chapter).

A *check* is a claim about the synthetic world stated before the run: "the measured statistic exceeds the control's
by more than ``threshold``" (:func:`compare`), "it exceeds a fixed baseline such as chance" (:func:`against`), or "two
quantities are correlated" (:func:`correlation`). Each check carries

- the statistic on the measured run and on a **control that should fail the claim** (an untrained model, shuffled
  labels or masks, random draws, the data-share baseline, a shuffled pairing);
- the effect (measured - control, or measured - baseline) with a 95% interval (percentile bootstrap over the
  sampling unit: test items, seeds or random draws);
- a permutation p-value for H0 "effect <= threshold" (exact when the number of permutations is small);
- a verdict fixed by a rule decided in advance: **pass** when p < alpha and the whole interval lies beyond the
  threshold, **fail** when the point estimate does not, **inconclusive** in between;
- the verdict of the *same rule on the control's outputs*. When the control passes too, the check cannot tell a
  trained model from its control: it is labelled a **consistency** check, not evidence.

Inputs are rounded to ``SIGNIFICANT`` significant digits before any statistic, so ties stay ties and no verdict
changes when inputs are perturbed by floating-point noise (1e-9); resampling uses a fixed seed. scipy.stats does
the resampling (``bootstrap``, ``permutation_test``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from mlmc.errors import check_choice, check_range

ALTERNATIVES = ("greater", "less")
VERDICTS = ("pass", "fail", "inconclusive")
SIGNIFICANT = 6
N_RESAMPLES = 4999
MIME = "application/vnd.mlmc.evidence+json"


@dataclass(frozen=True)
class Check:
    """One planted-truth (or consistency) check; see the module docstring for the meaning of each field."""

    claim: str
    statistic: str
    unit: str
    n: int
    n_control: int
    measured: float
    control_name: str
    control: float
    effect: float
    ci_low: float
    ci_high: float
    p_value: float
    threshold: float
    alternative: str
    alpha: float
    verdict: str
    control_verdict: str
    kind: str
    asserted: bool = False

    @property
    def passed(self) -> bool:
        """True when the verdict is pass."""
        return self.verdict == "pass"

    def as_dict(self) -> dict[str, Any]:
        """The record as a plain dict (for CSV files)."""
        return asdict(self)


def _clean(x: Any, name: str) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64).ravel()
    if a.size == 0:
        raise ValueError(f"evidence: {name} is empty")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"evidence: {name} has non-finite values")
    scale = np.max(np.abs(a))
    if scale == 0:
        return a
    decimals = SIGNIFICANT - 1 - int(np.floor(np.log10(scale)))
    return np.round(a, decimals) + 0.0  # + 0.0 turns -0.0 into 0.0


def _mean_diff(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(x, axis=axis) - np.mean(y, axis=axis)


def _mean(x: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(x, axis=axis)


def _bootstrap(samples: tuple[np.ndarray, ...], statistic: Callable, paired: bool, seed: int) -> tuple[float, float]:
    if all(s.size < 2 or np.ptp(s) == 0 for s in samples):
        value = float(statistic(*[s[None, :] for s in samples])[0])
        return value, value
    if len(samples) == 2 and not paired and min(s.size for s in samples) < 2:
        # A single measured value against many draws (or the reverse): only the larger sample varies.
        i = int(samples[1].size >= 2)
        fixed = float(samples[1 - i].mean())
        res = stats.bootstrap(
            (samples[i],), _mean, method="percentile", n_resamples=N_RESAMPLES, rng=np.random.default_rng(seed)
        )
        lo, hi = res.confidence_interval
        return (fixed - hi, fixed - lo) if i == 1 else (lo - fixed, hi - fixed)
    res = stats.bootstrap(
        samples,
        statistic,
        paired=paired,
        vectorized=True,
        method="percentile",
        n_resamples=N_RESAMPLES,
        rng=np.random.default_rng(seed),
    )
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def _verdict(effect: float, lo: float, hi: float, p: float, threshold: float, alternative: str, alpha: float) -> str:
    beyond = lo > threshold if alternative == "greater" else hi < threshold
    wrong = effect <= threshold if alternative == "greater" else effect >= threshold
    if p < alpha and beyond:
        return "pass"
    return "fail" if wrong else "inconclusive"


def _rank_p(x: np.ndarray, y: np.ndarray) -> float:
    pooled = np.concatenate([x, y])
    observed = _mean_diff(x, y)
    splits = (
        [(np.delete(pooled, i), pooled[i : i + 1]) for i in range(pooled.size)]
        if y.size == 1
        else [(pooled[i : i + 1], np.delete(pooled, i)) for i in range(pooled.size)]
    )
    return float(np.mean([_mean_diff(a, b) >= observed - 1e-12 * max(1.0, abs(observed)) for a, b in splits]))


def _two_sample(
    m: np.ndarray, c: np.ndarray, threshold: float, alternative: str, paired: bool, alpha: float, seed: int
) -> tuple[float, float, float, float, str]:
    """Effect, CI, p-value and verdict of "mean(m) - mean(c) beyond threshold" (the rule every check uses)."""
    effect = float(m.mean() - c.mean())
    if paired:
        lo, hi = _bootstrap((m - c,), _mean, True, seed)
    else:
        lo, hi = _bootstrap((m, c), _mean_diff, False, seed)
    sign = 1.0 if alternative == "greater" else -1.0
    x, y = sign * (m - threshold), sign * c
    if paired:
        d = x - y
        if np.all(d == 0):
            p = 1.0
        else:
            p = float(
                stats.permutation_test(
                    (d,),
                    _mean,
                    permutation_type="samples",
                    alternative="greater",
                    n_resamples=N_RESAMPLES,
                    vectorized=True,
                    rng=np.random.default_rng(seed),
                ).pvalue
            )
    elif np.ptp(np.concatenate([x, y])) == 0:
        p = 1.0
    elif min(x.size, y.size) == 1:
        # one value against n draws: the exact permutation p-value is its rank among all n + 1 values
        p = _rank_p(x, y)
    else:
        p = float(
            stats.permutation_test(
                (x, y),
                _mean_diff,
                permutation_type="independent",
                alternative="greater",
                n_resamples=N_RESAMPLES,
                vectorized=True,
                rng=np.random.default_rng(seed),
            ).pvalue
        )
    return effect, lo, hi, p, _verdict(effect, lo, hi, p, threshold, alternative, alpha)


def _options(alternative: str, alpha: float) -> None:
    check_choice("alternative", alternative, ALTERNATIVES)
    check_range("alpha", alpha, 1e-6, 0.5)


def _kind(kind: str | None, control_verdict: str) -> str:
    if kind is not None:
        return check_choice("kind", kind, ("planted", "consistency"))
    return "consistency" if control_verdict == "pass" else "planted"


def compare(
    claim: str,
    measured: Any,
    control: Any,
    *,
    control_name: str,
    threshold: float = 0.0,
    alternative: str = "greater",
    paired: bool = False,
    unit: str = "items",
    statistic: str = "mean",
    alpha: float = 0.05,
    asserted: bool = False,
    kind: str | None = None,
    seed: int = 0,
) -> Check:
    """Check "mean(measured) - mean(control) > threshold" (or "< threshold" with ``alternative="less"``).

    ``measured`` and ``control`` are samples over ``unit`` (test items, seeds, random draws; one measured value
    against >= 5 random draws is fine). With ``paired`` they are matched (same items under both conditions).
    The control's own verdict is the same rule with the control in place of the measured sample (effect 0), so a
    claim with a negative margin ("stays within 5 points of the control") is a consistency check by construction.
    """
    _options(alternative, alpha)
    m, c = _clean(measured, "measured"), _clean(control, "control")
    if paired and m.shape != c.shape:
        raise ValueError(f"evidence: paired samples need equal sizes, got {m.size} and {c.size}")
    effect, lo, hi, p, verdict = _two_sample(m, c, threshold, alternative, paired, alpha, seed)
    control_verdict = _two_sample(c, c, threshold, alternative, paired, alpha, seed)[4]
    return Check(
        claim,
        statistic,
        unit,
        m.size,
        c.size,
        float(m.mean()),
        control_name,
        float(c.mean()),
        effect,
        lo,
        hi,
        p,
        float(threshold),
        alternative,
        alpha,
        verdict,
        control_verdict,
        _kind(kind, control_verdict),
        asserted,
    )


def _one_sample(
    x: np.ndarray, baseline: float, threshold: float, alternative: str, alpha: float, seed: int
) -> tuple[float, float, float, float, str]:
    d = x - baseline
    effect = float(d.mean())
    lo, hi = _bootstrap((d,), _mean, True, seed)
    sign = 1.0 if alternative == "greater" else -1.0
    z = sign * (d - threshold)
    if np.all(z == 0):
        p = 1.0
    else:
        p = float(
            stats.permutation_test(
                (z,),
                _mean,
                permutation_type="samples",
                alternative="greater",
                n_resamples=N_RESAMPLES,
                vectorized=True,
                rng=np.random.default_rng(seed),
            ).pvalue
        )
    return effect, lo, hi, p, _verdict(effect, lo, hi, p, threshold, alternative, alpha)


def against(
    claim: str,
    measured: Any,
    baseline: float,
    *,
    control: Any,
    control_name: str,
    threshold: float = 0.0,
    alternative: str = "greater",
    unit: str = "items",
    statistic: str = "mean",
    alpha: float = 0.05,
    asserted: bool = False,
    kind: str | None = None,
    seed: int = 0,
) -> Check:
    """Check "mean(measured) - baseline > threshold" against a fixed baseline (chance, the data share).

    The p-value is a sign-flip permutation test of the per-unit differences (H0: symmetric around the threshold).
    ``control`` (same unit) is tested by the same rule: when it passes too, e.g. an untrained model already shows
    the in-language share above the data share, the check is a consistency check. ``effect``, ``ci_low`` and
    ``ci_high`` are measured - baseline; ``control`` holds the control's mean.
    """
    _options(alternative, alpha)
    m, c = _clean(measured, "measured"), _clean(control, "control")
    effect, lo, hi, p, verdict = _one_sample(m, float(baseline), threshold, alternative, alpha, seed)
    control_verdict = _one_sample(c, float(baseline), threshold, alternative, alpha, seed)[4]
    return Check(
        claim,
        f"{statistic} (baseline {baseline:g})",
        unit,
        m.size,
        c.size,
        float(m.mean()),
        control_name,
        float(c.mean()),
        effect,
        lo,
        hi,
        p,
        float(threshold),
        alternative,
        alpha,
        verdict,
        control_verdict,
        _kind(kind, control_verdict),
        asserted,
    )


def _pearson(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    xc = x - x.mean(axis=axis, keepdims=True)
    yc = y - y.mean(axis=axis, keepdims=True)
    den = np.sqrt((xc**2).sum(axis=axis) * (yc**2).sum(axis=axis))
    num = (xc * yc).sum(axis=axis)
    return np.divide(num, den, out=np.zeros_like(num, dtype=np.float64), where=den > 0)


def _spearman(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    return _pearson(stats.rankdata(x, axis=axis), stats.rankdata(y, axis=axis), axis=axis)


def _kendall(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    xs, ys = np.moveaxis(np.atleast_2d(x), axis, -1), np.moveaxis(np.atleast_2d(y), axis, -1)
    xs, ys = np.broadcast_arrays(xs, ys)
    out = [
        0.0 if np.ptp(a) == 0 or np.ptp(b) == 0 else stats.kendalltau(a, b).statistic
        for a, b in zip(xs.reshape(-1, xs.shape[-1]), ys.reshape(-1, ys.shape[-1]), strict=True)
    ]
    return np.asarray(out).reshape(xs.shape[:-1]) if np.ndim(x) > 1 or np.ndim(y) > 1 else np.asarray(out[0])


CORRELATIONS: dict[str, Callable[..., np.ndarray]] = {"spearman": _spearman, "pearson": _pearson, "kendall": _kendall}


def _corr_test(
    x: np.ndarray, y: np.ndarray, method: str, threshold: float, alternative: str, alpha: float, seed: int
) -> tuple[float, float, float, float, str]:
    stat = CORRELATIONS[method]
    r = float(stat(x, y))
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, x.size, size=(1999, x.size))
    lo, hi = (float(v) for v in np.quantile(stat(x[idx], y[idx], axis=-1), [0.025, 0.975]))
    sign = 1.0 if alternative == "greater" else -1.0
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        p = 1.0
    else:
        res = stats.permutation_test(
            (x, y),
            lambda a, b, axis=-1: sign * stat(a, b, axis=axis),
            permutation_type="pairings",
            alternative="greater",
            vectorized=True,
            n_resamples=N_RESAMPLES,
            rng=np.random.default_rng(seed),
        )
        # H0 is "no association"; with a positive margin the observed value must also clear the threshold.
        p = float(res.pvalue) if sign * (r - threshold) > 0 else 1.0
    return r, lo, hi, p, _verdict(r, lo, hi, p, threshold, alternative, alpha)


def correlation(
    claim: str,
    x: Any,
    y: Any,
    *,
    method: str = "spearman",
    threshold: float = 0.0,
    alternative: str = "greater",
    control: tuple[Any, Any] | None = None,
    control_name: str = "shuffled pairing",
    unit: str = "pairs",
    alpha: float = 0.05,
    asserted: bool = False,
    kind: str | None = None,
    seed: int = 0,
) -> Check:
    """Check "corr(x, y) > threshold" with a permutation p-value over pairings and a paired-bootstrap interval.

    The control is ``control=(x_c, y_c)`` (e.g. the untrained model's values) or, by default, ``y`` shuffled once
    with ``seed``; it is tested by the same rule. ``effect`` is the correlation itself (its null is 0).
    """
    _options(alternative, alpha)
    check_choice("method", method, list(CORRELATIONS))
    a, b = _clean(x, "x"), _clean(y, "y")
    if a.shape != b.shape or a.size < 3:
        raise ValueError(f"evidence: correlation needs two samples of equal size >= 3, got {a.size} and {b.size}")
    r, lo, hi, p, verdict = _corr_test(a, b, method, threshold, alternative, alpha, seed)
    if control is None:
        ca, cb = a, b[np.random.default_rng(seed + 1).permutation(b.size)]
    else:
        ca, cb = _clean(control[0], "control x"), _clean(control[1], "control y")
    rc, *_, control_verdict = _corr_test(ca, cb, method, threshold, alternative, alpha, seed)
    return Check(
        claim,
        f"{method} correlation",
        unit,
        a.size,
        ca.size,
        r,
        control_name,
        rc,
        r,
        lo,
        hi,
        p,
        float(threshold),
        alternative,
        alpha,
        verdict,
        control_verdict,
        _kind(kind, control_verdict),
        asserted,
    )


def control_fails(check: Check) -> bool:
    """Meta-test helper: True when the check's rule, applied to its control's outputs, does not pass."""
    return check.control_verdict != "pass"


def _fmt(x: float) -> str:
    return f"{x:.3g}" if abs(x) < 1e4 else f"{x:.0f}"


def _rule(c: Check) -> str:
    op = ">" if c.alternative == "greater" else "<"
    return f"effect {op} {_fmt(c.threshold)}, p < {c.alpha:g}"


def table(checks: Sequence[Check]) -> pd.DataFrame:
    """The checks as one display table with full claim text: evidence kind, statistic, measured vs control, effect
    with its 95% interval, p-value, the rule fixed in advance, the verdict, and whether the control passes too."""
    rows = []
    for c in checks:
        rows.append(
            {
                "claim": c.claim,
                "evidence": c.kind,
                "statistic (unit, n)": f"{c.statistic} ({c.unit}, n = {c.n})",
                "measured": _fmt(c.measured),
                "control": f"{c.control_name}: {_fmt(c.control)}",
                "effect [95% CI]": f"{_fmt(c.effect)} [{_fmt(c.ci_low)}, {_fmt(c.ci_high)}]",
                "p": f"{c.p_value:.2g}",
                "pass if": _rule(c),
                "verdict": c.verdict,
                "control verdict": c.control_verdict,
            }
        )
    return pd.DataFrame(rows)


def show(checks: Sequence[Check], chapter: str) -> None:
    """Display :func:`table` in a notebook without truncating any cell.

    The output also carries the records under the MIME type :data:`MIME` (with ``chapter``), so that the book's
    "what reproduced" page is built from the executed chapters, not typed.
    """
    from IPython.display import display

    t = table(checks)
    with pd.option_context("display.max_colwidth", None, "display.width", 10_000):
        bundle = {"text/plain": t.to_string(index=False), "text/html": t.to_html(index=False, escape=True)}
    records = [{**c.as_dict(), "chapter": chapter} for c in checks]
    display({**bundle, MIME: {"chapter": chapter, "checks": records}}, raw=True)


def summary(checks: Sequence[Check]) -> dict[str, int]:
    """Counts for glued prose: checks, planted and consistency checks, and planted ones that pass, fail or are
    inconclusive."""
    planted = [c for c in checks if c.kind == "planted"]
    return {
        "n_checks": len(checks),
        "n_planted": len(planted),
        "n_consistency": len(checks) - len(planted),
        "n_pass": sum(c.verdict == "pass" for c in planted),
        "n_fail": sum(c.verdict == "fail" for c in planted),
        "n_inconclusive": sum(c.verdict == "inconclusive" for c in planted),
    }


def assert_checks(checks: Sequence[Check]) -> None:
    """Raise AssertionError naming every asserted check that does not pass or whose control passes too."""
    bad = [c for c in checks if c.asserted and (not c.passed or not control_fails(c))]
    if bad:
        lines = [f"- {c.claim}: verdict {c.verdict}, control verdict {c.control_verdict}" for c in bad]
        raise AssertionError("asserted planted-truth checks failed:\n" + "\n".join(lines))


def verdicts(checks: Check | Sequence[Check]) -> list[tuple[str, str]]:
    """(verdict, control verdict) of each check: what must not change under jitter."""
    items = [checks] if isinstance(checks, Check) else list(checks)
    return [(c.verdict, c.control_verdict) for c in items]


def jitter_stable(fn: Callable[..., Check | Sequence[Check]], *arrays: Any, eps: float = 1e-9, seed: int = 0) -> bool:
    """True when ``fn(*arrays)`` gives the same verdicts after every array is perturbed by ``eps`` times its scale."""
    rng = np.random.default_rng(seed)
    jittered = []
    for a in arrays:
        x = np.asarray(a, dtype=np.float64)
        scale = float(np.max(np.abs(x))) or 1.0
        jittered.append(x + eps * scale * rng.standard_normal(x.shape))
    return verdicts(fn(*arrays)) == verdicts(fn(*jittered))
