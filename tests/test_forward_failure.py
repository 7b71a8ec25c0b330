"""A real forward that fails after the capture succeeded is said, never a silent pass: the
rules that read it (BL006, BL007, BL009, ...) judged nothing, and the exit code says so."""

from __future__ import annotations

SOURCE = """
import torch, torch.nn as nn

CALLS = [0]

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.hidden = nn.Linear(16, 16)
        self.fc = nn.Linear(16, 4)

    def forward(self, x):
        CALLS[0] += 1
        if CALLS[0] > {calls}:   # the capture's forward works, the next one does not
            raise RuntimeError("the second forward fails")
        return self.fc(torch.relu(self.hidden(x)))

def build():
    return Net(), torch.randn(32, 16)
"""


def test_a_failing_real_forward_leaves_its_rules_unjudged(lint_source) -> None:
    result = lint_source(SOURCE.replace("{calls}", "1"))
    assert any("the real forward that" in line and "RuntimeError" in line
               for line in result.incomplete), result.incomplete
    scopes = {s.code: s for s in result.rules}
    for code in ("BL007", "BL009"):
        assert scopes[code].judged == 0 and scopes[code].unjudged, scopes[code]
        assert all("the real forward raised" in why for _, why in scopes[code].unjudged)
    assert scopes["BL001"].unjudged == ()  # graph rules judged as usual


def test_the_same_model_whose_forwards_work_is_judged(lint_source) -> None:
    result = lint_source(SOURCE.replace("{calls}", "100"))
    assert result.incomplete == ()
    scopes = {s.code: s for s in result.rules}
    assert scopes["BL007"].judged > 0 and scopes["BL009"].judged > 0


def test_the_cli_exits_2(cli, write_target) -> None:
    target = write_target(SOURCE.replace("{calls}", "1"))
    result = cli(target)
    assert result.exit_code == 2
    assert "analysis incomplete" in result.stderr
