"""mlmc.evidence: verdict rules, controls, intervals, p-values and jitter stability."""

import numpy as np
import pytest

from mlmc import evidence as ev


def _rng(seed=0):
    return np.random.default_rng(seed)


def test_compare_detects_a_real_effect_and_its_control_fails():
    m, c = _rng().normal(1.0, 0.3, 40), _rng(1).normal(0.0, 0.3, 40)
    chk = ev.compare("trained beats untrained", m, c, control_name="untrained", asserted=True)
    assert chk.verdict == "pass" and chk.kind == "planted"
    assert chk.ci_low < chk.effect < chk.ci_high and chk.ci_low > 0
    assert chk.p_value < 0.01
    assert ev.control_fails(chk)
    ev.assert_checks([chk])


def test_compare_no_effect_is_not_a_pass():
    m, c = _rng().normal(0.0, 1, 30), _rng(1).normal(0.0, 1, 30)
    chk = ev.compare("no effect", m, c, control_name="same distribution")
    assert chk.verdict != "pass" and chk.p_value > 0.05


def test_compare_threshold_is_a_margin():
    # the effect is about 0.5: significant against 0, not against a margin of 1
    m, c = _rng().normal(0.5, 0.1, 50), _rng(1).normal(0.0, 0.1, 50)
    assert ev.compare("x", m, c, control_name="c").verdict == "pass"
    chk = ev.compare("x", m, c, control_name="c", threshold=1.0)
    assert chk.verdict == "fail" and chk.p_value > 0.5


def test_less_alternative_mirrors_greater():
    m, c = _rng().normal(-1.0, 0.3, 20), _rng(1).normal(0.0, 0.3, 20)
    assert ev.compare("lower", m, c, control_name="c", alternative="less").verdict == "pass"
    assert ev.compare("higher", m, c, control_name="c").verdict == "fail"


def test_negative_margin_claim_is_a_consistency_check():
    m, c = _rng().normal(0.0, 0.1, 20), _rng(1).normal(0.0, 0.1, 20)
    chk = ev.compare("stays within 1 of the control", m, c, control_name="c", threshold=-1.0)
    assert chk.verdict == "pass" and chk.kind == "consistency" and not ev.control_fails(chk)
    with pytest.raises(AssertionError, match="stays within"):
        ev.assert_checks(
            [ev.compare("stays within 1 of the control", m, c, control_name="c", threshold=-1.0, asserted=True)]
        )


def test_paired_uses_the_pairing():
    base = _rng().normal(0, 5, 30)
    m, c = base + 0.5 + _rng(2).normal(0, 0.05, 30), base
    assert ev.compare("paired", m, c, control_name="c", paired=True).verdict == "pass"
    assert ev.compare("unpaired", m, c, control_name="c").verdict != "pass"  # item spread swamps the effect


def test_one_value_against_random_draws_gives_an_exact_rank_p_value():
    draws = np.arange(9.0)  # 9 random-mask draws
    chk = ev.compare("identified mask beats random ones", [20.0], draws, control_name="random masks", unit="draws")
    # independent permutation test of 1 vs 9 values is exact: p = 1/10
    assert chk.p_value == pytest.approx(0.1)
    assert chk.verdict == "inconclusive"  # above every draw, but 9 draws cannot give p < 0.05
    chk2 = ev.compare("x", [40.0], np.arange(30.0), control_name="random", unit="draws")
    assert chk2.p_value == pytest.approx(1 / 31) and chk2.verdict == "pass"
    chk3 = ev.compare("x", [20.0], np.arange(30.0), control_name="random", unit="draws")
    assert chk3.p_value == pytest.approx(11 / 31) and chk3.verdict == "inconclusive"


