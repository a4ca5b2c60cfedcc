"""README stays true: every training key documented (in docs/FLAGS.md, which README points to), the two
fresh-machine commands present, CI runs command (b)."""

import re
import subprocess
from pathlib import Path

from tokendpo.config import key_index

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def block(name):
    m = re.search(rf"<!-- {name} -->\s*```\n(.*?)\n```\s*<!-- /{name} -->", README, re.S)
    assert m, name
    return m.group(1).strip()


def test_every_training_key_is_documented():
    flags = (ROOT / "docs" / "FLAGS.md").read_text()
    missing = [k for k in key_index() if f"`--{k}`" not in flags]
    assert not missing
    assert "docs/FLAGS.md" in README


def test_two_commands_for_a_fresh_machine():
    main, tests = block("main-command"), block("test-command")
    assert "pip install torch==2.13.0" in main and main.endswith("python -m tokendpo.train")
    assert "pytest" in tests and "'.[test]'" in tests
    assert "\n" not in main and "\n" not in tests  # one command line each


def test_ci_runs_the_readme_test_command():
    script = (ROOT / ".ci" / "run").read_text()
    extracted = subprocess.run(
        ["bash", "-c", script.split("cmd=")[1].split("\n")[0].join(["cmd=", '; printf %s "$cmd"'])],
        cwd=ROOT, capture_output=True, text=True).stdout
    assert extracted == block("test-command")
