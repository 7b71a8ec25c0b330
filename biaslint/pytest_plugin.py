"""The pytest plugin: ``pytest --biaslint`` lints the ``[tool.biaslint]`` targets as test items.

One item per target, named ``biaslint[pkg.mod:build]`` under the pyproject.toml that lists
them (``pyproject.toml::biaslint[pkg.mod:build]``), so ``-k`` and ``--deselect`` pick them like
any test. An item passes when the target's report is ok (what exit 0 means for ``biaslint``);
a failing item shows the text report. The targets are read from the pyproject.toml at pytest's
rootdir, or the nearest one above it with a ``[tool.biaslint]`` table, and linted from that
file's folder with each target's own settings (input shapes, class priors, ...), as the
command line does.

Under pytest-xdist (``pytest --biaslint -n 4``) every worker collects the same items in the same
order (the targets as the file lists them) and lints those it is sent; the items share no state
and write no file, so nothing needs the controller.

Without ``--biaslint`` the plugin only adds the option: nothing of biaslint (and no torch) is
imported. ``-p no:biaslint`` turns it off entirely.
"""

from __future__ import annotations

import os
from typing import Any

import pytest

_FILE_KEY = pytest.StashKey[Any]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("biaslint")
    group.addoption("--biaslint", action="store_true", default=False,
                    help="lint the [tool.biaslint] targets of pyproject.toml, one test item "
                         "per target (biaslint[pkg.mod:build])")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "biaslint: a [tool.biaslint] target linted by --biaslint")
    if not config.getoption("biaslint", default=False):
        return
    from biaslint.errors import ConfigError
    from biaslint.run.config import load_config

    try:
        file = load_config(start=config.rootpath)
    except ConfigError as exc:
        raise pytest.UsageError(f"--biaslint: {exc}") from None
    if not file.targets:
        where = (f"{file.path} has a [tool.biaslint] table without targets" if file.path else
                 f"no pyproject.toml with a [tool.biaslint] table at {config.rootpath} or "
                 "above it")
        raise pytest.UsageError(
            f"--biaslint: nothing to lint: {where}; list the targets there as "
            "[tool.biaslint] targets = [\"mymodel:build\"] (or drop --biaslint)")
    config.stash[_FILE_KEY] = file


@pytest.hookimpl(tryfirst=True)  # before -k, -m and --deselect filter the items
def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config,
                                  items: list[pytest.Item]) -> None:
    file = config.stash.get(_FILE_KEY, None)
    if file is None:
        return
    # Collected through the session, so the items count as collected and a configuration
    # error is a collection error of pyproject.toml.
    items.extend(session.genitems(BiaslintFile.from_parent(session, path=file.path)))


class BiaslintFile(pytest.File):
    """The pyproject.toml that lists the targets: one item per target."""

    def collect(self) -> list[pytest.Item]:
        import dataclasses

        from biaslint.run.check import CheckOptions, plan

        plan_ = plan(CheckOptions(config=str(self.path)))
        # Text reports only: the signal curves (json/html) cost a forward and backward each.
        settings = dataclasses.replace(plan_.settings, signal=False)
        lines = _lines(self.path)
        return [BiaslintItem.from_parent(self, name=f"biaslint[{target.target}]",
                                         target=target, settings=settings,
                                         workdir=plan_.workdir,
                                         line=_line_of(lines, target.target))
                for target in plan_.configs]

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException],
                     style: Any = None) -> Any:
        from biaslint.errors import BiaslintError

        if isinstance(excinfo.value, BiaslintError):
            return f"biaslint: {excinfo.value}"
        return super().repr_failure(excinfo)


def _lines(path: Any) -> list[str]:
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read().splitlines()
    except OSError:  # pragma: no cover - it was just read
        return []


def _line_of(lines: list[str], target: str) -> int | None:
    """The 0-based line of pyproject.toml that names ``target`` (for reportinfo)."""
    for quote in ('"', "'"):
        for number, text in enumerate(lines):
            if f"{quote}{target}{quote}" in text:
                return number
    return None


class LintFailure(Exception):
    """A target's report is not ok; ``repr_failure`` shows the report, not a traceback."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text


class BiaslintItem(pytest.Item):
    """One ``[tool.biaslint]`` target: passes when its report is ok."""

    def __init__(self, *, target: Any, settings: Any, workdir: str | None,
                 line: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.target = target
        self.settings = settings
        self.workdir = workdir
        self.line = line
        self.report: Any = None
        self.add_marker("biaslint")

    def runtest(self) -> None:
        from biaslint.api import Report
        from biaslint.engine import lint
        from biaslint.errors import BiaslintError
        from biaslint.findings import TargetResult

        before = os.getcwd()
        if self.workdir:
            os.chdir(self.workdir)  # the CLI lints configured targets from the config's folder
        try:
            try:
                result = lint(self.target, self.settings)
            except BiaslintError as exc:
                result = TargetResult(target=self.target.target, error=str(exc))
            self.report = Report((result,), self.settings.fail_on,
                                 self.settings.allow_incomplete)
            # Rendered here: the text report reads source lines relative to the folder.
            text = str(self.report)
        finally:
            os.chdir(before)
        if not self.report.ok:
            raise LintFailure(text)

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException],
                     style: Any = None) -> Any:
        if isinstance(excinfo.value, LintFailure):
            return excinfo.value.text.rstrip("\n")
        return super().repr_failure(excinfo, style=style)

    def reportinfo(self) -> tuple[Any, int | None, str]:
        return self.path, self.line, self.name
