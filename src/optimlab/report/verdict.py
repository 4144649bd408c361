"""A plain-language verdict on the claim, computed from the study's numbers.

The claim: "DynamicAdam reached a validation loss of 0.238 on mnist1d against 1.103 for
tuned Adam". The verdict asks three questions of summary.json:

1. Is dynamic_adam's mean validation loss near the claimed 0.238 (within CLAIM_TOLERANCE,
   relative)? And Adam's near 1.103?
2. Is dynamic_adam's test loss significantly lower than Adam's (Welch, p < ALPHA)? Only the
   untouched test set can show a real gain.
3. Did the published variant train on its validation set? Validation (held-out training
   examples) and test examples come from the same generator, so a model that never trained
   on either relates to them as Adam's does: its validation/test loss ratio should be close
   to Adam's, whatever its overall level of fit. A ratio below LEAK_RATIO times Adam's means
   validation loss fell where test loss did not: the validation set trained the model.
   Measured (default split, MLP): the six honest variants' ratios lay within 0.98 to 1.03
   times Adam's, both in a 3-epoch quick run and under the full protocol; the published
   variant's were 0.69 times Adam's after 3 epochs and 0.0035 after 25. LEAK_RATIO = 0.8
   lies about ten times the largest honest deviation (2%) away from 1, and still catches
   the leak of a 3-epoch run. Without Adam's final runs there is no baseline and no answer.

And it says when the run is no test of the claim's protocol at all: a budget other than
PROTOCOL (20 tuning trials, 25 epochs; at least 5 final seeds) answers the questions for
that budget only, and the headline begins by saying so.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

CLAIM_TOLERANCE = 0.25  # "near" a claimed loss: within 25% of it
ALPHA = 0.05  # significance level of Welch's test
# A variant's validation/test loss ratio below 0.8 x adam's: the model saw validation data.
LEAK_RATIO = 0.8
# The claim's protocol: tuning trials and epochs exactly, final seeds at least.
PROTOCOL = {"trials": 20, "epochs": 25, "seeds": 5}


def rules() -> str:
    """The verdict's rules, for the report."""
    return (
        f"Rules: a loss is 'near' a claimed value within {CLAIM_TOLERANCE:.0%} of it; "
        f"differences are significant at p < {ALPHA} (Welch's t-test over final seeds); a "
        f"validation/test loss ratio below {LEAK_RATIO:g} times adam's marks validation leakage "
        "(validation and test examples come from the same generator, so a model that trained "
        "on neither relates to them as adam does); a run with other than "
        f"{PROTOCOL['trials']} tuning trials or {PROTOCOL['epochs']} epochs, or fewer than "
        f"{PROTOCOL['seeds']} final seeds, is not a test of the claim's protocol."
    )


@dataclass
class Verdict:
    headline: str
    findings: list[str] = field(default_factory=list)
    flags: dict[str, bool | None] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _mean(summary: dict, optimizer: str, metric: str) -> float | None:
    entry = summary["optimizers"].get(optimizer)
    return entry["finals"][metric]["mean"] if entry else None


def _ci(summary: dict, optimizer: str, metric: str) -> str:
    est = summary["optimizers"][optimizer]["finals"][metric]
    if est["ci_low"] is None:
        return f"{est['mean']:.3f} (n={est['n']})"
    return f"{est['mean']:.3f} (95% CI {est['ci_low']:.3f} to {est['ci_high']:.3f}, n={est['n']})"


def near(value: float | None, claimed: float) -> bool | None:
    return None if value is None else abs(value - claimed) <= CLAIM_TOLERANCE * claimed


