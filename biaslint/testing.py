"""biaslint in a test suite: ``assert_clean(model)`` fails the test with the text report.

    from biaslint.testing import assert_clean

    def test_model_init_is_clean():
        assert_clean(build_model(), torch.randn(2, 3, 32, 32))

    def test_configured_target_is_clean():
        assert_clean("mymodel:build")       # a target string, as on the command line

The pytest plugin (``pytest --biaslint``, see ``biaslint.pytest_plugin``) runs the
``[tool.biaslint]`` targets as test items without writing any test.

A project's own rules (``biaslint.rules.plugins``) are tested as the built-in ones are:
``assert_examples(MyRule)`` lints the rule's documented bad example (it must trigger the rule)
and good example (it must not).

Importing this module does not import torch; the first ``assert_clean`` does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

if TYPE_CHECKING:
    from biaslint.api import Report
    from biaslint.findings import TargetResult
    from biaslint.rules import Rule

__all__ = ["assert_clean", "assert_examples"]


def assert_clean(model_or_target: Any, example_inputs: Any = None, *,
                 select: str | Sequence[str] | None = None,
                 ignore: str | Sequence[str] | None = None, **settings: Any) -> "Report":
    """Lint ``model_or_target`` and raise ``AssertionError`` unless the report is ok; return
    the ``Report`` when it is.

    ``model_or_target``: an ``nn.Module`` (linted with ``biaslint.check``, ``example_inputs``
    as there) or a target string such as ``"pkg.mod:build"`` (linted with
    ``biaslint.api.check_target`` as the command line would, with the settings of the nearest
    ``[tool.biaslint]``; it takes no ``example_inputs``: return ``(model, inputs)`` from the
    build, or give ``input_shapes``).

    Ok means what exit 0 means on the command line: no finding at or above ``fail_on``
    (default "warning"), everything the selected rules look at judged (unless
    ``allow_incomplete=True``), and no error (a build or forward that raises is not clean).
    The message of the ``AssertionError`` is the text report: each finding with its location,
    the source line and the fix, and what was not judged.

    ``select`` / ``ignore``: rule codes or prefixes (a string, comma-separated, or a list).
    Other settings are those of ``biaslint.check`` (or of ``check_target`` for a string);
    ``signal`` defaults to False here (the signal-propagation curves cost a forward and a
    backward and decide nothing).
    """
    __tracebackhide__ = True  # pytest shows the caller's line, not this one
    from biaslint import api

    if select is not None:
        settings["select"] = select
    if ignore is not None:
        settings["ignore"] = ignore
    settings.setdefault("signal", False)
    if isinstance(model_or_target, str):
        if example_inputs is not None:
            raise TypeError("assert_clean: example_inputs go with a model, not with a target "
                            "string; return (model, example_inputs) from the build, or give "
                            "input_shapes=[(2, 3, 32, 32)]")
        report = api.check_target(model_or_target, **settings)
    else:
        report = api.check(model_or_target, example_inputs, **settings)
    if not report.ok:
        raise AssertionError(failure_message(report))
    return report


def failure_message(report: "Report") -> str:
    """The text report of a report that is not ok, never empty."""
    text = str(report).rstrip("\n")
    if not text:  # pragma: no cover - the text report always names the target
        text = repr(report)
    return text


def assert_examples(rule: "type[Rule]") -> None:
    """Lint ``rule``'s ``bad_example`` and ``good_example`` (with ``example_target``) as
    biaslint's own tests lint the built-in rules' and raise ``AssertionError`` unless the bad
    one triggers the rule and the good one does not. A plugin rule is first checked as the
    linter checks it (code, metadata, ``check``); the installed entry points' rules take part
    too, as in a run."""
    __tracebackhide__ = True
    from biaslint.rules import is_builtin, plugged
    from biaslint.rules.plugins import checked

    own = () if is_builtin(rule) else checked([(rule, "assert_examples")])
    with plugged(own):
        bad = _lint_example(rule, "bad_example")
        good = _lint_example(rule, "good_example")
    if not any(f.code == rule.code for f in bad.findings):
        raise AssertionError(f"{rule.code}'s bad_example does not trigger it; notes: "
                             + ("; ".join(bad.notes) or "none"))
    wrong = [f for f in good.findings if f.code == rule.code]
    if wrong:
        raise AssertionError(f"{rule.code}'s good_example triggers it: "
                             + "; ".join(f"{f.module}: {f.message}" for f in wrong))


def _lint_example(rule: "type[Rule]", which: str) -> "TargetResult":
    """One example of ``rule`` linted from a file of its own with only that rule selected."""
    import tempfile
    import uuid
    from pathlib import Path

    from biaslint.engine import lint
    from biaslint.errors import BiaslintError
    from biaslint.settings import Settings, TargetConfig

    with tempfile.TemporaryDirectory(prefix="biaslint-example-") as folder:
        path = Path(folder) / f"{rule.code.lower()}_{which}_{uuid.uuid4().hex[:8]}.py"
        path.write_text(getattr(rule, which), encoding="utf-8")
        config = TargetConfig.of(f"{path}:build", **dict(rule.example_target))
        try:
            result = lint(config, Settings(select=(rule.code,)))
        except BiaslintError as exc:
            raise AssertionError(f"{rule.code}'s {which} did not lint: {exc}") from None
    if result.error:
        raise AssertionError(f"{rule.code}'s {which} did not lint: {result.error}")
    return result
