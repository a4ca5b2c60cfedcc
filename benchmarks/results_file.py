"""`benchmarks/results/NAME.json`: every benchmark's headline figures, in one schema.

    {"rows": [...], "command": "python -m benchmarks.NAME ...", "commit": "<git sha>", "date": "YYYY-MM-DD"}

A file another benchmark adds rows to (`merge_results`, e.g. the real-model search rows of paper_search.json)
also has `"sources": {TASK: {"command", "commit", "date"}}` for those rows.

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
    """Write `{rows, command, commit, date}` to `directory/NAME.json` atomically; returns the path.

    Rows that `merge_results` added for another task survive (with their `sources` entry) unless `rows` has
    rows of that task: a rerun of the main benchmark does not erase a second benchmark's share of the file."""
    directory = Path(directory) if directory is not None else RESULTS_DIR
    path = directory / f"{name}.json"
    payload = {"rows": _finite(list(rows)), "command": command, "commit": git_commit(),
               "date": date.today().isoformat()}
    old = json.loads(path.read_text()) if path.is_file() else {}
    ours = {r.get("task") for r in rows}
    sources = {t: s for t, s in old.get("sources", {}).items() if t not in ours}
    if sources:
        payload["rows"] += [r for r in old["rows"] if r.get("task") in sources]
        payload["sources"] = sources
    return _write(path, payload)


def merge_results(name: str, rows: list[dict], command: str, *, task: str, directory: Path | None = None) -> Path:
    """Replace the rows of `task` in NAME.json by `rows` (every row must have that task), keeping the other rows
    and the file's own command, commit and date; `sources[task]` records this writer's command, commit and date.
    A missing file is created with this writer as its own."""
    if any(r.get("task") != task for r in rows):
        raise ValueError(f"merge_results: every row must have task {task!r}")
    directory = Path(directory) if directory is not None else RESULTS_DIR
    path = directory / f"{name}.json"
    me = {"command": command, "commit": git_commit(), "date": date.today().isoformat()}
    old = json.loads(path.read_text()) if path.is_file() else {"rows": [], **me}
    payload = {**old, "rows": [r for r in old["rows"] if r.get("task") != task] + _finite(list(rows)),
               "sources": {**old.get("sources", {}), task: me}}
    return _write(path, payload)


def _write(path: Path, payload: dict) -> Path:
    """`payload` as JSON at `path`, through a temporary file and `os.replace` (a killed run leaves the old file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(payload, indent=1) + "\n")
    os.replace(tmp, path)
    return path


def read_results(name: str, *, directory: Path | None = None) -> dict:
    path = (Path(directory) if directory is not None else RESULTS_DIR) / f"{name}.json"
    return json.loads(path.read_text())
