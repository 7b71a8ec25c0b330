"""``--shard K/N``: lint the K-th of N parts of the targets, one part per CI runner.

Every runner of a CI matrix computes the assignment on its own, so it is a pure function of what
every runner has alike: the list of targets (the same checkout) and, with ``--shard-times FILE``,
the contents of that file (the same committed file). Nothing a runner keeps for itself (its own
``.biaslint_cache``) takes part: two runners reading two different caches could put a target in
two shards, or in none.

Two ways to assign, and why both:

* **Without times: rendezvous hashing.** Each target goes to the shard ``k`` with the highest
  ``blake2b(target, k)`` (a stable hash: Python's ``hash()`` is salted per process). A target's
  shard depends on the target and N alone, so adding or removing a target never moves another,
  and going from N to N+1 shards moves only the targets the new shard wins (about 1/(N+1) of
  them). The parts are balanced in expectation only: by count, not by cost.
* **With times (``--shard-times``): longest first.** Targets sorted by their last known lint
  time, longest first (ties by the stable hash), each goes to the shard with the least time so
  far (ties: the lower shard). This is Graham's LPT rule: the longest shard is at most 4/3 of
  the best possible split (Graham 1969, "Bounds on multiprocessing timing anomalies"). A target
  the file has no time for weighs the median of the known times. The price: adding a target, or
  new times, can move other targets between shards. That is harmless (each run's shards still
  hold every target exactly once), but a target's shard is then not fixed across runs.

The times file is a copy of ``--changed-since`` source caches (``biaslint merge`` of the
runners' ``.biaslint_cache/sources.json``): each entry records the target's last lint time in
seconds. The live cache itself is refused: each run rewrites it, so shards run one after
another on one machine would read different times.
"""

from __future__ import annotations

import hashlib
import json
import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import click

from biaslint.errors import ConfigError
from biaslint.settings import CACHE_DIR

# The stages of a lint whose times add up to what a target costs (``TargetResult.timings``;
# "screen" and "gradients" are parts of "rules").
STAGES = ("build", "capture", "analysis", "rules", "signal")


@dataclass(frozen=True)
class Shard:
    """The ``index``-th (from 1) of ``count`` shards."""

    index: int
    count: int

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def parse_shard(value: Any) -> Shard:
    """``"K/N"`` (or a ``Shard``), with 1 <= K <= N; raises ``ValueError`` saying what is
    wrong."""
    if isinstance(value, Shard):
        return value
    if not isinstance(value, str):
        raise ValueError(f"must be a string like \"2/3\", not {value!r}")
    index, slash, count = value.strip().partition("/")
    if not slash or not index.strip().isdigit() or not count.strip().isdigit():
        raise ValueError("must be K/N with whole numbers, like 2/3 (the second of three shards)")
    shard = Shard(int(index), int(count))
    if shard.count < 1:
        raise ValueError("N must be at least 1")
    if not 1 <= shard.index <= shard.count:
        raise ValueError(f"K must be between 1 and N ({shard.count}), like 1/{shard.count}")
    return shard


def stable_hash(*parts: str) -> int:
    """A hash that is the same in every process and on every machine."""
    digest = hashlib.blake2b("\0".join(parts).encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def assign(targets: Sequence[str], count: int,
           seconds: Mapping[str, float] | None = None) -> list[int]:
    """The shard (1..``count``) of each of ``targets``: by their times where ``seconds`` knows
    any of them, else by rendezvous hashing (see the module's docstring)."""
    if not seconds or not any(t in seconds for t in targets):
        return [max(range(1, count + 1), key=lambda k: (stable_hash(t, str(k)), -k))
                for t in targets]
    weight = weights(targets, seconds)
    order = sorted(range(len(targets)),
                   key=lambda i: (-weight[i], stable_hash(targets[i]), targets[i], i))
    load = [0.0] * count
    shards = [0] * len(targets)
    for i in order:
        k = min(range(count), key=lambda b: (load[b], b))
        load[k] += weight[i]
        shards[i] = k + 1
    return shards


def weights(targets: Sequence[str], seconds: Mapping[str, float]) -> list[float]:
    """Each target's last known lint time; the median of the known ones for a target without
    one (all 1.0 when none is known)."""
    known = [seconds[t] for t in targets if t in seconds]
    fill = statistics.median(known) if known else 1.0
    return [seconds.get(t, fill) for t in targets]


def digest(targets: Sequence[str], shards: Sequence[int]) -> str:
    """A short digest of the whole assignment: every shard prints it, so the logs of the
    runners show at a glance that they split the same way."""
    text = "\n".join(f"{k}\t{t}" for t, k in zip(targets, shards))
    return hashlib.blake2b(text.encode("utf-8"), digest_size=4).hexdigest()


def lint_seconds(timings: Mapping[str, float]) -> float | None:
    """What a target's lint cost, from its ``TargetResult.timings``; None if not measured."""
    spent = [timings[stage] for stage in STAGES if stage in timings]
    return round(sum(spent), 3) if spent else None


def read_times(path: str) -> dict[str, float]:
    """The last known lint time of each target in a source cache file; ``ConfigError`` when the
    file is missing or is not one (a runner that lacked it would split differently)."""
    shown = f"--shard-times {path}"
    if Path(path).resolve().parent.name == CACHE_DIR:
        # Each run rewrites it: shards run one after another on one machine would read
        # different times, and split differently.
        raise ConfigError(f"{shown}: this is the live cache every run rewrites; give a copy "
                          "that every shard reads alike (biaslint merge -o biaslint-times.json "
                          f"{path}, then commit it)")
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{shown}: no such file; every shard must read the same times, so "
                          "commit the file (biaslint merge writes it from the runners' "
                          ".biaslint_cache/sources.json) or drop --shard-times") from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{shown}: cannot be read as JSON: {exc}") from None
    entries = data.get("targets") if isinstance(data, dict) else None
    if not isinstance(entries, dict) or "format" not in data:
        raise ConfigError(f"{shown}: not a biaslint source cache (.biaslint_cache/sources.json "
                          "or the biaslint merge of several)")
    times = {}
    for target, entry in entries.items():
        value = entry.get("seconds") if isinstance(entry, dict) else None
        if isinstance(value, (int, float)) and not isinstance(value, bool) \
                and math.isfinite(value) and value >= 0:
            times[str(target)] = float(value)
    return times


def shard_configs(configs: Sequence[Any], shard: Shard, times_file: str | None,
                  quiet: bool) -> tuple[Any, ...]:
    """The targets (``TargetConfig``) of ``shard``, in their given order; says on stderr (unless
    ``quiet``) how many of how many, how they were split, and the assignment's digest."""
    targets = [config.target for config in configs]
    times = read_times(times_file) if times_file else None
    shards = assign(targets, shard.count, times)
    mine = tuple(config for config, k in zip(configs, shards) if k == shard.index)
    if not quiet:
        known = sum(1 for t in targets if times and t in times)
        how = (f"balanced by the recorded lint times of {known} of {len(targets)}"
               if known else "by a stable hash of each target")
        click.echo(f"biaslint: shard {shard}: {len(mine)} of {len(targets)} "
                   f"target{'s' if len(targets) != 1 else ''} ({how}; assignment "
                   f"{digest(targets, shards)})", err=True)
    return mine
