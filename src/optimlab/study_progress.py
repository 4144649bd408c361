"""Progress of a study on stderr: a rich display on a terminal, one line per run otherwise.

Workers send plain-dict events (they cross process boundaries): `count` (how many trials
of a phase have finished, as the storage says: every worker, on every machine, counts),
`unit` (a trial or a final seed begins), `epoch`, `done` (state, value), `wait` (the rest of
a phase runs on other workers), `skip` (no viable configuration) and `note` (a message).
"""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from optimlab.study import StudyConfig


class StudyProgress:
    def __init__(self, config: StudyConfig, *, quiet: bool = False, console: Console | None = None):
        self.config = config
        self.console = console or Console(stderr=True)
        self.quiet = quiet
        self.live = self.console.is_terminal and not quiet
        self.units = config.trials + config.seeds
        self.tasks: dict[str, Any] = {}
        self.status: dict[str, str] = {}
        self.counts: dict[str, dict[str, int]] = {}

    def __enter__(self) -> StudyProgress:
        if self.live:
            self.progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(bar_width=24),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=self.console,
            )
            self.progress.start()
            total = self.units * len(self.config.optimizers)
            self.overall = self.progress.add_task("study", total=total)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.live:
            self.progress.stop()

    def emit(self, event: dict[str, Any]) -> None:
        kind = event["kind"]
        if kind == "note":
            if not self.quiet:
                self.console.print(event["message"], highlight=False)
            return
        optimizer = event["optimizer"]
        if kind == "count":
            self._count(optimizer, event["phase"], event["finished"])
        elif kind == "unit":
            label = "trial" if event["phase"] == "tune" else "seed"
            total = self.config.trials if event["phase"] == "tune" else self.config.seeds
            self.status[optimizer] = f"{label} {event['index']}/{total}"
            self._describe(optimizer, "")
        elif kind == "epoch":
            val = event["val_loss"]
            epoch = f"epoch {event['epoch']}/{event['epochs']} val {val:.4f}"
            self._describe(optimizer, epoch)
        elif kind == "wait":
            self.status[optimizer] = "waiting for other workers"
            self._describe(optimizer, "")
        elif kind == "done":
            self._line(event)
        elif kind == "skip":
            self._count(optimizer, "final", self.config.seeds)
            if not self.quiet:
                self.console.print(f"{optimizer}: no trial completed; no final runs")

    def _count(self, optimizer: str, phase: str, finished: int) -> None:
        """Set an optimizer's bar from the storage's count (never backwards); the first
        count of a phase that finds work done says that the run resumes."""
        limit = self.config.trials if phase == "tune" else self.config.seeds
        if optimizer not in self.counts and finished and not self.quiet:
            what = "tuning trials" if phase == "tune" else "final seeds"
            self.console.print(
                f"{optimizer}: {min(finished, limit)}/{limit} {what} already finished; resuming",
                highlight=False,
            )
        counts = self.counts.setdefault(optimizer, {"tune": 0, "final": 0})
        before = sum(counts.values())
        counts[phase] = max(counts[phase], min(finished, limit))
        self._advance(optimizer, sum(counts.values()) - before)

    def _task(self, optimizer: str) -> Any:
        if optimizer not in self.tasks:
            self.tasks[optimizer] = self.progress.add_task(optimizer, total=self.units)
        return self.tasks[optimizer]

    def _advance(self, optimizer: str, steps: int) -> None:
        if self.live and steps:
            self.progress.advance(self._task(optimizer), steps)
            self.progress.advance(self.overall, steps)

    def _describe(self, optimizer: str, detail: str) -> None:
        if self.live:
            text = f"{optimizer} {self.status.get(optimizer, '')} {detail}".rstrip()
            self.progress.update(self._task(optimizer), description=text)

    def _line(self, event: dict[str, Any]) -> None:
        if self.live or self.quiet:
            return
        phase = "trial" if event["phase"] == "tune" else "final seed"
        total = self.config.trials if event["phase"] == "tune" else self.config.seeds
        value = "" if event["value"] is None else f" {event['value']:.4f}"
        metric = " val loss" if event["phase"] == "tune" else " test loss"
        self.console.print(
            f"{event['optimizer']} {phase} {event['index']}/{total}: {event['state']}"
            + (metric + value if value else ""),
            highlight=False,
        )
