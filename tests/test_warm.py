"""The warm server (``biaslint --warm``, issue 31): a lint through it is a cold run's, byte for
byte and exit code for exit code; no state crosses from one lint to the next; the socket is the
user's alone; a server whose libraries changed on disk is replaced; Ctrl-C and a client that goes
away reach the lint; the client never imports torch.

One server serves the module (``BIASLINT_SERVER_DIR`` points every test's project at one folder),
so its start is paid once."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.test_hostile_builds import GOOD, HOSTILE, PRINTS, RANDOM, STATEFUL

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(not hasattr(socket, "AF_UNIX") or sys.platform == "win32",
                                reason="the warm server needs Unix sockets and fork")


@pytest.fixture(scope="module")
def server_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("servers")
    yield folder
    env = _env(folder)
    subprocess.run([sys.executable, "-m", "biaslint", "server", "stop"], env=env,
                   capture_output=True, timeout=60)


def _env(folder: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "BIASLINT_SERVER_DIR"}
    env.update(PYTHONPATH=str(ROOT), BIASLINT_SERVER_DIR=str(folder), **extra)
    return env


def _run(cwd: Path, folder: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "biaslint", *args], cwd=cwd, text=True,
                          capture_output=True, timeout=300, env=_env(folder, **env))


def _both(cwd: Path, folder: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], ...]:
    return _run(cwd, folder, *args, "--cold"), _run(cwd, folder, *args, "--warm")


def _same(cold: subprocess.CompletedProcess[str], warm: subprocess.CompletedProcess[str]) -> None:
    assert warm.returncode == cold.returncode, (cold.stderr, warm.stderr)
    assert warm.stdout == cold.stdout
    assert warm.stderr == cold.stderr


CASES = {
    "findings": (("good.py:build",), GOOD),
    "clean": (("good.py:build", "--select", "BL003"), GOOD),
    "json": (("good.py:build", "--format", "json"), GOOD),
    "prints": (("prints.py:build", "--format", "json"), PRINTS),
    "usage": (("good.py:build", "--select", "XX999"), GOOD),
    "missing": (("nowhere.py:build",), GOOD),
    **{f"hostile-{kind}": (("good.py:build", "bad.py:build", "--format", "json"), GOOD)
       for kind in sorted(HOSTILE)},
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_warm_lint_prints_and_exits_as_a_cold_one(tmp_path, server_dir, case):
    args, source = CASES[case]
    (tmp_path / "good.py").write_text(textwrap.dedent(GOOD))
    (tmp_path / "prints.py").write_text(textwrap.dedent(PRINTS))
    if case.startswith("hostile-"):
        (tmp_path / "bad.py").write_text(HOSTILE[case.removeprefix("hostile-")])
    cold, warm = _both(tmp_path, server_dir, *args)
    _same(cold, warm)


def test_numbers_and_state_are_a_cold_runs_lint_after_lint(tmp_path, server_dir):
    # A build that changes dtype, grad mode, the RNG, the working directory and a forward that
    # writes its parameters: through one server, lint after lint, every run equals a cold one.
    (tmp_path / "stateful.py").write_text(textwrap.dedent(STATEFUL))
    (tmp_path / "unseeded.py").write_text(textwrap.dedent(RANDOM))
    (tmp_path / "good.py").write_text(textwrap.dedent(GOOD))
    (tmp_path / "writes.py").write_text(textwrap.dedent(WRITES))
    args = ("stateful.py:build", "unseeded.py:build", "writes.py:build", "good.py:build",
            "--format", "json")
    cold = _run(tmp_path, server_dir, *args, "--cold")
    for _ in range(3):
        warm = _run(tmp_path, server_dir, *args, "--warm")
        _same(cold, warm)
    results = json.loads(cold.stdout)["results"]
    assert all(r["error"] is None for r in results), results


WRITES = """
import torch
import torch.nn as nn

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.bn = nn.BatchNorm2d(8)

    def forward(self, x):
        with torch.no_grad():
            self.conv.weight.mul_(1.5)  # a forward that writes its parameters
        return self.bn(self.conv(x))

