"""``biaslint lsp``: a language server (LSP over stdio, on pygls) for any editor.

When a Python file of the workspace is opened or saved, the targets that read it are linted
warm (a child of the warm server: ``biaslint.serve.client``), and each finding becomes a
diagnostic at the line that constructed the layer. A finding whose fix ``--fix`` can write is
offered as a code action (quick fix) with that edit.

Which targets read a file: those the last lint recorded as reading it (the source records of
``--changed-since``, inside a git work tree), else those whose own file it is. The targets are
the workspace's configured ones (``[tool.biaslint] targets``), or the editor's
``initializationOptions: {"targets": [...]}``. Before its first lint a target counts as reading
every file: the first save lints them all.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from pathlib import Path
from typing import Any

from lsprotocol import types
from pygls.lsp.server import LanguageServer
from pygls.uris import from_fs_path, to_fs_path

from biaslint.errors import BiaslintError
from biaslint.serve import client, watch
from biaslint.version import __version__

SEVERITY = {"error": types.DiagnosticSeverity.Error,
            "warning": types.DiagnosticSeverity.Warning,
            "info": types.DiagnosticSeverity.Information}


class Linter:
    """What the server knows: the targets, the files each read, what was published where."""

    def __init__(self) -> None:
        self.root = Path.cwd()
        self.targets: list[str] = []
        self.reads: dict[str, set[Path]] = {}  # target -> files (absent: not linted yet)
        self.published: dict[str, dict[Path, list[types.Diagnostic]]] = {}
        self.lock = asyncio.Lock()

    def start(self, root: Path, given: Any) -> str | None:
        """Set the workspace; what is wrong with it, or None."""
        from biaslint.run.config import load_config

        self.root = root.resolve()
        os.chdir(self.root)
        if isinstance(given, dict) and isinstance(given.get("targets"), list):
            self.targets = [str(t) for t in given["targets"]]
            return None
        try:
            self.targets = [entry["target"] for entry in load_config().targets]
        except BiaslintError as exc:
            return f"biaslint: {exc}"
        if not self.targets:
            return ("biaslint: no targets: list them in pyproject.toml under [tool.biaslint] "
                    "as targets = [\"mymodel:build\"]")
        return None

    def readers(self, path: Path) -> list[str]:
        return [t for t in self.targets if t not in self.reads or path in self.reads[t]]

    def lint(self, targets: list[str]) -> tuple[int, list[dict[str, Any]] | None]:
        """Lint ``targets`` warm; the exit code and the JSON results (None: no report)."""
        with tempfile.TemporaryDirectory(prefix="biaslint-lsp-") as folder:
            report = Path(folder) / "report.json"
            with open(os.devnull, "r+b") as null:
                code = client.lint([*targets, "--format", f"json={report}"],
                                   fds=(null.fileno(), null.fileno(), null.fileno()))
            results = watch.results_of(report)
        for target in targets:
            self.reads[target] = {p.resolve() for p in watch.files_of(target)}
        return code, results

    def diagnostics(self, results: list[dict[str, Any]]
                    ) -> tuple[dict[str, dict[Path, list[Any]]], list[str]]:
        """Per target, the diagnostics by file; and the findings no file of the workspace can
        show (said in the log, never dropped silently). A finding built outside the workspace
        (a library's line) goes at the top of the target's own file, naming where it was."""
        out: dict[str, dict[Path, list[types.Diagnostic]]] = {}
        unshown: list[str] = []
        for result in results:
            target = str(result["target"])
            per_file = out.setdefault(target, {})
            for finding in result.get("findings") or []:
                path = (self.root / finding["file"]).resolve() if finding.get("file") else None
                if path is not None and finding.get("line") and path.is_file() \
                        and self.root in path.parents:
                    per_file.setdefault(path, []).append(diagnostic(finding, self.root))
                    continue
                where = f"{finding['file']}:{finding.get('line')}" if finding.get("file") \
                    else "no source line recorded"
                own = watch.target_file(target)
                if not own:
                    unshown.append(f"{target}: {finding['code']} {finding['message']} ({where})")
                    continue
                moved = dict(finding, file=str(own[0]), line=1, col=1, end_line=1, fix=None,
                             message=f"{finding['message']} (in {finding.get('module')}, "
                                     f"built at {where})")
                per_file.setdefault(own[0].resolve(), []).append(diagnostic(moved, self.root))
        return out, unshown


def diagnostic(finding: dict[str, Any], root: Path) -> types.Diagnostic:
    line = max(0, int(finding["line"]) - 1)
    col = max(0, int(finding.get("col") or 1) - 1)
    end_line = max(line, int(finding.get("end_line") or finding["line"]) - 1)
    fix = finding.get("fix") or {}
    edits = [e for e in fix.get("edits") or [] if e.get("file")]
    data = {"title": fix.get("title"), "safe": fix.get("safe"),
            "edits": [dict(e, file=str((root / e["file"]).resolve())) for e in edits]}
    return types.Diagnostic(
        range=types.Range(start=types.Position(line=line, character=col),
                          end=types.Position(line=end_line, character=col if end_line > line
                                             else col + 1)),
        message=f"{finding['message']}" + (f"\nfix: {fix['title']}" if fix.get("title") else ""),
        severity=SEVERITY.get(str(finding.get("severity")), types.DiagnosticSeverity.Warning),
        code=str(finding["code"]), source="biaslint", data=data if edits else None)


def code_actions(diagnostics: list[types.Diagnostic]) -> list[types.CodeAction]:
    actions = []
    for diag in diagnostics:
        data = diag.data if isinstance(diag.data, dict) else None
        if diag.source != "biaslint" or not data or not data.get("edits"):
            continue
        changes: dict[str, list[types.TextEdit]] = {}
        for edit in data["edits"]:
            uri = from_fs_path(edit["file"]) or edit["file"]
            changes.setdefault(uri, []).append(types.TextEdit(
                range=types.Range(
                    start=types.Position(line=edit["start"]["line"] - 1,
                                         character=edit["start"]["col"] - 1),
                    end=types.Position(line=edit["end"]["line"] - 1,
                                       character=edit["end"]["col"] - 1)),
                new_text=edit["content"]))
        actions.append(types.CodeAction(
            title=f"biaslint: {data.get('title') or 'apply the fix'} ({diag.code})",
            kind=types.CodeActionKind.QuickFix, diagnostics=[diag],
            is_preferred=bool(data.get("safe")), edit=types.WorkspaceEdit(changes=changes)))
    return actions


def create() -> LanguageServer:
    server = LanguageServer("biaslint", __version__)
    linter = Linter()

    @server.feature(types.INITIALIZE)
    def initialize(ls: LanguageServer, params: types.InitializeParams) -> None:
        folders = params.workspace_folders or []
        uri = folders[0].uri if folders else params.root_uri
        root = Path((to_fs_path(uri) if uri else None) or os.getcwd())
        problem = linter.start(root, params.initialization_options)
        if problem:
            ls.window_log_message(types.LogMessageParams(type=types.MessageType.Warning,
                                                             message=problem))

    async def relint(ls: LanguageServer, uri: str) -> None:
        path_text = to_fs_path(uri)
        if not path_text or not path_text.endswith(".py"):
            return
        targets = linter.readers(Path(path_text).resolve())
        if not targets:
            return
        async with linter.lock:
            try:
                code, results = await asyncio.to_thread(linter.lint, targets)
            except (BiaslintError, OSError) as exc:
                ls.window_log_message(types.LogMessageParams(
                    type=types.MessageType.Error, message=f"biaslint: {exc}"))
                return
            if results is None:
                said = (f"biaslint: the lint of {', '.join(targets)} ended with exit {code} and "
                        "no report; run it in a terminal to see why")
                ls.window_log_message(types.LogMessageParams(type=types.MessageType.Error,
                                                             message=said))
                return
            found, unshown = linter.diagnostics(results)
            publish(ls, found)
            for line in unshown:
                ls.window_log_message(types.LogMessageParams(
                    type=types.MessageType.Warning, message=f"biaslint: not shown in a file: "
                                                            f"{line}"))

    def publish(ls: LanguageServer, found: dict[str, dict[Path, list[Any]]]) -> None:
        touched: set[Path] = set()
        for target, per_file in found.items():
            touched |= set(linter.published.get(target, {})) | set(per_file)
            linter.published[target] = per_file
        for path in touched:
            every = [d for per in linter.published.values() for d in per.get(path, [])]
            ls.text_document_publish_diagnostics(types.PublishDiagnosticsParams(
                uri=from_fs_path(str(path)) or str(path), diagnostics=every))

    @server.feature(types.TEXT_DOCUMENT_DID_OPEN)
    async def did_open(ls: LanguageServer, params: types.DidOpenTextDocumentParams) -> None:
        await relint(ls, params.text_document.uri)

    @server.feature(types.TEXT_DOCUMENT_DID_SAVE)
    async def did_save(ls: LanguageServer, params: types.DidSaveTextDocumentParams) -> None:
        await relint(ls, params.text_document.uri)

    @server.feature(types.TEXT_DOCUMENT_CODE_ACTION, types.CodeActionOptions(
        code_action_kinds=[types.CodeActionKind.QuickFix]))
    def code_action(ls: LanguageServer, params: types.CodeActionParams
                    ) -> list[types.CodeAction]:
        return code_actions(list(params.context.diagnostics))

    return server


def main() -> None:
    create().start_io()
