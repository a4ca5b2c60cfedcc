"""`benchmarks/results/NAME.json`: every benchmark's headline figures, in one schema.

    {"rows": [...], "command": "python -m benchmarks.NAME ...", "commit": "<git sha>", "date": "YYYY-MM-DD"}

Rows carry their own keys (each benchmark documents them); every rate in a row carries its 95 % interval and n.
Written through a temporary file and `os.replace`, so a killed run leaves the previous file intact. Quick and
dry-run modes never call `write_results` (they are checks, not results).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from datetime import date
from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def git_commit() -> str:
    """The checkout's HEAD (with `+dirty` when tracked files differ), or "unknown" outside git."""
    root = Path(__file__).resolve().parents[1]
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "diff", "--quiet", "HEAD"], cwd=root).returncode != 0
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return sha + ("+dirty" if dirty else "")


def command_line(module: str, argv: list[str] | None) -> str:
    args = sys.argv[1:] if argv is None else argv
    return " ".join(["python", "-m", module, *args])


def _finite(x):
    """JSON has no NaN/inf: they become null, so the file stays valid JSON for every reader."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    return x


def write_results(name: str, rows: list[dict], command: str, *, directory: Path | None = None) -> Path:
    """Write `{rows, command, commit, date}` to `directory/NAME.json` atomically; returns the path."""
    directory = Path(directory) if directory is not None else RESULTS_DIR
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.json"
    payload = {"rows": _finite(list(rows)), "command": command, "commit": git_commit(),
               "date": date.today().isoformat()}
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(payload, indent=1) + "\n")
    os.replace(tmp, path)
    return path


def read_results(name: str, *, directory: Path | None = None) -> dict:
    path = (Path(directory) if directory is not None else RESULTS_DIR) / f"{name}.json"
    return json.loads(path.read_text())
