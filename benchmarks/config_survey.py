"""The differential-build survey (BL017): every transformers architecture built twice on the meta
device from the wide zoo's tiny config, as written and with its init-scale attributes read at
ten times their value. Lists every drawn weight whose init law is the same both times, with the
call that drew it, sorted into the kinds the rule page describes.

    python benchmarks/config_survey.py [--jobs 2] [--only bert,gpt2] [--out benchmarks/out]

Writes ``config_survey.jsonl`` (one line per architecture) and prints the summary table
RESULTS.md shows. The model is built from its config alone (no forward, no inputs): what is
compared is what the init draws.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import signal
import sys
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import zoo_wide  # noqa: E402

TIMEOUT = 300


def tiny_model(model_type: str) -> Any:
    """The wide zoo's tiny config for ``model_type`` and its model class, built (no forward)."""
    import transformers
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    transformers.logging.set_verbosity_error()
    class_name = zoo_wide.hf_architectures()[model_type]
    config_cls = CONFIG_MAPPING[model_type]
    overrides = zoo_wide.tiny_overrides(config_cls())
    try:
        config = config_cls(**overrides)
    except Exception:  # noqa: BLE001  a sub-config that only takes its own class
        config = config_cls(**{k: v for k, v in overrides.items()
                               if k not in zoo_wide.SUBCONFIG_KEYS})
    return getattr(transformers, class_name)(config)


