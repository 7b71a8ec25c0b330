"""``biaslint merge``: join the reports of N shards (``--shard K/N``) into one.

The kind of each input is read from its content, and all inputs must be of one kind:

* a JSON report (``--format json``): one report whose ``results`` are every input's;
* a SARIF log (``--format sarif``): one run holding every result, the rules listed once (each
  result's ``ruleIndex`` points into the merged list), one invocation that succeeded only if
  every input's did, with every input's notifications;
* a baseline (``--write-baseline``): one baseline with every input's findings, sorted as
  ``--write-baseline`` sorts them, so it equals the baseline of an unsharded run;
* a source cache (``.biaslint_cache/sources.json``): per target, the newest record. This is the
  file ``--shard-times`` balances shards by, and what ``--changed-since`` reads.

Reports and baselines come from shards that never overlap, so a target found in two inputs
means a mistake (a shard's file from another run, a shard run twice, shards that split by
different ``--shard-times`` files): it is refused, as are inputs of different schema versions or
biaslint versions. Caches overlap by nature (every runner restored the same one): there the
newest record of a target wins.

No torch import: this is JSON in, JSON out.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Sequence

import click

from biaslint.errors import ConfigError

Document = dict[str, Any]
KINDS = ("JSON report", "SARIF log", "baseline", "source cache")


def kind_of(document: Any) -> str | None:
    """Which of ``KINDS`` a parsed document is, or None."""
    if not isinstance(document, dict):
        return None
    if "schema_version" in document and isinstance(document.get("results"), list):
        return "JSON report"
    if isinstance(document.get("runs"), list) and str(document.get("version", "")).startswith("2"):
        return "SARIF log"
    if "version" in document and isinstance(document.get("findings"), list):
        return "baseline"
    if "format" in document and isinstance(document.get("targets"), dict):
        return "source cache"
    return None


def read_inputs(paths: Sequence[str]) -> tuple[str, list[tuple[str, Document]]]:
    """The inputs, parsed, and their common kind; ``ConfigError`` (one line) otherwise."""
    documents: list[tuple[str, Document]] = []
    kinds: dict[str, str] = {}
    for path in paths:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"{path}: cannot be read: {exc.strerror or exc}") from None
        try:
            document = json.loads(text)
        except ValueError:
            raise ConfigError(f"{path}: not JSON; biaslint merge joins JSON reports, SARIF logs, "
                              "baselines and source caches (json-lines reports join with cat)"
                              ) from None
        kind = kind_of(document)
        if kind is None:
            raise ConfigError(f"{path}: not a biaslint JSON report, SARIF log, baseline or "
                              "source cache")
        kinds.setdefault(kind, path)
        if len(kinds) > 1:
            (first, at), (second, other) = list(kinds.items())[:2]
            raise ConfigError(f"{other} is a {second} but {at} is a {first}: merge files of "
                              "one kind at a time")
        documents.append((path, document))
    if not documents:
        raise ConfigError("nothing to merge: give the files, e.g. biaslint merge -o "
                          "merged.json shard-1.json shard-2.json")
    return next(iter(kinds)), documents


def _same(documents: Sequence[tuple[str, Document]], what: str,
          value: Callable[[Document], Any]) -> Any:
    """The value every input has for ``what``; ``ConfigError`` naming two that differ."""
    first_path, first = documents[0]
    for path, document in documents[1:]:
        if value(document) != value(first):
            raise ConfigError(f"{path} has {what} {value(document)!r} but {first_path} has "
                              f"{value(first)!r}: merge the shards of one run (made by one "
                              "biaslint)")
    return value(first)


def _tool_version(document: Document) -> Any:
    tool = document.get("tool")
    return tool.get("version") if isinstance(tool, dict) else None


def _no_overlap(owners: dict[str, str], path: str, targets: Sequence[str]) -> None:
    """Record that the input ``path`` holds ``targets``; a target an earlier input holds too
    is refused (one input may list a target twice: a config can, with other settings)."""
    held = set(owners)
    for target in dict.fromkeys(targets):
        if target in held:
            where = f"{path} twice" if owners[target] == path else \
                f"both {owners[target]} and {path}"
            raise ConfigError(f"target {target} is in {where}: shards never overlap, so "
                              "one of the files is from another run, a shard that ran twice, "
                              "or shards split by different --shard-times files")
        owners[target] = path


def _rest(documents: Sequence[tuple[str, Document]], merged: Document) -> Document:
    """The keys besides those merged already: kept when every input has the same value, lists
    joined, anything else refused (a key this biaslint does not know how to join)."""
    keys = dict.fromkeys(k for _, d in documents for k in d if k not in merged)
    for key in keys:
        values = [d.get(key) for _, d in documents]
        if all(v == values[0] for v in values):
            merged[key] = values[0]
        elif all(isinstance(v, list) for v in values):
            merged[key] = [item for v in values if isinstance(v, list) for item in v]
        else:
            raise ConfigError(f"the inputs differ in {key!r}, which biaslint merge cannot join "
                              f"({documents[0][0]} and {documents[1][0]})")
    return merged


def merge_reports(documents: Sequence[tuple[str, Document]]) -> Document:
    """JSON reports: every input's results, in the order of the inputs."""
    merged: Document = {"schema_version": _same(documents, "schema_version",
                                                lambda d: d.get("schema_version"))}
    _same(documents, "biaslint version", _tool_version)
    merged["tool"] = documents[0][1].get("tool")
    owners: dict[str, str] = {}
    results = []
    for path, document in documents:
        _no_overlap(owners, path, [str(r.get("target")) for r in document["results"]
                                   if isinstance(r, dict)])
        results.extend(document["results"])
    merged["results"] = results
    return _rest(documents, merged)


