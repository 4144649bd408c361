"""Statistics against independent formulas, and a verdict that follows the numbers."""

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from optimlab.report.verdict import LEAK_RATIO, PROTOCOL, rules, verdict
from optimlab.stats import mean_ci, welch

CLAIM = {"dynamic_adam_val_loss": 0.238, "adam_val_loss": 1.103, "mnist1d_mlp_test_accuracy": 0.68}


def test_mean_ci_matches_the_t_interval_by_hand():
    x = [1.0, 2.0, 3.0, 4.0, 5.0]
    est = mean_ci(x)
    t_975_4 = 2.7764451051977987  # Student t, 4 degrees of freedom, 97.5% quantile (tables)
    half = t_975_4 * math.sqrt(2.5) / math.sqrt(5)  # sample variance of 1..5 is 2.5
    assert est.n == 5 and est.mean == 3.0
    assert est.ci_low == pytest.approx(3.0 - half, rel=1e-12)
    assert est.ci_high == pytest.approx(3.0 + half, rel=1e-12)


def test_mean_ci_skips_non_finite_and_handles_small_samples():
    assert mean_ci([1.0, math.nan, None, math.inf, 3.0]).n == 2
    one = mean_ci([2.0])
    assert (one.n, one.mean, one.ci_low) == (1, 2.0, None)
    assert mean_ci([]).mean is None


def test_welch_matches_the_formula():
    rng = np.random.default_rng(0)
    a, b = rng.normal(1.0, 0.1, 5), rng.normal(1.2, 0.3, 7)
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    t = (a.mean() - b.mean()) / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))  # Welch-Satterthwaite
    p = 2 * scipy_stats.t.sf(abs(t), df)
    result = welch(list(a), list(b))
    assert result.t == pytest.approx(t, rel=1e-10)
    assert result.p == pytest.approx(p, rel=1e-8)
    assert result.diff == pytest.approx(a.mean() - b.mean())
    assert welch([1.0], [1.0, 2.0]) is None
    assert welch([1.0, 1.0], [1.0, 1.0]) is None


def entry(val, test, acc=0.6):
    """A summary.json entry with final-run statistics of the given per-seed values."""
    return {
        "finals": {
            "val_loss": mean_ci(val).to_dict(),
            "test_loss": mean_ci(test).to_dict(),
            "test_accuracy": mean_ci([acc] * len(test)).to_dict(),
        },
        "_test": test,
    }


def summary(budget=None, **entries):
    """A summary.json of the given entries; the claim's protocol as budget unless given."""
    for name, e in entries.items():
        test = e.pop("_test")
        if name == "adam":
            e["vs_adam"] = None
        else:
            c = welch(test, ADAM_TEST)
            e["vs_adam"] = {"test_loss": c.to_dict() if c else None}
    return {"claim": CLAIM, "budget": budget or dict(PROTOCOL), "optimizers": entries}


ADAM_TEST = [1.10, 1.12, 1.08, 1.11, 1.09]
ADAM = dict(val=[1.10, 1.12, 1.09, 1.11, 1.10], test=ADAM_TEST)


def test_verdict_not_supported_when_numbers_show_no_gain():
    s = summary(
        adam=entry(**ADAM),
        dynamic_adam=entry([1.09, 1.11, 1.08, 1.10, 1.12], [1.10, 1.11, 1.09, 1.12, 1.08]),
        dynamic_adam_published=entry(
            [0.30, 0.25, 0.28, 0.27, 0.26], [1.20, 1.25, 1.22, 1.19, 1.24]
        ),
    )
    v = verdict(s)
    assert v.flags["claim_val_loss_reproduced"] is False
    assert v.flags["test_loss_better_than_adam"] is False
    assert v.flags["published_validation_leak"] is True
    assert v.headline.startswith("The claim is not supported")
    assert "trains on its validation set" in v.headline
    assert any("0.238" in f for f in v.findings)


def test_verdict_changes_when_the_numbers_do():
    s = summary(
        adam=entry(**ADAM),
        dynamic_adam=entry([0.24, 0.23, 0.25, 0.22, 0.24], [0.50, 0.52, 0.49, 0.51, 0.50]),
        dynamic_adam_published=entry(
            [0.50, 0.52, 0.49, 0.51, 0.50], [0.55, 0.56, 0.54, 0.57, 0.55]
        ),
    )
    v = verdict(s)
    assert v.flags == {
        "claim_val_loss_reproduced": True,
        "adam_val_loss_matches_claim": True,
        "test_loss_better_than_adam": True,
        "published_validation_leak": False,
        "published_test_loss_better_than_adam": True,
        "claim_protocol_budget": True,
    }
    assert v.headline.startswith("The claim holds")


def test_verdict_reproduced_validation_without_test_gain():
    s = summary(
        adam=entry(**ADAM),
        dynamic_adam=entry([0.24, 0.23, 0.25, 0.22, 0.24], [1.10, 1.11, 1.09, 1.12, 1.08]),
    )
    v = verdict(s)
    assert v.headline.startswith("The claimed validation loss is reproduced")
    assert v.flags["published_validation_leak"] is None