def build():
    torch.set_default_dtype(torch.float64)
    torch.set_grad_enabled(False)
    import os
    os.chdir("..")
    return Net().float(), torch.randn(2, 3, 8, 8, dtype=torch.float32)
"""


def test_the_child_sees_the_clients_environment_folder_and_streams(tmp_path, server_dir):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "envmodel.py").write_text(textwrap.dedent("""
        import os, sys
        import torch, torch.nn as nn

        def build():
            print("cwd", os.getcwd(), "flag", os.environ.get("MY_FLAG"),
                  "mask", oct(os.umask(0o022)), file=sys.stderr)
            return nn.Sequential(nn.Linear(4, 4)), torch.randn(2, 4)
        """))
    cold = _run(tmp_path / "sub", server_dir, "envmodel.py:build", "--cold", MY_FLAG="a1")
    warm = _run(tmp_path / "sub", server_dir, "envmodel.py:build", "--warm", MY_FLAG="a1")
    _same(cold, warm)
    assert f"cwd {tmp_path / 'sub'} flag a1" in warm.stderr


def test_the_client_imports_no_torch(tmp_path, server_dir):
    (tmp_path / "good.py").write_text(textwrap.dedent(GOOD))
    code = ("import sys\nfrom biaslint import cli\nsys.argv = ['biaslint', 'good.py:build', "
            "'--warm']\ntry:\n    cli.run()\nexcept SystemExit as exc:\n"
            "    print('exit', exc.code, 'torch' in sys.modules, file=sys.stderr)\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, text=True,
                          capture_output=True, timeout=300, env=_env(server_dir))
    assert "exit 1 False" in proc.stderr, proc.stderr


def _status(folder: Path) -> list[dict]:
    from biaslint.serve import client

    old = os.environ.get("BIASLINT_SERVER_DIR")
    os.environ["BIASLINT_SERVER_DIR"] = str(folder)
    try:
        return [info for _path, info in client.status() if info is not None]
    finally:
        if old is None:
            del os.environ["BIASLINT_SERVER_DIR"]
        else:
            os.environ["BIASLINT_SERVER_DIR"] = old


def test_the_parent_ran_no_torch_op_and_started_no_thread(tmp_path, server_dir):
    (tmp_path / "good.py").write_text(textwrap.dedent(GOOD))
    _run(tmp_path, server_dir, "good.py:build", "--warm")
    [info] = _status(server_dir)
    assert info["modules"] > 1000  # torch and what a lint imports are loaded...
    if sys.platform.startswith("linux"):
        assert info["threads"] == 1  # ...and no thread pool runs in the parent


def test_a_lint_in_the_child_imports_none_of_biaslints_modules_anew(tmp_path):
    """The parent preloads biaslint's own modules, the command line's reporting, configuration
    and records included (the probe runs the API only): a child compiles or loads none of them
    again, for a text or a JSON report. Run as the child runs it, in a process that preloaded."""
    (tmp_path / "good.py").write_text(textwrap.dedent(GOOD))
    script = textwrap.dedent("""
        import io, sys
        from biaslint.serve import server
        server.preload()
        before = set(sys.modules)
        from biaslint.cli import main  # what child.run runs, without ending the process
        for extra in ([], ["--format", "json"]):
            sys.stdout = io.StringIO()
            try:
                main(["good.py:build", "--cold", *extra])
            except SystemExit:
                pass
        sys.stdout = sys.__stdout__
        print(sorted(m for m in set(sys.modules) - before if m.startswith("biaslint")))
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, text=True,
                          capture_output=True, timeout=300, env=_env(tmp_path / "servers"))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_the_socket_is_the_users_alone(tmp_path):
    import shutil
    import tempfile

    (tmp_path / "good.py").write_text(textwrap.dedent(GOOD))
    # A folder another user could reach (the test's own folder is 0700 all the way up).
    folder = Path(tempfile.mkdtemp(prefix="biaslint-servers-")) / "sockets"
    try:
        _run(tmp_path, folder, "good.py:build", "--warm")
        [sock] = sorted(folder.glob("server-*.sock"))
        assert sock.stat().st_mode & 0o777 == 0o600
        assert folder.stat().st_mode & 0o777 == 0o700
        if os.getuid() != 0:
            return  # another user to connect as needs root
        # As another user: the folder and the socket's mode keep them out; with both opened,
        # the server itself refuses them.
        folder.parent.chmod(0o711)
        assert _as_nobody(sock) == "denied"
        folder.chmod(0o711)
        assert _as_nobody(sock) == "denied"
        sock.chmod(0o666)
        assert "refused" in _as_nobody(sock)
    finally:
        _run(tmp_path, folder, "server", "stop")
        shutil.rmtree(folder.parent, ignore_errors=True)