class _Tiny:
    """``TINY.bert`` builds bert's tiny model: ``config_survey:TINY.bert`` is a target."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)

        def build() -> Any:
            return tiny_model(_unquote(name))

        build.__name__ = name
        return build


TINY = _Tiny()


def _quote(model_type: str) -> str:
    """``model_type`` as a Python attribute name (model types hold "-" and ".")."""
    return model_type.replace("-", "__dash__").replace(".", "__dot__")


def _unquote(attr: str) -> str:
    return attr.replace("__dash__", "-").replace("__dot__", ".")


def survey_one(model_type: str) -> dict[str, Any]:
    from biaslint.errors import BiaslintError
    from biaslint.load.build import load_target
    from biaslint.load.differential import config_scale
    from biaslint.load.guard import preserved_state, target_scope

    target = f"config_survey:TINY.{_quote(model_type)}"
    row: dict[str, Any] = {"arch": model_type, "split": zoo_wide.split_of(f"hf:{model_type}")}
    signal.alarm(TIMEOUT)
    start = time.perf_counter()
    try:
        with target_scope(), preserved_state():
            loaded = load_target(target, device="meta")
            scale = config_scale(loaded.model, loaded.param_laws,
                                 lambda: load_target(target, device="meta").param_laws)
    except (BiaslintError, Exception) as exc:  # noqa: BLE001  a build that fails is a row
        row["error"] = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
        return row
    finally:
        signal.alarm(0)
    row["seconds"] = round(time.perf_counter() - start, 2)
    row["params"] = sum(1 for _ in loaded.model.parameters())
    if scale is None:
        row["config"] = None
        return row
    row["config"] = dict(scale.attributes)
    row["error"] = scale.error or None
    shapes = {n: tuple(p.shape) for n, p in loaded.model.named_parameters(remove_duplicate=False)}
    row["follows"] = len(scale.follows)
    row["follows_weights"] = sum(1 for n in scale.follows if len(shapes.get(n, ())) >= 2)
    row["first_follows"] = next((n for n in scale.follows if len(shapes.get(n, ())) >= 2), None)
    row["unknown"] = [list(u) for u in scale.unknown]
    modules = dict(loaded.model.named_modules())
    params = dict(loaded.model.named_parameters(remove_duplicate=False))
    ignores = []
    for fixed in scale.ignores:
        name = fixed.parameter
        owner = modules.get(name.rsplit(".", 1)[0] if "." in name else "")
        call = loaded.param_inits.get(name)
        ignores.append({
            "param": name, "law": fixed.law, "kind": fixed.kind, "loc": fixed.loc,
            "scale": fixed.scale, "high": fixed.high, "shape": list(params[name].shape),
            "own_init": fixed.own_init, "governed": fixed.governed, "how": fixed.how,
            "module_type": type(owner).__name__ if owner else "",
            "call": call.describe() if call else None,
            "at": str(call.location) if call and call.location else None,
        })
    row["ignores"] = ignores
    return row


def _timeout(signum: int, frame: Any) -> None:
    raise TimeoutError(f"no result in {TIMEOUT} s")


def _init_worker() -> None:
    signal.signal(signal.SIGALRM, _timeout)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch
    torch.set_num_threads(1)


def kinds(row: dict[str, Any]) -> list[tuple[dict[str, Any], str]]:
    """Each weight (two or more dimensions) of the row that ignores the config, with the kind
    BL017 gives it (``kind_of``, the rule's own sorting); none when no weight follows."""
    from biaslint.findings import ConfigScale, FixedDraw
    from biaslint.rules.bl017_init_ignores_config import kind_of

    if not row.get("follows_weights") or not row.get("ignores"):
        return []
    scale = ConfigScale(attributes=tuple((row.get("config") or {}).items()), factor=10.0)
    out = []
    for item in row["ignores"]:
        if len(item["shape"]) < 2:
            continue
        fixed = FixedDraw(parameter=item["param"], law=item["law"], kind=item["kind"],
                          loc=item["loc"], scale=item["scale"], high=item["high"],
                          own_init=item["own_init"], governed=item["governed"],
                          how=item.get("how", ""),
                          module_type=item["module_type"])
        out.append((item, kind_of(fixed, scale, tuple(item["shape"]))))
    return out


def table(path: str) -> None:
    """The summary RESULTS.md shows, from a survey's rows."""
    import collections

    with open(path, encoding="utf-8") as handle:
        rows = [json.loads(line) for line in handle if line.strip()]
    built = [r for r in rows if "params" in r]
    configured = [r for r in built if r.get("config")]
    compared = [r for r in configured if not r.get("error")]
    print(f"architectures: {len(rows)}; built: {len(built)}; failed to build: "
          f"{len(rows) - len(built)}; with an init-scale config: {len(configured)}; "
          f"compared: {len(compared)} (second build failed: {len(configured) - len(compared)})")
    tensors = collections.Counter()
    archs = collections.Counter()
    for row in compared:
        found = kinds(row)
        for kind in {k for _, k in found}:
            archs[kind] += 1
        for _, kind in found:
            tensors[kind] += 1
    print(f"weights that ignore the config while others follow it: {sum(tensors.values())} "
          f"in {sum(1 for r in compared if kinds(r))} architectures")
    for kind in ("literal", "unit", "default", "fallback", "scheme"):
        print(f"  {kind:8s} {tensors[kind]:5d} weights in {archs[kind]:3d} architectures")
    print("\n| architecture | split | kind | weights | example | drawn | call |")
    print("|---|---|---|---|---|---|---|")
    for row in sorted(compared, key=lambda r: r["arch"]):
        by_kind = collections.defaultdict(list)
        for item, kind in kinds(row):
            by_kind[kind].append(item)
        for kind, items in sorted(by_kind.items()):
            if kind in ("scheme", "fallback"):
                continue
            first = items[0]
            at = (first.get("at") or "").split("site-packages/")[-1]
            print(f"| {row['arch']} | {row['split']} | {kind} | {len(items)} | "
                  f"`{first['param']}` ({first['module_type']}) | {first['law']} | {at} |")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--only", default="")
    parser.add_argument("--out", default=os.path.join(HERE, "out"))
    parser.add_argument("--table", metavar="JSONL", help="print the summary of a survey's rows")
    args = parser.parse_args()
    if args.table:
        table(args.table)
        return
    names = [n for n in zoo_wide.names("hf-all")
             if not args.only or n in args.only.split(",")]
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "config_survey.jsonl")
    start = time.perf_counter()
    with open(path, "w", encoding="utf-8") as out, multiprocessing.get_context("spawn").Pool(
            args.jobs, initializer=_init_worker, maxtasksperchild=25) as pool:
        for i, row in enumerate(pool.imap_unordered(survey_one, names)):
            out.write(json.dumps(row) + "\n")
            out.flush()
            print(f"[{i + 1}/{len(names)}] {row['arch']}: "
                  f"{row.get('error') or len(row.get('ignores') or [])}", flush=True)
    print(f"{len(names)} architectures in {time.perf_counter() - start:.0f} s -> {path}")


if __name__ == "__main__":
    main()
