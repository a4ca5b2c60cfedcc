"""benchmarks/gpu_check --dry_run end to end on CPU (tiny shapes, Triton in its interpreter): every check runs and
agrees, the outputs have the documented rows, and nothing is written under benchmarks/results/. Asserts on the
returned and written outputs only, never on a time."""

import json
import re
from pathlib import Path

import pytest

from benchmarks import gpu_check

RESULTS = Path(gpu_check.__file__).resolve().parent / "results"


def _snapshot(d: Path) -> dict:
    return {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in d.rglob("*")} if d.exists() else {}


@pytest.mark.slow
def test_dry_run_end_to_end(tmp_path):
    before = _snapshot(RESULTS)
    assert gpu_check.main(["--dry_run", "--out_dir", str(tmp_path)]) == 0
    assert _snapshot(RESULTS) == before  # --dry_run never writes under benchmarks/results/
    result = json.loads((tmp_path / "gpu_check.json").read_text())
    assert set(result) >= {"rows", "command", "commit", "date"}
    assert result["command"] == "python -m benchmarks.gpu_check --dry_run"
    assert result["verdicts"] == {k: "ok" for k in ("kernel_tests", "logprobs", "train", "decode")}
    rows = result["rows"]
    assert all(set(gpu_check.ROW_KEYS) <= set(r) for r in rows)
    by_check = {}
    for r in rows:
        by_check.setdefault(r["check"], []).append(r)
    assert set(by_check) == {"kernel_tests", "logprobs_fb", "logprobs_fb_softcap", "train", "decode"}
    (kt,) = by_check["kernel_tests"]
    assert re.fullmatch(r"[1-9]\d* passed, 0 failed", kt["shape"]), kt
    fused = by_check["logprobs_fb"] + by_check["logprobs_fb_softcap"]
    assert {(r["impl"], r["dtype"]) for r in by_check["logprobs_fb"]} == {
        (i, d) for i in ("triton", "naive") for d in ("bfloat16", "float32")}
    assert all(r["max_abs_err"] is not None and r["max_abs_err"] < 1e-4 for r in fused), fused
    train = {r["impl"]: r for r in by_check["train"]}
    assert set(train) == {"triton", "naive"}
    plan = gpu_check.dry_plan()
    assert len(train["triton"]["losses"]) == len(train["naive"]["losses"]) == plan.train_steps
    diff = max(abs(a - b) for a, b in zip(train["triton"]["losses"], train["naive"]["losses"]))
    assert diff <= gpu_check.LOSS_TOL_FP32 and train["triton"]["max_abs_err"] == pytest.approx(diff, abs=1e-6)
    decode = {r["impl"]: r for r in by_check["decode"]}
    assert set(decode) == {"greedy", "beam4"}
    for r in decode.values():
        generated = int(re.search(r"\((\d+) generated\)", r["shape"])[1])
        assert 0 < generated <= plan.decode_prompts * plan.decode_tokens
    md = (tmp_path / "RESULTS_gpu.md").read_text()
    assert "**Dry run**" in md and md.count("\n| ") == len(rows) + 1  # header + one table line per row


def test_dry_run_refuses_to_write_under_results(capsys):
    assert gpu_check.main(["--dry_run", "--out_dir", str(RESULTS / "x")]) == 2
    assert "never writes under benchmarks/results/" in capsys.readouterr().err


def test_full_run_without_cuda_is_a_clear_error(capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the full run would start")
    assert gpu_check.main([]) == 2
    assert "error: no CUDA device here" in capsys.readouterr().err
