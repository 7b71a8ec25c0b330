"""Where a warm server listens, and which server a client may use. No torch here.

A server serves one project (the folder of the configured pyproject.toml, else the working
directory), one Python, one ``sys.path`` and one set of the environment variables that decide
what importing torch does (threads, devices, debug switches). A client whose any of these differ
gets a server of its own: a child forked from a parent that imported torch under other
settings would not behave as a cold process of the client's would.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Mapping, Sequence

from biaslint.settings import CACHE_DIR
from biaslint.version import __version__

# Read when torch, numpy or their thread pools load; a server imported them under its own.
IMPORT_ENV_PREFIXES = ("TORCH", "PYTORCH", "OMP_", "MKL_", "KMP_", "OPENBLAS", "GOTO",
                       "CUDA", "NVIDIA", "HIP", "ROCM", "XLA", "PYTHON", "LD_", "DYLD_",
                       "TRITON", "NUMEXPR", "VECLIB")
# A socket's path must fit sockaddr_un (108 bytes with the terminating zero).
_MAX_SOCKET = 100


def import_env(env: Mapping[str, str]) -> dict[str, str]:
    """The variables of ``env`` that importing torch and its libraries reads."""
    return {k: v for k, v in sorted(env.items()) if k.startswith(IMPORT_ENV_PREFIXES)}


def server_path(path: Sequence[str], cwd: str) -> list[str]:
    """The ``sys.path`` a server imports torch under: the client's, less the working directory
    that ``python -m`` and ``-c`` put first (a child gets the client's whole ``sys.path``, so
    one server serves every folder of a project)."""
    return [p for p in path if p not in ("", cwd)]


def server_key(executable: str, path: Sequence[str], env: Mapping[str, str]) -> str:
    """What makes two clients share a server: the same Python, ``sys.path`` (less the working
    directory), import-time environment and biaslint version."""
    blob = json.dumps([__version__, os.path.realpath(executable),
                       server_path(path, os.getcwd()), import_env(env)])
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def project_folder(start: Path | None = None) -> Path:
    """The folder whose ``.biaslint_cache`` holds the server: the configured project's (the
    pyproject.toml the lint reads, found as ``biaslint.run.config`` finds it), else the working
    directory's."""
    from biaslint.errors import ConfigError
    from biaslint.run.config import find_pyproject

    try:
        found = find_pyproject(start)
    except ConfigError:  # a file the lint will refuse: the lint says so, warm or cold
        found = None
    return found.parent if found is not None else (start or Path.cwd()).resolve()


def server_folder(project: Path) -> Path:
    """``$BIASLINT_SERVER_DIR`` when set (one folder for every project's servers), else the
    project's ``.biaslint_cache``."""
    given = os.environ.get("BIASLINT_SERVER_DIR")
    return Path(given) if given else project / CACHE_DIR


def socket_path(project: Path, key: str) -> Path:
    """``<server folder>/server-<key>.sock``; when that path is too long for a Unix socket, a
    folder of the user's own (mode 0700) under the temporary directory."""
    path = server_folder(project) / f"server-{key}.sock"
    if len(os.fsencode(str(path))) <= _MAX_SOCKET:
        return path
    digest = hashlib.sha256(str(project).encode()).hexdigest()[:12]
    folder = Path(tempfile.gettempdir()) / f"biaslint-{os.getuid()}"
    return folder / f"{digest}-{key}.sock"


def sockets(project: Path) -> list[Path]:
    """The sockets of this project's servers, in its folder and in the temporary-directory
    fallback (``biaslint server status|stop``)."""
    digest = hashlib.sha256(str(project).encode()).hexdigest()[:12]
    fallback = Path(tempfile.gettempdir()) / f"biaslint-{os.getuid()}"
    return sorted([*server_folder(project).glob("server-*.sock"),
                   *fallback.glob(f"{digest}-*.sock")])


def private_folder(folder: Path) -> None:
    """Make ``folder`` (mode 0700 when biaslint creates it). A folder of another user's is
    refused: a socket in it could be theirs."""
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    if folder.stat().st_uid != os.getuid():
        raise PermissionError(f"{folder} belongs to another user")
    ignore = folder / ".gitignore"
    if folder.name == CACHE_DIR and not ignore.exists():
        ignore.write_text("*\n", encoding="utf-8")


def current_key() -> str:
    return server_key(sys.executable, sys.path, os.environ)
