"""The wide zoo's bookkeeping (benchmarks/zoo_wide.py, benchmarks/wide_sweep.py): the held-out
split is a fixed function of the name, and the comparison counts a slice as found only when the
claimed runs cover its elements. (The sweep itself runs with ``python benchmarks/wide_sweep.py``.)
"""

from __future__ import annotations

import os
import sys

BENCHMARKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")
if BENCHMARKS not in sys.path:
    sys.path.insert(0, BENCHMARKS)

import wide_sweep  # noqa: E402
import zoo_wide  # noqa: E402


def test_split_is_a_fixed_function_of_the_name():
    # pinned: changing the rule after results exist would leak the held-out part
    assert zoo_wide.split_of("hf:bert") == "dev"
    assert zoo_wide.split_of("hf:layoutlmv3") == "heldout"
    keys = [f"hf:model{i}" for i in range(2000)]
    share = sum(zoo_wide.split_of(k) == "heldout" for k in keys) / len(keys)
    assert 0.17 < share < 0.23


def test_second_held_out_part_is_the_fixed_list_and_never_overlaps_the_first():
    listed = zoo_wide._second_held_out()
    assert "hf:aimv2" in listed and zoo_wide.split_of("hf:aimv2") == "heldout2"
    assert all(zoo_wide.split_of(k) == "heldout2" for k in listed)
    assert zoo_wide.split_of("hf:bert") == "dev"


def _row(layer, span, truth, size=12, kind="third"):
    return {"layer": layer, "param": "bias", "type": "Linear", "size": size, "slice": span,
            "kind": kind if span else "whole", "truth": truth, "dead": 0, "frozen": 0}


def test_slice_claims_must_cover_the_truth_slice():
    rows = [_row("qkv", "", "live"), _row("qkv", "4:8", "redundant"),
            _row("qkv", "1:3", "redundant", kind="screen"),
            _row("qkv", "9:11", "redundant", kind="screen")]
    claims = [{"layer": "qkv", "param": "bias", "verdict": "redundant-slice",
               "slices": [[4, 6], [6, 8], [9, 10]]}]
    result = wide_sweep.compare({("hf-all", "m"): {"rows": rows, "claims": claims}})
    stats = result["stats"]
    assert (stats["slice_truth"], stats["slice_tp"]) == (3, 1)  # 4:8 covered; 9:11 only half
    assert stats["slice_claims"] == 3 and stats["slice_claims_true"] == 3
    assert sorted(m["slice"] for m in result["misses"]) == ["1:3", "9:11"]


def test_a_claim_on_a_live_slice_is_false_and_whole_claims_count():
    rows = [_row("k", "", "redundant"), _row("qkv", "", "live"), _row("qkv", "4:8", "live")]
    claims = [{"layer": "k", "param": "bias", "verdict": "redundant", "slices": []},
              {"layer": "qkv", "param": "bias", "verdict": "redundant-slice",
               "slices": [[4, 8]]}]
    result = wide_sweep.compare({("hf-all", "m"): {"rows": rows, "claims": claims}})
    assert result["stats"]["whole_tp"] == 1
    assert [(f["layer"], f["slice"]) for f in result["false"]] == [("qkv", "4:8")]
