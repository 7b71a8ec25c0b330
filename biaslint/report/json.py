"""``--format json``: a versioned, documented schema (see README, "JSON output").

Top level: ``{"schema_version": 1, "tool": {...}, "results": [TargetResult...]}``; each result
has ``target``, ``findings``, ``coverage``, ``notes`` and ``error``.
"""

from __future__ import annotations

import json
from typing import Sequence

from biaslint.findings import TargetResult
from biaslint.version import __version__

SCHEMA_VERSION = 1


def render(results: Sequence[TargetResult]) -> str:
    payload = {
        "schema_version": SCHEMA_VERSION,
        "tool": {"name": "biaslint", "version": __version__},
        "results": [r.as_dict() for r in results],
    }
    return json.dumps(payload, indent=2, sort_keys=False)