def _as_nobody(path: Path) -> str:
    """Connect to ``path`` from a forked child running as the user nobody; what it got."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        answer = b"error"
        try:
            os.setgid(65534)
            os.setuid(65534)
            sock = socket.socket(socket.AF_UNIX)
            try:
                sock.connect(str(path))
            except PermissionError:
                answer = b"denied"
            else:  # the server answers a stranger at once, before any request
                sock.settimeout(30)
                answer = sock.recv(1000)
        finally:
            os.write(write, answer)
            os._exit(0)
    os.close(write)
    answer = os.read(read, 1000).decode()
    os.close(read)
    os.waitpid(pid, 0)
    return answer


def test_a_server_whose_libraries_changed_is_replaced(tmp_path):
    folder = tmp_path / "own"
    (tmp_path / "good.py").write_text(textwrap.dedent(GOOD))
    first = _run(tmp_path, folder, "good.py:build", "--warm")
    [before] = _status(folder)
    touched = ROOT / "biaslint" / "serve" / "protocol.py"  # a file the server imported
    stat = touched.stat()
    os.utime(touched, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    try:
        second = _run(tmp_path, folder, "good.py:build", "--warm")
    finally:
        os.utime(touched, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    _same(first, second)
    [after] = _status(folder)
    assert after["pid"] != before["pid"] and after["served"] == 1
    _run(tmp_path, folder, "server", "stop")


def test_an_idle_server_ends(tmp_path):
    folder = tmp_path / "idle"
    (tmp_path / "good.py").write_text(textwrap.dedent(GOOD))
    code = ("import sys\nfrom biaslint.serve import client\n"
            "print(client.lint(['good.py:build', '--select', 'BL003'], idle=1.0))\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, text=True,
                          capture_output=True, timeout=300, env=_env(folder))
    assert proc.stdout.strip().endswith("0"), proc.stderr
    deadline = time.monotonic() + 60
    while list(folder.glob("server-*.sock")) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not list(folder.glob("server-*.sock"))


SLOW = """
import os, time
import torch, torch.nn as nn

def build():
    with open("pid.txt", "w") as handle:
        handle.write(str(os.getpid()))
    time.sleep(120)
    return nn.Sequential(nn.Linear(4, 4)), torch.randn(2, 4)
