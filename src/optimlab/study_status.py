"""Trial counts of every study in a storage (for `optimlab status`)."""

from __future__ import annotations

from typing import Any

from optimlab.errors import UsageError
from optimlab.storage import SURPLUS_ATTR, file_path, mask_url, open_storage


def study_rows(url: str) -> list[dict[str, Any]]:
    """One row per study: name, trials per state, best value (None if none complete)."""
    import optuna
    from optuna.trial import TrialState

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    path = file_path(url)
    if path is not None and not path.exists():
        raise UsageError(f"no storage file {path}")
    storage = open_storage(url)
    names = optuna.get_all_study_names(storage=storage)
    if not names:
        raise UsageError(f"no studies in {mask_url(url)}")
    rows = []
    for name in sorted(names):
        study = optuna.load_study(study_name=name, storage=storage)
        # Surplus trials (asked once the budget was covered, never run) are not failures.
        trials = [t for t in study.get_trials(deepcopy=False) if not t.user_attrs.get(SURPLUS_ATTR)]
        count = {state: sum(t.state == state for t in trials) for state in TrialState}
        complete = [t.value for t in trials if t.state == TrialState.COMPLETE]
        rows.append(
            {
                "study": name,
                "complete": count[TrialState.COMPLETE],
                "pruned": count[TrialState.PRUNED],
                "running": count[TrialState.RUNNING],
                "waiting": count[TrialState.WAITING],
                "failed": count[TrialState.FAIL],
                "best": min(complete) if complete else None,
            }
        )
    return rows
