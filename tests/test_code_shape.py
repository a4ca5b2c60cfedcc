"""The shape of the code a maintainer must hold in their head: no file over 500 lines, no function over 60.

Rules, checked with `ast` on every .py file (nothing is imported):
- files: every module under kernels/, tokendpo/, search/ and benchmarks/ has at most MAX_FILE_LINES lines;
- functions: every function or method under kernels/, tokendpo/ and search/ (the library; not tests/ nor
  benchmarks/) spans at most MAX_FUNCTION_LINES lines, from its `def` line to its last line (decorators not
  counted; signature and docstring counted), unless its docstring gives the reason it is longer: a paragraph
  starting with the marker `Length:` (e.g. "Length: one Triton program whose accumulators stay in registers"),
  or, equivalently, a sentence starting with `Longer than`.
A function that only grows past the limit should be split into named steps that read as the algorithm; the
marker is for the few whose length is the point (one kernel loop, one training step read top to bottom).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LIBRARY = ("kernels", "tokendpo", "search")
FILE_RULE = LIBRARY + ("benchmarks",)
MAX_FILE_LINES = 500
MAX_FUNCTION_LINES = 60
REASON = re.compile(r"(^|\n)\s*Length:|\bLonger than\b")

# Files and functions left out on purpose, each with why. Keep these short; remove an entry once it is fixed.
FILE_EXCEPTIONS: dict[str, str] = {}
FUNCTION_EXCEPTIONS: dict[tuple[str, str], str] = {}


def long_functions(source: str, limit: int = MAX_FUNCTION_LINES) -> list[tuple[str, int, int]]:
    """(qualified name, first line, length) of each function over `limit` lines without a reason in its
    docstring. Methods and nested functions are named `Outer.inner`."""
    found = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = prefix + child.name
                if not isinstance(child, ast.ClassDef):
                    length = child.end_lineno - child.lineno + 1
                    if length > limit and not REASON.search(ast.get_docstring(child) or ""):
                        found.append((name, child.lineno, length))
                visit(child, name + ".")
            else:
                visit(child, prefix)

    visit(ast.parse(source), "")
    return found


def line_count(source: str) -> int:
    return len(source.splitlines())


def _files(packages) -> list[Path]:
    return [p for pkg in packages for p in sorted((REPO / pkg).rglob("*.py"))]


def test_no_file_over_500_lines():
    over = [f"{p.relative_to(REPO)}: {n} lines" for p in _files(FILE_RULE)
            if (n := line_count(p.read_text())) > MAX_FILE_LINES and str(p.relative_to(REPO)) not in FILE_EXCEPTIONS]
    assert not over, f"files over {MAX_FILE_LINES} lines (move a cohesive part into its own module):\n" + \
        "\n".join(over)


def test_no_library_function_over_60_lines_without_a_reason():
    over = []
    for p in _files(LIBRARY):
        rel = str(p.relative_to(REPO))
        over += [f"{rel}:{line} {name}: {n} lines" for name, line, n in long_functions(p.read_text())
                 if (rel, name) not in FUNCTION_EXCEPTIONS]
    assert not over, (f"functions over {MAX_FUNCTION_LINES} lines with no `Length:` reason in their docstring "
                      f"(split them into named steps, or say why):\n" + "\n".join(over))


def test_the_checks_can_fail():
    """The checker on fresh synthetic sources: a function of limit + 1 lines is flagged, one of exactly the limit
    or with a `Length:` paragraph (or a `Longer than` sentence) is not; methods and nested functions are seen."""
    def function(name: str, lines: int, doc: str | None = None, indent: str = "") -> str:
        body = [f'{indent}    """{doc}"""'] if doc else []
        body += [f"{indent}    x{i} = {i}" for i in range(lines - 1 - len(body))]
        return "\n".join([f"{indent}def {name}():"] + body) + "\n"

    limit = 7
    assert long_functions(function("at_limit", limit), limit) == []
    assert long_functions(function("over", limit + 1), limit) == [("over", 1, limit + 1)]
    assert long_functions(function("why", limit + 5, "Steps.\n\n    Length: one loop."), limit) == []
    assert long_functions(function("why2", limit + 5, "Longer than usual on purpose."), limit) == []
    assert long_functions(function("vague", limit + 5, "A long function."), limit) == [("vague", 1, limit + 5)]
    method = "class A:\n" + function("m", limit + 2, indent="    ")
    assert long_functions(method, limit) == [("A.m", 2, limit + 2)]
    nested = "def outer():\n" + function("inner", limit + 1, indent="    ")
    assert [n for n, _, _ in long_functions(nested, limit)] == ["outer", "outer.inner"]
    assert line_count("a\n" * (MAX_FILE_LINES + 1)) == MAX_FILE_LINES + 1