"""


def _started(tmp_path: Path, server_dir: Path) -> tuple[subprocess.Popen[str], int]:
    (tmp_path / "slow.py").write_text(textwrap.dedent(SLOW))
    proc = subprocess.Popen([sys.executable, "-m", "biaslint", "slow.py:build", "--warm"],
                            cwd=tmp_path, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=_env(server_dir))
    deadline = time.monotonic() + 120
    while not (tmp_path / "pid.txt").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(0.3)
    return proc, int((tmp_path / "pid.txt").read_text())


def _gone(pid: int) -> bool:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


def test_ctrl_c_at_the_client_interrupts_the_lint(tmp_path, server_dir):
    proc, pid = _started(tmp_path, server_dir)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted (Ctrl-C)" in err
    assert _gone(pid)


def test_a_client_that_goes_away_takes_its_lint_with_it(tmp_path, server_dir):
    proc, pid = _started(tmp_path, server_dir)
    proc.kill()
    proc.wait(timeout=60)
    assert _gone(pid)


def _as_from_a_terminal() -> None:
    """For a process the tests interrupt: Ctrl-C as a terminal delivers it. A process started
    with SIGINT ignored (a test run started in the background by a non-interactive shell)
    keeps ignoring it, as Unix programs do."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _line(proc: subprocess.Popen[str], wanted: str) -> list[str]:
    """Lines of ``proc``'s stdout up to and including the first that contains ``wanted``."""
    seen = []
    deadline = time.monotonic() + 240  # a hang's safety net, not a timing assertion
    while time.monotonic() < deadline:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        if not line:
            break
        seen.append(line.rstrip("\n"))
        if wanted in line:
            return seen
    raise AssertionError(f"never printed {wanted!r}: {seen}")


def test_watch_prints_what_changed_when_a_source_file_changes(tmp_path, server_dir):
    model = tmp_path / "watched.py"
    model.write_text(textwrap.dedent(GOOD))
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    proc = subprocess.Popen([sys.executable, "-m", "biaslint", "--watch", "watched.py:build",
                             "--select", "BL001"], cwd=tmp_path, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=_env(server_dir), preexec_fn=_as_from_a_terminal)
    try:
        first = _line(proc, "watched.py:build: 1 finding")
        assert any(line.startswith("+ ") and "BL001" in line for line in first), first
        model.write_text(textwrap.dedent(GOOD).replace("nn.Conv2d(3, 8, 3)",
                                                       "nn.Conv2d(3, 8, 3, bias=False)"))
        fixed = _line(proc, "watched.py:build: 0 findings now")
        assert any(line.startswith("- ") and "BL001" in line for line in fixed), fixed
        model.write_text(model.read_text() + "# a comment\n")
        assert _line(proc, "no change")[-1].startswith("watched.py:build: no change")
    finally:
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "Traceback" not in err


SLOW_BUILD = """
import pathlib, time
import torch
import torch.nn as nn


def build():
    pathlib.Path("building").write_text("")
    time.sleep(120)
    return nn.Linear(2, 2), torch.randn(1, 2)
"""


def test_ctrl_c_during_a_watched_lint_ends_the_watch(tmp_path, server_dir):
    """The client hands a Ctrl-C to the lint it is waiting for; in watch mode the lint ends with
    130 and the watch must end too, not go on to the next poll."""
    from biaslint.cli import EXIT_INTERRUPTED
    from biaslint.serve.watch import INTERRUPTED

    assert INTERRUPTED == EXIT_INTERRUPTED
    (tmp_path / "slow.py").write_text(textwrap.dedent(SLOW_BUILD))
    proc = subprocess.Popen([sys.executable, "-m", "biaslint", "--watch", "slow.py:build"],
                            cwd=tmp_path, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=_env(server_dir),
                            preexec_fn=_as_from_a_terminal)
    try:
        deadline = time.monotonic() + 240  # a hang's safety net, not a timing assertion
        while not (tmp_path / "building").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert (tmp_path / "building").exists()  # the lint is in the build
    finally:
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err


def test_watch_refuses_a_report_it_would_not_write(tmp_path, server_dir):
    (tmp_path / "good.py").write_text(textwrap.dedent(GOOD))
    proc = _run(tmp_path, server_dir, "--watch", "good.py:build", "--format", "json")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "biaslint: error: --watch prints what changed and writes no report: drop --format"]