def test_against_baseline_labels_a_check_the_control_passes_as_consistency():
    share = 20.0
    trained, untrained = _rng().normal(60, 5, 25), _rng(1).normal(90, 5, 25)
    chk = ev.against(
        "in-language share above the data share", trained, share, control=untrained, control_name="untrained model"
    )
    assert chk.verdict == "pass" and chk.control_verdict == "pass" and chk.kind == "consistency"
    chk2 = ev.against("x", trained, share, control=_rng(2).normal(20, 5, 25), control_name="untrained")
    assert chk2.kind == "planted" and chk2.effect == pytest.approx(trained.mean() - share, abs=1e-4)


def test_correlation_permutation_p_and_shuffled_control():
    x = np.arange(12.0)
    y = x + _rng().normal(0, 1, 12)
    chk = ev.correlation("closer languages overlap more", x, y)
    assert chk.verdict == "pass" and chk.kind == "planted" and chk.p_value < 0.01
    assert chk.control_verdict != "pass"
    flat = ev.correlation("x", x, _rng(3).normal(0, 1, 12))
    assert flat.verdict != "pass"


def test_ties_and_jitter_do_not_flip_verdicts():
    # a statistic with three values and many ties (the chapter-02 failure): rounding keeps ties tied
    x = np.array([0.5, 0.5, 0.5, 1 / 3, 1 / 3, 0.25, 0.25, 0.25, 0.5, 1 / 3])
    y = np.array([3.0, 2.0, 4.0, 1.0, 2.0, 0.5, 1.5, 0.0, 3.5, 2.5])

    def fn(a, b):
        return [
            ev.correlation("c", a, b),
            ev.compare("m", a, b, control_name="c"),
            ev.against("a", a, 0.3, control=b / 10, control_name="c"),
        ]

    assert ev.jitter_stable(fn, x, y)
    base = fn(x, y)
    for seed in range(5):
        j = [v + 1e-9 * _rng(seed).standard_normal(v.shape) for v in (x, y)]
        again = fn(*j)
        assert [c.p_value for c in again] == [c.p_value for c in base]


def test_jitter_stable_detects_instability():
    # a caller that branches on an exact comparison of raw inputs is caught
    def fragile(a):
        sample = [1.0] * 5 if a[0] > 1.0 else [0.0] * 5
        return ev.compare("x", sample, [0.0] * 5, control_name="c")

    assert np.random.default_rng(0).standard_normal() > 0  # the jitter of seed 0 pushes a[0] above 1
    assert not ev.jitter_stable(fragile, np.array([1.0, 2.0]), seed=0)


def test_table_keeps_full_claim_text_and_summary_counts():
    long = "a claim whose text is much longer than fifty characters and must not be truncated anywhere"
    m, c = _rng().normal(1, 0.1, 10), _rng(1).normal(0, 0.1, 10)
    checks = [ev.compare(long, m, c, control_name="c"), ev.compare("none", c, c, control_name="c")]
    t = ev.table(checks)
    assert t.loc[0, "claim"] == long and list(t["verdict"]) == ["pass", "fail"]
    s = ev.summary(checks)
    assert s == {"n_checks": 2, "n_planted": 2, "n_consistency": 0, "n_pass": 1, "n_fail": 1, "n_inconclusive": 0}


def test_bad_options_fail_clearly():
    with pytest.raises(ValueError, match="alternative"):
        ev.compare("x", [1, 2], [0, 1], control_name="c", alternative="two-sided")
    with pytest.raises(ValueError, match="non-finite"):
        ev.compare("x", [1, np.nan], [0, 1], control_name="c")
    with pytest.raises(ValueError, match="paired"):
        ev.compare("x", [1, 2, 3], [0, 1], control_name="c", paired=True)


def test_check_device_names_the_parameter():
    import torch

    from mlmc.errors import check_device

    assert check_device("device", "cpu") == "cpu"
    with pytest.raises(ValueError, match="'device' must be 'cpu', 'cuda'"):
        check_device("device", "tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="parameter 'device'='cuda' needs a GPU"):
            check_device("device", "cuda")
