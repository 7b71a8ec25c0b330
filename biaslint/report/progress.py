"""A live progress display (target, stage) for runs of several targets on a terminal.

Shown only when stderr is a terminal and the run is not in CI: a CI log or a file must get the
report and nothing else. rich's ``Progress`` is transient, so the display vanishes at the end and
leaves only the report behind.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Callable, Iterator

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn

# The variables CI services set (GitHub Actions, GitLab, CircleCI, Travis, Buildkite, Azure...):
# all set CI; Azure Pipelines sets TF_BUILD instead.
_CI_VARIABLES = ("CI", "TF_BUILD", "BUILD_NUMBER")


def in_ci(environ: dict[str, str] | None = None) -> bool:
    env = os.environ if environ is None else environ
    return any(env.get(name, "").strip().lower() not in ("", "0", "false", "no")
               for name in _CI_VARIABLES)


def wants_progress(console: Console, targets: int) -> bool:
    return targets > 1 and console.is_terminal and not in_ci()


class TargetProgress:
    """``start(target)`` then ``stage(name)`` as the engine reports stages; ``done()`` after."""

    def __init__(self, progress: Progress | None, total: int) -> None:
        self._progress = progress
        self._task = progress.add_task("", total=total, target="", stage="") \
            if progress is not None else None

    def start(self, target: str) -> Callable[[str], None]:
        if self._progress is None or self._task is None:
            return lambda name: None
        progress, task = self._progress, self._task
        progress.update(task, target=escape(target), stage="build")
        return lambda name: progress.update(task, stage=escape(name))

    def done(self) -> None:
        if self._progress is not None and self._task is not None:
            self._progress.advance(self._task)


@contextmanager
def target_progress(console: Console, total: int, enabled: bool | None = None
                    ) -> Iterator[TargetProgress]:
    """Yield a ``TargetProgress``; it draws only when ``enabled`` (default: ``wants_progress``)."""
    if not (wants_progress(console, total) if enabled is None else enabled):
        yield TargetProgress(None, total)
        return
    progress = Progress(
        SpinnerColumn(),
        MofNCompleteColumn(),
        BarColumn(bar_width=20),
        TextColumn("[bold]{task.fields[target]}[/] {task.fields[stage]}"),
        console=console,
        transient=True,
    )
    with progress:
        yield TargetProgress(progress, total)