# The zoo's quick set where it needs no library beyond the dev extra: torchvision, timm and
# transformers models (benchmarks/zoo.py QUICK).
ZOO_QUICK = ["TV.resnet18", "TV.mobilenet_v3_small", "TV.vit_b_32", "TV.convnext_tiny",
             "TV.efficientnet_b0", "TV.squeezenet1_1", "TV.swin_t",
             "TV.ssdlite320_mobilenet_v3_large", "TV.lraspp_mobilenet_v3_large",
             "TIMM.resnet18", "TIMM.vit_tiny_patch16_224", "TIMM.convnext_atto",
             "TIMM.levit_128s", "HF.bert", "HF.gpt2", "HF.llama", "HF.t5", "HF.whisper"]


@pytest.mark.slow
def test_warm_and_cold_agree_on_the_zoos_quick_set(tmp_path, server_dir):
    pytest.importorskip("timm")
    pytest.importorskip("transformers")
    targets = [f"benchmarks/zoo_models.py:{name}" for name in ZOO_QUICK]
    cold = _run(ROOT, server_dir, *targets, "--format", "json", "--cold")
    warm = _run(ROOT, server_dir, *targets, "--format", "json", "--warm")
    _same(cold, warm)
    results = json.loads(cold.stdout)["results"]
    assert [r["target"] for r in results] == targets
    assert sum(len(r["findings"]) for r in results) > 0  # the comparison compared findings


def test_the_random_numbers_a_build_draws_are_a_cold_runs(tmp_path, server_dir):
    """Python's, numpy's and torch's generators as the build sees them, warm lint after warm
    lint, are those of a cold run (biaslint seeds them before a build; a child never inherits a
    state the server or another lint left)."""
    (tmp_path / "draws.py").write_text(textwrap.dedent("""
        import random, sys
        import numpy
        import torch, torch.nn as nn

        def build():
            print("draw", random.random(), numpy.random.rand(), float(torch.rand(())),
                  file=sys.stderr)
            return nn.Sequential(nn.Linear(4, 4)), torch.randn(2, 4)
        """))

    def draws(*mode: str) -> list[str]:
        proc = _run(tmp_path, server_dir, "draws.py:build", *mode, "--select", "BL003")
        [line] = [x for x in proc.stderr.splitlines() if x.startswith("draw ")]
        return line.split()[1:]

    cold = draws("--cold")
    assert draws("--warm") == draws("--warm") == cold


def test_fix_through_the_server_writes_what_a_cold_fix_writes(tmp_path, server_dir):
    outputs = []
    for mode in ("--cold", "--warm"):
        folder = tmp_path / mode.strip("-")
        folder.mkdir()
        (folder / "good.py").write_text(textwrap.dedent(GOOD))
        proc = _run(folder, server_dir, "good.py:build", "--fix", mode)
        # the one measured time in the report: how long the check on a copy took
        stderr = re.sub(r"builds, [0-9.]+ s", "builds, <time> s", proc.stderr)
        outputs.append((proc.returncode, proc.stdout, stderr, (folder / "good.py").read_text()))
    assert outputs[0] == outputs[1]
    assert "bias=False" in outputs[1][3]  # the fix was written


def test_a_project_too_deep_for_a_socket_path_uses_a_private_temporary_folder(tmp_path):
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    (deep / "good.py").write_text(textwrap.dedent(GOOD))
    env = {k: v for k, v in os.environ.items() if k != "BIASLINT_SERVER_DIR"}
    env["PYTHONPATH"] = str(ROOT)

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "biaslint", *args], cwd=deep, text=True,
                              capture_output=True, timeout=300, env=env)
    try:
        assert run("good.py:build", "--warm").returncode == 1
        status = run("server", "status").stdout
        assert "pid" in status and str(deep) not in status, status
        [line] = status.splitlines()
        folder = Path(line.split(":")[0]).parent
        assert folder.stat().st_mode & 0o777 == 0o700 and folder.stat().st_uid == os.getuid()
    finally:
        assert "stopped 1" in run("server", "stop").stdout