def test_verdict_needs_both_adam_and_dynamic_adam():
    s = summary(adam=entry(**ADAM))
    assert verdict(s).headline.startswith("Not decidable")


def holding_claim(budget=None):
    """A run in which the claim holds, at the given budget."""
    return summary(
        budget,
        adam=entry(**ADAM),
        dynamic_adam=entry([0.24, 0.23, 0.25, 0.22, 0.24], [0.50, 0.52, 0.49, 0.51, 0.50]),
    )


def test_a_reduced_budget_is_said_first_in_the_headline():
    v = verdict(holding_claim({"trials": 4, "epochs": 3, "seeds": 2}))
    assert v.headline.startswith(
        "Under a reduced budget (3 epochs instead of 25, 4 tuning trials instead of 20, 2 final "
        "seeds instead of at least 5), this run is not a test of the claim's protocol. Within "
        "this budget, the claim holds:"
    )
    assert v.flags["claim_protocol_budget"] is False
    # one departure is enough, and only the departures are listed
    one = verdict(holding_claim({"trials": 20, "epochs": 25, "seeds": 3})).headline
    assert one.startswith("Under a reduced budget (3 final seeds instead of at least 5), ")
    fewer = verdict(holding_claim({"trials": 4, "epochs": 3, "seeds": 8})).headline
    assert fewer.startswith("Under a reduced budget (3 epochs instead of 25, 4 tuning trials ")
    more = verdict(holding_claim({"trials": 50, "epochs": 25, "seeds": 10})).headline
    assert more.startswith("Under a budget other than the claim's protocol (50 tuning trials ")
    # the claim's protocol, and more seeds than it asks for, are a test of it
    for budget in [dict(PROTOCOL), {**PROTOCOL, "seeds": 8}]:
        v = verdict(holding_claim(budget))
        assert v.headline.startswith("The claim holds") and v.flags["claim_protocol_budget"]


def test_an_undecidable_run_under_a_reduced_budget_says_both():
    v = verdict(summary({"trials": 4, "epochs": 3, "seeds": 1}, adam=entry(**ADAM)))
    assert v.headline.startswith("Under a reduced budget (3 epochs instead of 25, ")
    assert "Not decidable from this run" in v.headline


def published(val_over_test, test=1.2):
    """dynamic_adam_published entries whose validation loss is `val_over_test` x its test."""
    tests = [test + d for d in (0.0, 0.01, -0.01, 0.02, -0.02)]
    return entry([val_over_test * x for x in tests], tests)


def with_published(adam_val_over_test, val_over_test):
    adam_test = [1.10, 1.12, 1.08, 1.11, 1.09]
    return summary(
        adam=entry([adam_val_over_test * x for x in adam_test], adam_test),
        dynamic_adam=entry([1.09, 1.11, 1.08, 1.10, 1.12], [1.10, 1.11, 1.09, 1.12, 1.08]),
        dynamic_adam_published=published(val_over_test),
    )


@pytest.mark.parametrize(
    ("adam_ratio", "published_ratio", "leak"),
    [
        (1.03, 0.70, True),  # a 3-epoch run's leak: above an absolute 0.6, far below adam's
        (1.03, 0.004, True),  # the full protocol's leak
        (1.03, 0.99, False),  # an honest variant: as close to adam's as the others
        (0.55, 0.50, False),  # validation below test for adam too: nothing published-specific
        (0.55, 0.30, True),
    ],
)
def test_leakage_is_judged_against_adams_own_validation_test_ratio(
    adam_ratio, published_ratio, leak
):
    v = verdict(with_published(adam_ratio, published_ratio))
    assert v.flags["published_validation_leak"] is leak
    assert (published_ratio < LEAK_RATIO * adam_ratio) is leak  # the documented rule
    assert ("trains on its validation set" in v.headline) is leak
    finding = next(f for f in v.findings if f.startswith("The published procedure"))
    assert f"against {adam_ratio:.3g} for adam" in finding
    assert ("no sign of validation leakage" in finding) is (not leak)


def test_leakage_is_not_judged_without_adam():
    s = summary(
        dynamic_adam=entry([1.09, 1.11, 1.08, 1.10, 1.12], [1.10, 1.11, 1.09, 1.12, 1.08]),
        dynamic_adam_published=published(0.1),
    )
    for entry_ in s["optimizers"].values():
        entry_["vs_adam"] = None  # no adam, no comparison with it
    v = verdict(s)
    assert v.flags["published_validation_leak"] is None
    assert any("without adam's final runs" in f for f in v.findings)


def test_the_rules_text_states_the_thresholds_used():
    text = rules()
    assert f"below {LEAK_RATIO:g} times adam's" in text
    assert f"{PROTOCOL['trials']} tuning trials" in text and f"{PROTOCOL['epochs']} epochs" in text
