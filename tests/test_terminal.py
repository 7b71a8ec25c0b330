"""The command line's run loop as a user meets it (issue 27): usage errors before torch loads,
the live progress line and the report sharing one terminal, ``-q`` streaming, and Ctrl-C.

Terminal behaviour is checked through the real command line on a pseudo-terminal whose output a
small terminal emulator (``Screen``) turns into what the user would see: carriage returns, line
erases and cursor moves applied, not stripped.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from pty_run import on_a_terminal

# Runs the real entry point (``biaslint.cli.run``, as the ``biaslint`` command does) and says at
# exit whether torch was imported: the exit handlers run on both of ``cli._end``'s paths.
_PROBE = ("import atexit, sys\n"
          "atexit.register(lambda: print('torch imported:', 'torch' in sys.modules,"
          " file=sys.stderr))\n"
          "from biaslint.cli import run\n"
          "run()\n")


@pytest.mark.parametrize("args, message", [
    (["--input-shape", "2,x", "m.py:build"], "--input-shape 2,x: '2,x' is not a shape"),
    (["--select", "BL999", "m.py:build"], "--select BL999: 'BL999' matches no rule"),
    (["--target-mean", "abc", "m.py:build"], "--target-mean abc: must be a number"),
    (["m.py"], "has no ':attr'"),
    ([], "no target given and none configured"),
    (["--format", "xml", "m.py:build"], "--format xml: 'xml' is not one of text, json"),
    (["--format", "json", "--format", "sarif", "m.py:build"], "would each print on stdout"),
])
def test_a_usage_error_is_decided_before_torch_loads(tmp_path: Path, args: list[str],
                                                     message: str):
    """Loading torch takes seconds; a mistyped option must not wait for it (checked by what is
    imported, not by the clock)."""
    (tmp_path / "m.py").write_text("def build():\n    raise AssertionError('never built')\n")
    proc = subprocess.run([sys.executable, "-c", _PROBE, *args], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
    assert "torch imported: False" in proc.stderr


# Three targets, each with BL001 findings at locations of its own (a Conv2d whose bias the
# BatchNorm after it cancels). Each build sleeps a little so the live display is drawn and
# redrawn while targets run; nothing asserts on time.
THREE = """\
import time

import torch
import torch.nn as nn


def a():
    time.sleep(0.3)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                        nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8))
    return net, torch.randn(2, 3, 8, 8)


def b():
    time.sleep(0.6)
    net = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4))
    return net, torch.randn(2, 3, 8, 8)


def c():
    time.sleep(0.3)
    net = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
                        nn.Conv2d(6, 6, 3, padding=1), nn.BatchNorm2d(6))
    return net, torch.randn(2, 3, 8, 8)