def verdict(summary: dict[str, Any]) -> Verdict:
    """The verdict on the claim from summary.json's numbers (see the module docstring)."""
    claim = summary["claim"]
    findings: list[str] = []
    flags: dict[str, bool | None] = {}

    dyn_val = _mean(summary, "dynamic_adam", "val_loss")
    flags["claim_val_loss_reproduced"] = near(dyn_val, claim["dynamic_adam_val_loss"])
    if dyn_val is not None:
        where = "near" if flags["claim_val_loss_reproduced"] else "far from"
        source = {"val": "validation", "train": "training"}.get(
            summary["optimizers"]["dynamic_adam"].get("meta_source"), "validation"
        )
        findings.append(
            f"dynamic_adam (meta batches from {source} data) reached a validation loss of "
            f"{_ci(summary, 'dynamic_adam', 'val_loss')}: {where} the claimed "
            f"{claim['dynamic_adam_val_loss']}."
        )
    adam_val = _mean(summary, "adam", "val_loss")
    flags["adam_val_loss_matches_claim"] = near(adam_val, claim["adam_val_loss"])
    if adam_val is not None:
        where = "near" if flags["adam_val_loss_matches_claim"] else "far from"
        findings.append(
            f"Tuned adam reached a validation loss of {_ci(summary, 'adam', 'val_loss')}: "
            f"{where} the claimed {claim['adam_val_loss']}."
        )

    flags["test_loss_better_than_adam"] = _test_gain(summary, "dynamic_adam", findings)
    flags["published_validation_leak"] = _leak(summary, findings)
    flags["published_test_loss_better_than_adam"] = _test_gain(
        summary, "dynamic_adam_published", findings
    )
    _accuracy(summary, claim["mnist1d_mlp_test_accuracy"], findings)
    departures = budget_departures(summary.get("budget"))
    flags["claim_protocol_budget"] = None if departures is None else not departures
    headline = _headline(flags, dyn_val, summary)
    if departures:
        headline = _under_budget(departures, headline, summary["budget"])
    return Verdict(headline, findings, flags)


def budget_departures(budget: dict[str, int] | None) -> list[str] | None:
    """How the run's budget departs from the claim's protocol, one phrase per departure
    (empty: it follows the protocol; None: no budget recorded)."""
    if budget is None:
        return None
    trials, epochs, seeds = budget["trials"], budget["epochs"], budget["seeds"]
    departures = []
    if epochs != PROTOCOL["epochs"]:
        departures.append(f"{epochs} epochs instead of {PROTOCOL['epochs']}")
    if trials != PROTOCOL["trials"]:
        departures.append(f"{trials} tuning trials instead of {PROTOCOL['trials']}")
    if seeds < PROTOCOL["seeds"]:
        departures.append(f"{seeds} final seeds instead of at least {PROTOCOL['seeds']}")
    return departures


def _under_budget(departures: list[str], headline: str, budget: dict[str, int]) -> str:
    """The headline, prefixed with the statement that this run does not test the protocol."""
    # (seeds depart only when fewer)
    reduced = all(budget[k] <= PROTOCOL[k] for k in ("trials", "epochs"))
    kind = "a reduced budget" if reduced else "a budget other than the claim's protocol"
    prefix = f"Under {kind} ({', '.join(departures)}), this run is not a test of the claim's"
    prefix += " protocol."
    if headline.startswith("Not decidable"):
        return f"{prefix} {headline}"
    return f"{prefix} Within this budget, {headline[0].lower()}{headline[1:]}"


def _test_gain(summary: dict, optimizer: str, findings: list[str]) -> bool | None:
    entry = summary["optimizers"].get(optimizer)
    comparison = (entry or {}).get("vs_adam") or {}
    test = comparison.get("test_loss")
    if test is None:
        return None
    significant = test["p"] < ALPHA
    if significant and test["diff"] < 0:
        result, gain = "significantly lower than", True
    elif significant:
        result, gain = "significantly higher than", False
    else:
        result, gain = "not significantly different from", False
    findings.append(
        f"{optimizer}'s test loss, {_ci(summary, optimizer, 'test_loss')}, is {result} "
        f"adam's, {_ci(summary, 'adam', 'test_loss')} (Welch's t-test, "
        f"difference {test['diff']:+.3f}, p = {test['p']:.3g})."
    )
    return gain


