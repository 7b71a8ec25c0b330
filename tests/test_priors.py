"""--class-priors parsing: every accepted form, and one clear line for every bad one."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from biaslint.errors import PriorsError
from biaslint.run.priors import parse_priors


def close(a, b):
    return len(a) == len(b) and all(math.isclose(x, y, rel_tol=1e-9) for x, y in zip(a, b))


def test_probabilities_and_counts_are_normalized():
    assert close(parse_priors("0.9,0.09,0.01"), (0.9, 0.09, 0.01))
    assert close(parse_priors("900, 90, 10"), (0.9, 0.09, 0.01))
    assert close(parse_priors("1,1,2"), (0.25, 0.25, 0.5))


def test_raw_values_are_kept_for_multilabel_heads():
    priors = parse_priors("0.01,0.2")
    assert priors.raw == (0.01, 0.2)
    assert math.isclose(sum(priors), 1.0)


def test_json_list_and_objects(tmp_path):
    (tmp_path / "p.json").write_text(json.dumps([90, 9, 1]))
    assert close(parse_priors(f"@{tmp_path / 'p.json'}"), (0.9, 0.09, 0.01))
    (tmp_path / "d.json").write_text(json.dumps({"cat": 3, "dog": 1}))
    assert close(parse_priors(f"@{tmp_path / 'd.json'}"), (0.75, 0.25))  # order as written
    (tmp_path / "i.json").write_text(json.dumps({"2": 1, "0": 3}))
    assert close(parse_priors(f"@{tmp_path / 'i.json'}"), (0.75, 0.0, 0.25))  # by index


def test_text_labels_one_per_line(tmp_path):
    path = tmp_path / "labels.txt"
    path.write_text("dog\ncat\ncat\ncat\n")
    assert close(parse_priors(f"@{path}"), (0.75, 0.25))  # sorted names: cat, dog
    ints = tmp_path / "labels.csv"
    ints.write_text("0\n2\n2\n2\n")
    assert close(parse_priors(f"@{ints}"), (0.25, 0.0, 0.75))


def test_text_counts(tmp_path):
    one_per_line = tmp_path / "counts.txt"
    one_per_line.write_text("900\n90\n10\n")
    assert close(parse_priors(f"@{one_per_line}"), (0.9, 0.09, 0.01))
    row = tmp_path / "row.csv"
    row.write_text("0.5,0.25,0.25\n")
    assert close(parse_priors(f"@{row}"), (0.5, 0.25, 0.25))
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("label,count\nneg,99\npos,1\n")
    assert close(parse_priors(f"@{pairs}"), (0.99, 0.01))


def test_npy_counts_and_labels(tmp_path):
    np.save(tmp_path / "c.npy", np.array([3.0, 1.0]))
    assert close(parse_priors(f"@{tmp_path / 'c.npy'}"), (0.75, 0.25))
    np.save(tmp_path / "y.npy", np.array([0, 0, 0, 1, 2, 2, 2, 2]))
    assert close(parse_priors(f"@{tmp_path / 'y.npy'}"), (3 / 8, 1 / 8, 4 / 8))


@pytest.mark.parametrize("text, words", [
    ("0.5,-0.1", "negative"),
    ("0,0,0", "all values are zero"),
    ("0.5,abc", "not a number"),
    ("", "empty"),
    ("@", "no file name"),
    ("@/no/such/priors.json", "no such file"),
    ("0.5,inf", "finite"),
])
def test_bad_priors_raise_one_line(text, words):
    with pytest.raises(PriorsError) as info:
        parse_priors(text)
    assert words in str(info.value)
    assert "\n" not in str(info.value)


def test_bad_files(tmp_path):
    bad_json = tmp_path / "bad.json"
    bad_json.write_text("{not json")
    with pytest.raises(PriorsError, match="not valid JSON"):
        parse_priors(f"@{bad_json}")
    bad_npy = tmp_path / "bad.npy"
    bad_npy.write_bytes(b"garbage")
    with pytest.raises(PriorsError, match="npy"):
        parse_priors(f"@{bad_npy}")
    ragged = tmp_path / "ragged.csv"
    ragged.write_text("1,2\n3\n4,5,6\n")
    with pytest.raises(PriorsError):
        parse_priors(f"@{ragged}")


def test_cli_bad_priors_exit_2(cli, write_target):
    target = write_target("import torch.nn as nn\n\ndef build():\n    return nn.Linear(4, 3)\n")
    result = cli(target, "--class-priors", "0.5,-1")
    assert result.exit_code == 2
    assert "negative" in result.stderr
    assert "Traceback" not in result.stderr