"""


def _expected_locations(source: str, file: str) -> list[str]:
    """``file:line:col`` of every ``nn.Conv2d(`` in ``source`` (one a line): where BL001
    reports."""
    return [f"{file}:{number}:{line.index('nn.Conv2d(') + 1}"
            for number, line in enumerate(source.splitlines(), start=1) if "nn.Conv2d(" in line]


class Screen:
    """What a terminal of ``columns`` x ``rows`` shows for the bytes a program wrote, with all
    the lines that scrolled off kept above (the scrollback).

    Applies what rich and the report write: text with xterm's wrap at the last column, ``\\r``,
    ``\\n``, ``\\b``, and the CSI sequences for erasing in the line (``K``), moving the cursor
    (``A B C D G``), colours (``m``) and showing/hiding the cursor (``?25l``/``?25h``). Any other
    escape fails the test: ignoring it could hide exactly the garbling looked for.
    """

    _CSI = re.compile(r"\x1b\[([?0-9;]*)([A-Za-z])")

    def __init__(self, columns: int = 80, rows: int = 24) -> None:
        self.columns, self.rows = columns, rows
        self.lines: list[list[str]] = [[]]
        self.row = self.col = 0
        self.wrap_next = False  # xterm: a character in the last column wraps on the next one

    def feed(self, text: str) -> Screen:
        index = 0
        while index < len(text):
            char = text[index]
            if char == "\x1b":
                match = self._CSI.match(text, index)
                assert match, f"unhandled escape {text[index:index + 8]!r}"
                self._csi(match.group(1), match.group(2))
                index = match.end()
                continue
            if char == "\r":
                self.col, self.wrap_next = 0, False
            elif char == "\n":
                self._down()
            elif char == "\b":
                self.col, self.wrap_next = max(0, self.col - 1), False
            elif char == "\x07":
                pass
            else:
                assert char >= " ", f"unhandled control character {char!r}"
                self._put(char)
            index += 1
        return self

    def text(self) -> str:
        return "\n".join("".join(line).rstrip() for line in self.lines)

    def _down(self) -> None:
        self.row += 1
        self.wrap_next = False
        if self.row == len(self.lines):
            self.lines.append([])

    def _put(self, char: str) -> None:
        if self.wrap_next:
            self._down()
            self.col = 0
        line = self.lines[self.row]
        line.extend(" " * (self.col + 1 - len(line)))
        line[self.col] = char
        if self.col == self.columns - 1:
            self.wrap_next = True
        else:
            self.col += 1

    def _csi(self, params: str, command: str) -> None:
        if params.startswith("?"):
            assert command in "hl" and params in ("?25",), f"unhandled mode {params}{command}"
            return
        numbers = [int(p) if p else 0 for p in params.split(";")] if params else []
        count = max(1, numbers[0]) if numbers else 1
        self.wrap_next = False
        line = self.lines[self.row]
        if command == "m":
            return
        if command == "K":
            mode = numbers[0] if numbers else 0
            if mode == 2:
                line.clear()
            elif mode == 0:
                del line[self.col:]
            else:
                line[:self.col + 1] = " " * min(len(line), self.col + 1)
        elif command == "A":  # up, but never above the screen's top line
            top = max(0, len(self.lines) - self.rows)
            self.row = max(top, self.row - count)
        elif command == "B":
            self.row = min(len(self.lines) - 1, self.row + count)
        elif command == "C":
            self.col = min(self.columns - 1, self.col + count)
        elif command == "D":
            self.col = max(0, self.col - count)
        elif command == "G":
            self.col = min(self.columns - 1, count - 1)
        else:
            raise AssertionError(f"unhandled escape CSI {params}{command}")


def test_the_screen_applies_overwrites_like_a_terminal():
    screen = Screen(columns=10).feed("live 1\r\x1b[2Kreport\r\nlive 2\r\x1b[2K\x1b[1A\x1b[2Kx\r\n")
    assert screen.text() == "x\n"
    assert Screen(columns=4).feed("abcdef\r\n").text() == "abcd\nef\n"
    assert Screen(columns=10).feed("abc\x1b[32mdef\x1b[0m\rX").text() == "Xbcdef"


@pytest.fixture(scope="module")
def three_on_a_terminal(tmp_path_factory: pytest.TempPathFactory):
    """``biaslint three.py:a three.py:b three.py:c [-j 2]`` on a pseudo-terminal (80 columns
    unless told): (exit code, all it wrote), run once per variant for the tests below."""
    if os.name != "posix":
        pytest.skip("needs a pseudo-terminal")
    folder = tmp_path_factory.mktemp("three")
    (folder / "three.py").write_text(THREE)
    runs: dict[tuple[tuple[str, ...], int], tuple[int, str]] = {}

    def run(extra: tuple[str, ...], columns: int = 80) -> tuple[int, str]:
        if (extra, columns) not in runs:
            runs[extra, columns] = on_a_terminal(
                ["three.py:a", "three.py:b", "three.py:c", *extra], folder, columns)
        return runs[extra, columns]

    return run


@pytest.mark.parametrize("columns", [80, 120])
@pytest.mark.parametrize("extra", [(), ("-j", "2")], ids=["in-process", "-j 2"])
def test_every_finding_line_is_intact_under_the_live_display(three_on_a_terminal,
                                                             extra: tuple[str, ...], columns: int):
    """Issue 27: each target's first ``file:line:col: CODE`` line was merged into the live
    progress line (no line clear before the report), at 80 and 120 columns. On the screen the
    user is left with, every finding's line starts with its location and code."""
    code, output = three_on_a_terminal(extra, columns)
    assert code == 1, output
    assert "/3" in output  # the live display (its M/N column) was drawn: the case under test
    screen = Screen(columns=columns).feed(output).text()
    lines = screen.splitlines()
    expected = _expected_locations(THREE, "three.py")
    assert len(expected) == 5
    for location in expected:
        assert any(line.startswith(f"{location}: BL001 [warning] bias of Conv2d")
                   for line in lines), f"{location} garbled or missing:\n{screen}"
    # Nothing else on the screen starts a finding: no location glued after another text.
    found = [line for line in lines if re.search(r"three\.py:\d+:\d+: BL001", line)]
    assert len(found) == len(expected), screen
    for name in ("a", "b", "c"):
        assert any(line.startswith(f"three.py:{name}: ") for line in lines), screen
    # The display is transient: no trace of it is left.
    assert not re.search(r"\d/3", screen), screen


@pytest.mark.parametrize("extra", [(), ("-j", "2")], ids=["in-process", "-j 2"])
def test_the_live_display_shows_each_running_target_at_its_stage(three_on_a_terminal,
                                                                 extra: tuple[str, ...]):
    """Issue 27: with -j the live line said only "2 at a time". Now each running target has a
    line with its stage, which the workers send back (each build sleeps, so its "build" -
    sent by the worker's engine - is drawn)."""
    code, output = three_on_a_terminal(extra)
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", output)
    for name in ("a", "b", "c"):
        assert re.search(rf"three\.py:{name} build\r", plain), plain
    if extra:  # each running target on a line of its own, under the count and bar
        assert re.search(r"2 at a time\r\n  three\.py:[ab] \w+\r\n  three\.py:[ab] \w+\r",
                         plain), plain


# A target that reports at once, and two that wait (far longer than any test) once they have
# said they are running: a marker file named after their process.
INTERRUPTED = """\
import os
import time

import torch
import torch.nn as nn


def fast():
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)), torch.randn(2, 3, 8, 8)


def slow():
    open(f"running-{os.getpid()}", "w").close()
    time.sleep(600)
"""


@pytest.mark.skipif(os.name != "posix", reason="needs process groups")
@pytest.mark.parametrize("extra, running", [((), 1), (("-j", "2"), 2)],
                         ids=["in-process", "-j 2"])
def test_ctrl_c_after_a_report_says_what_was_reported_without_a_traceback(
        tmp_path: Path, extra: tuple[str, ...], running: int):
    """Issue 27: Ctrl-C with -j printed a 25-line BrokenPipeError traceback from the workers
    and said "nothing was reported" after a report had been printed. Ctrl-C at a terminal
    sends SIGINT to the whole process group (biaslint, its forkserver and its workers); this
    sends it the same way, once the first target is reported and the others are running."""
    import select
    import signal
    import time

    (tmp_path / "stop.py").write_text(INTERRUPTED)
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "TF_BUILD", "BUILD_NUMBER")}
    proc = subprocess.Popen([sys.executable, "-m", "biaslint", "stop.py:fast", "stop.py:slow",
                             "stop.py:slow", *extra], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)  # a process group of its own, as a shell's job
    out = b""
    deadline = time.monotonic() + 300  # a safety net for a hung run, not a timing assertion
    try:
        while (b"stop.py:fast: 1 warning" not in out
               or len(list(tmp_path.glob("running-*"))) < running):
            assert time.monotonic() < deadline, out
            if select.select([proc.stdout], [], [], 0.2)[0]:
                chunk = os.read(proc.stdout.fileno(), 65536)  # type: ignore[union-attr]
                assert chunk, (out, proc.stderr.read())  # type: ignore[union-attr]
                out += chunk
        os.killpg(proc.pid, signal.SIGINT)
        rest, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    stderr = err.decode()
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and "Error" not in stderr, stderr
    assert stderr.strip().splitlines()[-1] == \
        "biaslint: interrupted (Ctrl-C): 1 of 3 targets reported above, the others not"
    assert (out + rest).decode().count("stop.py:fast: 1 warning") == 1
    # The workers that were still linting did not outlive the run.
    for marker in tmp_path.glob("running-*"):
        pid = int(marker.name.split("-")[1])
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


