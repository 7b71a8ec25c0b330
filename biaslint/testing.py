"""biaslint in a test suite: ``assert_clean(model)`` fails the test with the text report.

    from biaslint.testing import assert_clean

    def test_model_init_is_clean():
        assert_clean(build_model(), torch.randn(2, 3, 32, 32))

    def test_configured_target_is_clean():
        assert_clean("mymodel:build")       # a target string, as on the command line

The pytest plugin (``pytest --biaslint``, see ``biaslint.pytest_plugin``) runs the
``[tool.biaslint]`` targets as test items without writing any test.

Importing this module does not import torch; the first ``assert_clean`` does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

if TYPE_CHECKING:
    from biaslint.api import Report

__all__ = ["assert_clean"]


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
