"""``biaslint lsp`` driven by an LSP client (pygls's): open a model file, receive the finding as a
diagnostic at the line that built the layer, ask for its code action and apply the edit, save,
and receive the diagnostics cleared; a file no target reads is not linted."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("pygls")

from lsprotocol import types  # noqa: E402
from pygls.lsp.client import LanguageClient  # noqa: E402
from pygls.uris import from_fs_path  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent

MODEL = """
import torch
import torch.nn as nn


def build():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU())
    return model, torch.randn(2, 3, 8, 8)
"""


def _project(tmp_path: Path) -> Path:
    (tmp_path / "model.py").write_text(textwrap.dedent(MODEL))
    (tmp_path / "other.py").write_text("x = 1\n")
    (tmp_path / "pyproject.toml").write_text(
        '[tool.biaslint]\ntargets = ["model.py:build"]\nselect = ["BL001"]\n')
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    return tmp_path


class Session:
    """One client, the diagnostics it was sent, by file."""

    def __init__(self) -> None:
        self.client = LanguageClient("biaslint-test", "1")
        self.diagnostics: dict[str, list[types.Diagnostic]] = {}
        self.received = asyncio.Event()
        self.logs: list[str] = []

        @self.client.feature(types.TEXT_DOCUMENT_PUBLISH_DIAGNOSTICS)
        def published(params: types.PublishDiagnosticsParams) -> None:
            self.diagnostics[params.uri] = list(params.diagnostics)
            self.received.set()

        @self.client.feature(types.WINDOW_LOG_MESSAGE)
        def logged(params: types.LogMessageParams) -> None:
            self.logs.append(params.message)

        @self.client.feature(types.WINDOW_SHOW_MESSAGE)
        def shown(params: types.ShowMessageParams) -> None:
            self.logs.append(params.message)
            self.received.set()  # an error the server shows: fail at once, with it

    async def next_diagnostics(self, uri: str) -> list[types.Diagnostic]:
        self.received.clear()
        await asyncio.wait_for(self.received.wait(), timeout=240)  # a hang's safety net
        assert uri in self.diagnostics, self.logs
        return self.diagnostics[uri]


async def _scenario(project: Path, servers: Path) -> None:
    session = Session()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "BIASLINT_SERVER_DIR": str(servers)}
    await session.client.start_io(sys.executable, "-m", "biaslint", "lsp", cwd=str(project),
                                   env=env)
    client = session.client
    try:
        await client.initialize_async(types.InitializeParams(
            capabilities=types.ClientCapabilities(), root_uri=from_fs_path(str(project)),
            workspace_folders=[types.WorkspaceFolder(uri=from_fs_path(str(project)),
                                                     name="p")]))
        client.initialized(types.InitializedParams())
        path = project / "model.py"
        uri = from_fs_path(str(path))
        text = path.read_text()
        client.text_document_did_open(types.DidOpenTextDocumentParams(
            text_document=types.TextDocumentItem(uri=uri, language_id="python", version=1,
                                                 text=text)))
        [diag] = await session.next_diagnostics(uri)
        assert diag.code == "BL001" and diag.source == "biaslint", session.logs
        line = text.splitlines()[diag.range.start.line]
        assert "nn.Conv2d(3, 8, 3)" in line[diag.range.start.character:]

        actions = await client.text_document_code_action_async(types.CodeActionParams(
            text_document=types.TextDocumentIdentifier(uri=uri), range=diag.range,
            context=types.CodeActionContext(diagnostics=[diag])))
        [action] = actions
        assert action.kind == types.CodeActionKind.QuickFix and action.edit is not None
        [edit] = action.edit.changes[uri]
        path.write_text(_apply(text, edit))
        assert "nn.Conv2d(3, 8, 3, bias=False)" in path.read_text()
        client.text_document_did_save(types.DidSaveTextDocumentParams(
            text_document=types.TextDocumentIdentifier(uri=uri)))
        assert await session.next_diagnostics(uri) == []

        # A file the target's lint did not read: saving it lints nothing.
        other = from_fs_path(str(project / "other.py"))
        session.received.clear()
        client.text_document_did_save(types.DidSaveTextDocumentParams(
            text_document=types.TextDocumentIdentifier(uri=other)))
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(session.received.wait(), timeout=5)
    finally:
        await client.shutdown_async(None)
        client.exit(None)
        await client.stop()


def _apply(text: str, edit: types.TextEdit) -> str:
    lines = text.splitlines(keepends=True)
    start, end = edit.range.start, edit.range.end
    offset = sum(len(x) for x in lines[:start.line]) + start.character
    stop = sum(len(x) for x in lines[:end.line]) + end.character
    return text[:offset] + edit.new_text + text[stop:]


def test_open_save_diagnostics_and_a_code_action(tmp_path):
    project = _project(_mk(tmp_path / "project"))
    servers = _mk(tmp_path / "servers")
    try:
        asyncio.run(_scenario(project, servers))
    finally:
        subprocess.run([sys.executable, "-m", "biaslint", "server", "stop"], cwd=project,
                       env={**os.environ, "PYTHONPATH": str(ROOT),
                            "BIASLINT_SERVER_DIR": str(servers)},
                       capture_output=True, timeout=60)


def _mk(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def test_a_finding_no_workspace_file_shows_is_placed_or_logged_never_dropped(tmp_path,
                                                                            monkeypatch):
    """A layer built in a library (its line is in site-packages) or with no recorded line: at
    the top of the target's own file, naming where it was built; with no such file, in the
    log."""
    from biaslint.serve.lsp import Linter

    (tmp_path / "model.py").write_text("def build(): ...\n")
    monkeypatch.chdir(tmp_path)
    linter = Linter()
    linter.root = tmp_path.resolve()

    def finding(file, line, module):
        return {"code": "BL001", "message": "cancelled", "severity": "warning", "file": file,
                "line": line, "col": 5, "end_line": line, "module": module, "fix": None}

    results = [
        {"target": "model.py:build", "findings": [
            finding("model.py", 1, "mine"),
            finding("transformers/models/x/modeling_x.py", 158, "encoder.dense"),
            finding(None, None, "nowhere")]},
        {"target": "gone.mod:build", "findings": [finding(None, None, "lost")]},
    ]
    found, unshown = linter.diagnostics(results)
    [shown] = found["model.py:build"].values()
    assert [d.range.start.line for d in shown] == [0, 0, 0]
    assert "built at transformers/models/x/modeling_x.py:158" in shown[1].message
    assert "in nowhere, built at no source line recorded" in shown[2].message
    assert shown[1].data is None  # no edit into a library's file
    assert unshown == ["gone.mod:build: BL001 cancelled (no source line recorded)"]
