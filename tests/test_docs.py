"""Docs that cannot drift: docs/FLAGS.md equals what the config dataclasses and the decode parser generate, and
every repository path that README.md or docs/*.md cites exists."""

import re
from pathlib import Path

from search.docgen import FLAGS_MD, render

ROOT = Path(__file__).resolve().parents[1]
TOP = ("kernels/", "tokendpo/", "search/", "benchmarks/", "tests/", "docs/", ".ci/")
# a path-like token: a top-level package dir, then path characters; `outputs/` is written by runs, not cited code
PATH_RE = re.compile(r"(?<![\w./-])((?:%s)[\w./*-]*)" % "|".join(re.escape(t) for t in TOP))


def cited_paths(text: str) -> set[str]:
    found = set()
    for m in PATH_RE.finditer(text):
        p = m.group(1).rstrip(".,:;)")
        p = p.split("::")[0]
        if p:
            found.add(p)
    return found


def test_flags_doc_is_generated_from_the_code():
    assert FLAGS_MD.read_text() == render(), "docs/FLAGS.md is stale: run `python -m search.docgen`"


def test_every_cited_repository_path_exists():
    docs = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    missing = []
    for doc in docs:
        for p in sorted(cited_paths(doc.read_text())):
            if "*" in p or "{" in p:
                ok = any(ROOT.glob(p)) or any(ROOT.glob(p.split("*")[0] + "*"))
            else:
                ok = (ROOT / p).exists() or (ROOT / f"{p}.py").exists()  # a module named without .py
            if not ok:
                missing.append(f"{doc.relative_to(ROOT)}: {p}")
    assert not missing, "cited paths that do not exist:\n" + "\n".join(missing)


def test_the_path_finder_finds_paths():
    text = "see `tokendpo/train.py`, [x](benchmarks/RESULTS.md) and tests/kernels/test_logprobs.py::test_a."
    assert cited_paths(text) == {"tokendpo/train.py", "benchmarks/RESULTS.md", "tests/kernels/test_logprobs.py"}


def test_readme_results_table_is_generated_from_the_results_files():
    from benchmarks.headlines import render as render_table

    text = (ROOT / "README.md").read_text()
    block = text.split("<!-- results-table -->\n", 1)[1].split("<!-- /results-table -->", 1)[0]
    assert block == render_table(), "README's results table is stale: paste `python -m benchmarks.headlines`"


def test_readme_is_short_and_keeps_its_two_commands():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 300
    for marker in ("main-command", "test-command"):
        assert text.count(f"<!-- {marker} -->") == 1 and text.count(f"<!-- /{marker} -->") == 1