# The second target's build copies what the run's stdout (a file) holds at that moment.
STREAMED = """\
import os

import torch
import torch.nn as nn


def first():
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)), torch.randn(2, 3, 8, 8)


def second():
    with open(os.environ["STDOUT_FILE"], encoding="utf-8") as out:
        seen = out.read()
    with open("seen-by-second.txt", "w", encoding="utf-8") as copy:
        copy.write(seen)
    return nn.Sequential(nn.Linear(4, 2)), torch.randn(2, 4)
"""


@pytest.mark.parametrize("extra", [(), ("--timeout", "300")], ids=["in-process", "isolated"])
def test_quiet_streams_each_targets_findings_as_it_finishes(tmp_path: Path,
                                                            extra: tuple[str, ...]):
    """Issue 27: -q printed nothing until every target was done. Its findings lines now go
    out target by target, as the full report does: the second target's build already sees
    the first one's findings on stdout (checked by what is there, not by the clock)."""
    (tmp_path / "q.py").write_text(STREAMED)
    stdout = tmp_path / "stdout.txt"
    env = {**os.environ, "STDOUT_FILE": str(stdout)}
    with open(stdout, "w", encoding="utf-8") as out:
        proc = subprocess.run([sys.executable, "-m", "biaslint", "q.py:first", "q.py:second",
                               "-q", *extra], cwd=tmp_path, env=env, stdout=out,
                              stderr=subprocess.PIPE, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr
    [where] = _expected_locations(STREAMED, "q.py")
    line = f"{where}: BL001 [warning] bias of Conv2d '0' is cancelled by BatchNorm2d '1'"
    report = stdout.read_text(encoding="utf-8")
    assert report.startswith(line) and report.count("\n") == 1, report  # -q: findings only
    assert (tmp_path / "seen-by-second.txt").read_text(encoding="utf-8") == report


def test_report_blocks_survive_the_display_redrawn_by_its_thread(monkeypatch):
    """rich redraws the live display from its own thread while report blocks print above it,
    and with -j the display's height changes as targets start and finish. A block printed while
    that thread draws must not lose a line: each block's last line (the target's summary) is on
    the screen the user is left with."""
    import io
    import threading
    import time

    from rich.console import Console

    from biaslint.report import progress as progress_module

    # one terminal for the report and the display (as stdout and stderr on a tty)
    monkeypatch.setattr(progress_module, "_same_terminal", lambda first, second: True)
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=80, height=24, color_system=None,
                      legacy_windows=False)
    blocks = 1500
    with progress_module.target_progress(console, blocks, enabled=True, jobs=3) as tracker:
        display = tracker._progress
        assert display is not None
        stop = threading.Event()

        def redraw() -> None:  # the refresh thread, far more often than its 10 a second
            while not stop.is_set():
                display.refresh()
                time.sleep(0.0002)

        thread = threading.Thread(target=redraw)
        thread.start()
        try:
            for i in range(blocks):
                tracker.start(f"t{i}.py:build", key=i)
                if i % 3 == 2:  # the display grows to three running targets, then shrinks
                    for key in (i - 2, i - 1):
                        tracker.done(key)
                tracker.print_report(console, lambda c, i=i: c.print(f"finding {i}\nsummary {i}"))
                if i % 3 == 2:
                    tracker.done(i)
        finally:
            stop.set()
            thread.join()
    # what a terminal gets: its line discipline turns each newline into CR LF
    screen = Screen(columns=80).feed(out.getvalue().replace("\n", "\r\n")).text().splitlines()
    missing = [i for i in range(blocks) if f"summary {i}" not in screen]
    assert not missing, f"summary lines lost: {missing[:10]} ({len(missing)} of {blocks})"