def _leak(summary: dict, findings: list[str]) -> bool | None:
    """Rule 3 (module docstring): the published variant's validation/test loss ratio against
    adam's. None without both variants' final runs."""
    name = "dynamic_adam_published"
    val, test = _mean(summary, name, "val_loss"), _mean(summary, name, "test_loss")
    if val is None or test is None or test <= 0:
        return None
    adam_val, adam_test = _mean(summary, "adam", "val_loss"), _mean(summary, "adam", "test_loss")
    if adam_val is None or adam_test is None or adam_test <= 0:
        findings.append(
            f"The published procedure reaches a validation loss of {val:.3f} and a test loss of "
            f"{test:.3f}; without adam's final runs as the baseline, whether its validation "
            "set trained it is not decided here."
        )
        return None
    ratio, adam_ratio = val / test, adam_val / adam_test
    leak = ratio < LEAK_RATIO * adam_ratio
    numbers = (
        f"validation/test loss ratio is {ratio:.3g} ({val:.3f} / {test:.3f}) against "
        f"{adam_ratio:.3g} for adam ({adam_val:.3f} / {adam_test:.3f})"
    )
    if leak:
        findings.append(
            f"The published procedure's {numbers}: below {LEAK_RATIO:g} times adam's, its "
            "validation loss fell where its test loss did not, the mark of a model trained on "
            "its validation set (the validation gradients leak into the update)."
        )
    else:
        findings.append(
            f"The published procedure's {numbers}: not below {LEAK_RATIO:g} times adam's, no "
            "sign of validation leakage in this run."
        )
    return leak


def _accuracy(summary: dict, reference: float, findings: list[str]) -> None:
    """Test accuracies against the mnist1d paper's MLP (reference-only variants labelled)."""
    accuracies = {
        name: entry["finals"]["test_accuracy"]["mean"]
        for name, entry in summary["optimizers"].items()
        if entry["finals"]["test_accuracy"]["mean"] is not None
    }
    if not accuracies:
        return

    def label(name: str) -> str:
        reference_only = summary["optimizers"][name].get("reference_only")
        return f"{name} (reference)" if reference_only else name

    best = max(accuracies, key=accuracies.get)
    above = [label(n) for n, a in accuracies.items() if a >= reference]
    findings.append(
        f"Best mean test accuracy: {label(best)} at {accuracies[best]:.1%}, against "
        f"{reference:.0%} for the MLP in the mnist1d paper; {len(above)} of {len(accuracies)} "
        "optimizers reach it" + (f" ({', '.join(above)})." if above else ".")
    )


def _headline(flags: dict[str, bool | None], dyn_val: float | None, summary: dict) -> str:
    reproduced = flags["claim_val_loss_reproduced"]
    gain = flags["test_loss_better_than_adam"]
    leak = flags["published_validation_leak"]
    if reproduced is None or gain is None:
        return (
            "Not decidable from this run: it needs final runs of both adam and dynamic_adam "
            "(with at least 2 seeds each)."
        )
    if reproduced and gain:
        text = (
            f"The claim holds: dynamic_adam's validation loss ({dyn_val:.3f}) is near 0.238 and "
            "its test loss is significantly lower than tuned Adam's."
        )
    elif gain:
        text = (
            f"The claimed 0.238 is not reproduced (dynamic_adam: {dyn_val:.3f}), but "
            "dynamic_adam's test loss is significantly lower than tuned Adam's."
        )
    elif reproduced:
        text = (
            f"The claimed validation loss is reproduced (dynamic_adam: {dyn_val:.3f}), but "
            "dynamic_adam's test loss is not significantly lower than tuned Adam's: the "
            "validation number shows no real gain."
        )
    else:
        text = (
            f"The claim is not supported: dynamic_adam's validation loss ({dyn_val:.3f}) is far "
            "from 0.238 and its test loss is not significantly lower than tuned Adam's."
        )
    if leak:
        name = "dynamic_adam_published"
        val, test = _mean(summary, name, "val_loss"), _mean(summary, name, "test_loss")
        adam_ratio = _mean(summary, "adam", "val_loss") / _mean(summary, "adam", "test_loss")
        ending = {
            True: "; its test loss is still significantly lower than Adam's.",
            False: ", and its test loss is not significantly lower than Adam's.",
            None: ".",
        }[flags["published_test_loss_better_than_adam"]]
        text += (
            f" The published procedure's validation loss ({val:.3f}) is far below its test loss "
            f"({test:.3f}; ratio {val / test:.3g}, adam's {adam_ratio:.3g}): it trains on its "
            f"validation set{ending}"
        )
    return text
