"""benchmarks/bench_logprobs --quick: it runs, checks chunked == naive, and the rows it returns hold a measured
peak for every impl × mode, with chunked's fwd+bwd peak below naive's. Nothing here reads a time: the verdicts
rest on returned numbers (memory, agreement), never on speed or a printed timing."""

from benchmarks import bench_logprobs


def test_bench_logprobs_quick(capsys):
    rows = bench_logprobs.main(["--quick"])
    text = capsys.readouterr().out
    assert "agree on logps, d_hidden, d_weight" in text  # check_chunked_equals_naive raised otherwise
    assert "# command: python -m benchmarks.bench_logprobs --quick" in text and "GPU speed is unmeasured" in text
    (shape,) = bench_logprobs.QUICK_CONFIGS
    assert all((r["N"], r["V"], r["H"]) == shape for r in rows)
    peaks = {(r["impl"], r["mode"]): r["peak"] for r in rows}
    assert set(peaks) == {(i, m) for i in ("naive", "chunked") for m in ("fwd", "fb")}
    assert all(isinstance(p, int) and p >= 0 for p in peaks.values()), peaks  # bytes, from fresh subprocesses
    assert peaks[("chunked", "fb")] < peaks[("naive", "fb")], peaks
