"""A live progress display (target, stage) for runs of several targets on a terminal.

Shown only when stderr is a terminal and the run is not in CI: a CI log or a file must get the
report and nothing else. rich's ``Progress`` is transient, so the display vanishes at the end and
leaves only the report behind.

In one process the display is one line: the count, a bar, the target being linted and its stage.
With ``-j`` several targets run at once, so under that line each running target gets a line of
its own with its stage (the workers send their stages back, ``biaslint.run.parallel``).

The report streams out while the display is drawn, and on a terminal stdout and stderr are
usually the same screen: a report line written there by another console would land on (or be
overwritten by) the live lines. ``TargetProgress.print_report`` prints a report block through the
display's own console then, which rich places above the display: it moves to the display's
first line, clears it, writes the block, and draws the display again below it.
"""

from __future__ import annotations

import io
import os
import threading
from contextlib import contextmanager
from typing import Callable, Hashable, Iterable, Iterator

from rich.console import Console, RenderableType
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn
from rich.text import Text

# The variables CI services set (GitHub Actions, GitLab, CircleCI, Travis, Buildkite, Azure...):
# all set CI; Azure Pipelines sets TF_BUILD instead.
_CI_VARIABLES = ("CI", "TF_BUILD", "BUILD_NUMBER")


def in_ci(environ: dict[str, str] | None = None) -> bool:
    env = os.environ if environ is None else environ
    return any(env.get(name, "").strip().lower() not in ("", "0", "false", "no")
               for name in _CI_VARIABLES)


def wants_progress(console: Console, targets: int) -> bool:
    return targets > 1 and console.is_terminal and not in_ci()


class _Display(Progress):
    """The count and bar line, then a line for each running target its tracker lists (-j)."""

    # A class attribute, not one set in __init__: rich may render before __init__ returns.
    tracker: TargetProgress | None = None

    def get_renderables(self) -> Iterable[RenderableType]:
        yield self.make_tasks_table(self.tasks)
        for target, stage in self.tracker.running() if self.tracker is not None else ():
            # One terminal line each whatever the target's length: a wrapped line would make
            # the display's height change under the reports printed above it.
            yield Text.assemble("  ", (target, "bold"), " ", stage, no_wrap=True,
                                overflow="ellipsis")


class TargetProgress:
    """``start(target)`` then ``stage(name)`` as the engine reports stages; ``done()`` after.

    With ``jobs`` > 1, ``start(target, key)`` and ``done(key)`` for each of the targets running
    at once; each shows on its own line. ``console``: where the run's own stderr lines go
    (the display's console while it is drawn, so that they print above it)."""

    def __init__(self, progress: Progress | None, total: int, jobs: int = 1,
                 console: Console | None = None) -> None:
        self._progress = progress
        self.console: Console = progress.console if progress is not None else \
            console or Console(stderr=True, highlight=False, emoji=False)
        self._jobs = jobs
        self._lock = threading.Lock()  # the refresh thread reads ``_running`` while we change it
        self._running: dict[Hashable, tuple[str, str]] = {}
        self._task = progress.add_task("", total=total, target="", stage="") \
            if progress is not None else None
        if progress is not None and self._task is not None and jobs > 1:
            progress.update(self._task, stage=f"{jobs} at a time")

    def running(self) -> list[tuple[str, str]]:
        """(target, stage) of each running target, when they get a line each (-j)."""
        if self._jobs == 1:
            return []
        with self._lock:
            return list(self._running.values())

    def start(self, target: str, key: Hashable = None, stage: str = "build"
              ) -> Callable[[str], None]:
        if self._progress is None or self._task is None:
            return lambda name: None
        progress, task = self._progress, self._task
        if self._jobs == 1:
            progress.update(task, target=escape(target), stage=escape(stage))
            return lambda name: progress.update(task, stage=escape(name))

        def set_stage(name: str) -> None:
            with self._lock:
                if key in self._running:
                    self._running[key] = (target, name)

        with self._lock:
            self._running[key] = (target, stage)
        return set_stage

    def done(self, key: Hashable = None) -> None:
        if self._progress is not None and self._task is not None:
            with self._lock:
                self._running.pop(key, None)
            self._progress.advance(self._task)

    def say(self, line: str) -> None:
        """Print one of the run's own stderr lines (an error) on ``console``, above the display
        while it is drawn (held against its refresh thread, as ``print_report`` is)."""
        progress = self._progress
        if progress is None or not progress.live.is_started:
            self.console.print(line, soft_wrap=True, markup=False, highlight=False)
            return
        with progress.live._lock:
            self.console.print(line, soft_wrap=True, markup=False, highlight=False)

    def print_report(self, report: Console, write: Callable[[Console], None]) -> None:
        """Call ``write(console)`` to print a block of the report meant for ``report``.

        While the display is drawn on the terminal ``report`` writes to, the block is rendered
        as ``report`` would render it and printed in one piece through the display's console,
        which puts it above the display (see the module's docstring). Otherwise ``write`` prints
        on ``report`` itself."""
        progress = self._progress
        if progress is None or not progress.live.is_started or \
                not _same_terminal(report, progress.console):
            write(report)
            return
        twin = Console(file=io.StringIO(), force_terminal=True, width=report.width,
                       color_system=report.color_system,  # type: ignore[arg-type]  # rich's name
                       highlight=False, emoji=False, legacy_windows=False)
        write(twin)
        text = twin.file.getvalue()  # type: ignore[attr-defined]  # the StringIO given above
        if text:
            # rich works out how far up the display reaches (its height at the last draw) under
            # the live display's lock, but writes the block and the display after releasing
            # it: a redraw by rich's refresh thread in between, at another height (a target
            # done, -j), left the cursor one line off and the next draw erased the block's last
            # line. The lock (an RLock, which rich takes again inside) is held throughout.
            with progress.live._lock:
                # soft_wrap: the lines were already wrapped for this width (a long source line
                # is left for the terminal to wrap, as it is when printed directly). print's own
                # end stands for the block's last newline.
                progress.console.print(Text.from_ansi(text.removesuffix("\n")), soft_wrap=True)
                progress.refresh()  # the display as it is now (one target more done)


def _same_terminal(first: Console, second: Console) -> bool:
    """Both consoles write to one terminal (stdout and stderr on the same tty)."""
    if not (first.is_terminal and second.is_terminal):
        return False
    try:
        return os.path.samestat(os.fstat(first.file.fileno()), os.fstat(second.file.fileno()))
    except (AttributeError, OSError, ValueError):  # not a real file (a test's buffer, a pipe)
        return False


@contextmanager
def target_progress(console: Console, total: int, enabled: bool | None = None, jobs: int = 1
                    ) -> Iterator[TargetProgress]:
    """Yield a ``TargetProgress``; it draws only when ``enabled`` (default: ``wants_progress``).
    ``jobs``: how many targets run at once (each then gets a line of its own)."""
    if not (wants_progress(console, total) if enabled is None else enabled):
        yield TargetProgress(None, total, console=console)
        return
    progress = _Display(
        SpinnerColumn(),
        MofNCompleteColumn(),
        BarColumn(bar_width=20),
        TextColumn("[bold]{task.fields[target]}[/] {task.fields[stage]}"),
        console=console,
        transient=True,
    )
    progress.tracker = TargetProgress(progress, total, jobs, console)
    with progress:
        yield progress.tracker