def merge_baselines(documents: Sequence[tuple[str, Document]]) -> Document:
    """Baselines: every input's findings, sorted as ``--write-baseline`` sorts them."""
    merged: Document = {"version": _same(documents, "version", lambda d: d.get("version"))}
    _same(documents, "biaslint version", _tool_version)
    merged["tool"] = documents[0][1].get("tool")
    owners: dict[str, str] = {}
    findings = []
    for path, document in documents:
        entries = [e for e in document["findings"] if isinstance(e, dict)]
        _no_overlap(owners, path, [str(e.get("target")) for e in entries])
        findings.extend(entries)
    findings.sort(key=lambda e: tuple(str(e.get(k, "")) for k in
                                      ("target", "code", "module", "parameter")))
    merged["findings"] = findings
    return _rest(documents, merged)


def merge_caches(documents: Sequence[tuple[str, Document]]) -> Document:
    """Source caches: per target, the newest record (the latest ``recorded``; on a tie, the
    later input's)."""
    merged: Document = {"format": _same(documents, "format", lambda d: d.get("format"))}
    entries: dict[str, Any] = {}
    for _, document in documents:
        for target, entry in document["targets"].items():
            if not isinstance(entry, dict):
                continue
            held = entries.get(target)
            if held is None or str(entry.get("recorded", "")) >= str(held.get("recorded", "")):
                entries[target] = entry
    merged["targets"] = dict(sorted(entries.items()))
    return merged


def _driver(run: Document) -> Document:
    tool = run.get("tool")
    driver = tool.get("driver") if isinstance(tool, dict) else None
    return driver if isinstance(driver, dict) else {}


def merge_sarif(documents: Sequence[tuple[str, Document]]) -> Document:
    """SARIF logs of one run each: one run with every result; the rules listed once, in the
    order first seen, and each result's ``ruleIndex`` pointing into that list; one invocation,
    successful if every input's was, with every input's notifications and targets."""
    runs = []
    for path, document in documents:
        if len(document["runs"]) != 1 or _driver(document["runs"][0]).get("name") != "biaslint":
            raise ConfigError(f"{path}: not a SARIF log of one biaslint run")
        runs.append((path, document["runs"][0]))
    version = _same(documents, "SARIF version", lambda d: d.get("version"))
    _same(runs, "biaslint version", lambda run: _driver(run).get("version"))
    rules: dict[str, Any] = {}
    results: list[Any] = []
    notes: list[Any] = []
    targets: dict[str, Any] = {}
    owners: dict[str, str] = {}
    successful = True
    for path, run in runs:
        for rule in _driver(run).get("rules", []):
            rules.setdefault(rule.get("id"), rule)
        invocations = run.get("invocations") or [{}]
        held = {t: v for inv in invocations
                for t, v in ((inv.get("properties") or {}).get("targets") or {}).items()}
        named = ((r.get("properties") or {}).get("target") for r in run.get("results", []))
        _no_overlap(owners, path, [*held, *(t for t in named if isinstance(t, str))])
        targets.update(held)
        successful &= all(inv.get("executionSuccessful", True) for inv in invocations)
        notes.extend(n for inv in invocations for n in inv.get("toolExecutionNotifications", []))
        results.extend(run.get("results", []))
    index = {code: i for i, code in enumerate(rules)}
    for result in results:
        if result.get("ruleId") in index:
            result["ruleIndex"] = index[result["ruleId"]]
        else:
            result.pop("ruleIndex", None)
    first = runs[0][1]
    invocation = {**(first.get("invocations") or [{}])[0], "executionSuccessful": successful,
                  "toolExecutionNotifications": notes}
    invocation["properties"] = {**invocation.get("properties", {}), "targets": targets}
    run = {"tool": {**first["tool"], "driver": {**_driver(first), "rules": list(rules.values())}},
           "invocations": [invocation], "results": results}
    run = _rest(runs, run)
    merged: Document = {"$schema": documents[0][1]["$schema"]} \
        if "$schema" in documents[0][1] else {}
    merged.update(version=version, runs=[run])
    return _rest(documents, merged)


def merge(paths: Sequence[str]) -> tuple[str, Document]:
    """The kind of the inputs and their merge."""
    kind, documents = read_inputs(paths)
    merger = {"JSON report": merge_reports, "SARIF log": merge_sarif,
              "baseline": merge_baselines, "source cache": merge_caches}[kind]
    return kind, merger(documents)


def write_merged(paths: Sequence[str], output: str | None) -> str:
    """Merge ``paths`` into ``output`` (stdout when None); returns a line saying what was
    merged."""
    kind, merged = merge(paths)
    text = json.dumps(merged, indent=1 if kind == "source cache" else 2) + "\n"
    if output is None:
        click.echo(text, nl=False)
    else:
        try:
            Path(output).write_text(text, encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"-o {output}: cannot write: {exc.strerror or exc}") from None
    count = _count(kind, merged)
    where = f" into {output}" if output else ""
    return f"merged {len(paths)} {kind}{'s' if len(paths) != 1 else ''}{where}: {count}"


def _count(kind: str, merged: Document) -> str:
    if kind == "JSON report":
        n, what = len(merged["results"]), "target"
    elif kind == "SARIF log":
        n, what = sum(len(run.get("results", [])) for run in merged["runs"]), "result"
    elif kind == "baseline":
        n, what = len(merged["findings"]), "finding"
    else:
        n, what = len(merged["targets"]), "target"
    return f"{n} {what}{'s' if n != 1 else ''}"
