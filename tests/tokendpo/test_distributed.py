"""torchrun on CPU (gloo), 2 processes, against one process at the same global batch.

- DDP with gradient accumulation ends on the 1-process weights, with exactly one gradient all-reduce per
  optimizer step (counted by a DDP comm hook), and destroys its process group when training ends.
- FSDP2 shards every decoder layer, then the root: each rank stores about half of every parameter, and while a
  layer runs forward the other layers stay sharded. A run that fails mid-training destroys its process group,
  and its checkpoint resumes in one process onto the 1-process trajectory and weights.

The 2-process runs launch this file as the torchrun worker (`python -m tests.tokendpo.test_distributed`, see
`worker` below): it wraps `tokendpo.distributed.wrap` to record what each rank holds, then calls the library's
`train(cfg)` and writes one JSON per rank. AdamW's ε = 1e-3 in every run keeps the update linear in tiny
gradients, so fp32 summation-order noise (~1e-7) stays ~1e-7 in the weights instead of flipping the sign of a
near-zero Adam step.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.tokendpo.test_train import write_pairs

REPO = Path(__file__).resolve().parents[2]
N_STEPS = 4


def free_port() -> int:
    """A TCP port the OS reports free now: torchrun's rendezvous store listens there (a fixed or pid-derived port
    can be taken by another process, and workers then wait on the wrong store until the timeout)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(nproc, module_args):
    if nproc == 1:
        cmd = [sys.executable, "-m", *module_args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
               "--master_addr", "127.0.0.1", "--master_port", str(free_port()), "-m", *module_args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, cwd=REPO)
    assert res.returncode == 0, res.stderr[-4000:]
    return res


def train_flags(model_dir, data, out, *extra):
    return ["--model", str(model_dir), "--dataset", str(data), "--output_dir", str(out), "--max_length", "64",
            "--max_prompt_length", "32", "--learning_rate", "1e-3", "--adam_epsilon", "1e-3", "--seed", "2",
            "--progress", "false", "--kernel", "chunked", "--max_steps", str(N_STEPS), *extra]


def run_one(model_dir, data, out, *extra):
    """`python -m tokendpo.train` in one process → metrics.jsonl rows."""
    _launch(1, ["tokendpo.train", *train_flags(model_dir, data, out, *extra)])
    return rows_of(out)


def run_two(model_dir, data, out, record, *extra, fail_at_forward=0):
    """The worker below on 2 processes → (its per-rank records, stderr)."""
    record.mkdir(parents=True, exist_ok=True)
    res = _launch(2, ["tests.tokendpo.test_distributed", str(record), str(fail_at_forward),
                      *train_flags(model_dir, data, out, *extra)])
    return [json.loads((record / f"rank{r}.json").read_text()) for r in range(2)], res.stderr


def rows_of(out):
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def assert_same_trajectory(rows, ref_rows):
    assert [r["step"] for r in rows] == [r["step"] for r in ref_rows]
    for key in ("loss", "rewards/margins", "logps/chosen", "grad_norm"):
        assert [r[key] for r in rows] == pytest.approx([r[key] for r in ref_rows], abs=1e-5, rel=1e-5), key


def assert_same_weights(path, ref_path, init_path):
    import torch
    from safetensors.torch import load_file

    got, ref, init = load_file(str(path)), load_file(str(ref_path)), load_file(str(init_path))
    assert got.keys() == ref.keys()
    moved = max(float((ref[k] - init[k]).abs().max()) for k in ref)
    assert moved > 1e-3, "training did not move the weights; the comparison would be vacuous"
    for k in ref:
        torch.testing.assert_close(got[k], ref[k], atol=1e-5, rtol=1e-4, msg=k)


def n_layers(model_dir):
    return json.loads((model_dir / "config.json").read_text())["num_hidden_layers"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_pairs(tmp_path_factory.mktemp("d") / "p.jsonl", n=16, seed=9)


@pytest.fixture(scope="module")
def single(tiny_model_dir, data, tmp_path_factory):
    """1 process × batch 4: the reference trajectory and weights."""
    out = tmp_path_factory.mktemp("single")
    return run_one(tiny_model_dir, data, out, "--per_device_train_batch_size", "4"), out


@pytest.fixture(scope="module")
def fsdp_failed(tiny_model_dir, data, tmp_path_factory):
    """2 processes × batch 2 under FSDP2, checkpoint every 2 steps, made to fail at its 4th forward (step 4)."""
    tmp = tmp_path_factory.mktemp("fsdp")
    recs, stderr = run_two(tiny_model_dir, data, tmp / "out", tmp / "rec", "--per_device_train_batch_size", "2",
                           "--parallel", "fsdp", "--save_steps", "2", fail_at_forward=4)
    return recs, stderr, tmp / "out"


def test_ddp_accumulation_matches_one_process_with_one_allreduce_per_step(tiny_model_dir, data, single, tmp_path):
    """2 processes × batch 1 × accumulation 2 against 1 process × batch 4 (global batch 4 both, the same pairs in
    each step): the same losses and final weights, and DDP all-reduced gradients once per optimizer step, not once
    per micro-batch. Syncing only the first micro-batch, or none, would leave rank 0 with its own gradients."""
    single_rows, single_out = single
    recs, stderr = run_two(tiny_model_dir, data, tmp_path / "out", tmp_path / "rec", "--per_device_train_batch_size",
                           "1", "--gradient_accumulation_steps", "2", "--parallel", "ddp")
    assert_same_trajectory(rows_of(tmp_path / "out"), single_rows)
    assert_same_weights(tmp_path / "out" / "model.safetensors", single_out / "model.safetensors",
                        tiny_model_dir / "model.safetensors")
    assert "fsdp:" not in stderr
    for rec in recs:
        assert rec["optimizer_steps"] == N_STEPS
        calls = rec["allreduce_calls"]  # (optimizer steps taken before the call, bucket index)
        buckets = sorted({b for _, b in calls})
        assert buckets and buckets == list(range(len(buckets))), calls
        for b in buckets:
            assert [s for s, bb in calls if bb == b] == list(range(N_STEPS)), calls
        assert "error" not in rec
        assert rec["group_initialized_after"] is False, "train() left its process group alive"


def test_fsdp_shards_every_decoder_layer(tiny_model_dir, fsdp_failed):
    """Each rank's local parameter storage is about half the model (dim 0 of every parameter split in two; the
    two ranks' shards add up to the whole). While decoder layer i runs forward, every other layer is still
    sharded; with only the root sharded, the whole model would be gathered at once."""
    recs, stderr, _ = fsdp_failed
    assert [x for x in stderr.splitlines() if x.startswith("fsdp:")] == \
        [f"fsdp: sharded {n_layers(tiny_model_dir)} decoder layers"], stderr[-2000:]
    full = recs[0]["full_numel"]
    assert full == recs[1]["full_numel"] > 0
    assert recs[0]["local_numel"] + recs[1]["local_numel"] == full
    for rec in recs:
        assert rec["all_dtensor"], "a parameter was left unsharded"
        assert 0.45 < rec["local_numel"] / full < 0.55, rec
        seen = [e["layer"] for e in rec["layer_forwards"]]
        assert sorted(set(seen)) == list(range(n_layers(tiny_model_dir))), seen
        for e in rec["layer_forwards"]:
            assert e["others_sharded"], e
            assert e["unsharded_numel"] < full, e


def test_fsdp_failure_shuts_down_and_resumes_in_one_process(tiny_model_dir, data, single, fsdp_failed, tmp_path):
    """The FSDP run failed at step 4: both ranks destroyed the process group on the way out, rows 1-3 follow the
    1-process trajectory, and one process resumes checkpoint-2 (accumulation 2 keeps the global batch of 4) to
    the 1-process trajectory and weights."""
    single_rows, single_out = single
    recs, _, failed_out = fsdp_failed
    for rec in recs:
        assert rec["error"] == "RuntimeError: injected failure", rec
        assert rec["group_initialized_after"] is False, "the failed run left its process group alive"
    assert_same_trajectory(rows_of(failed_out), single_rows[:N_STEPS - 1])
    assert sorted(p.name for p in failed_out.glob("checkpoint-*")) == ["checkpoint-2"]
    out = tmp_path / "resumed"
    shutil.copytree(failed_out, out)
    rows = run_one(tiny_model_dir, data, out, "--resume_from", "latest")
    assert_same_trajectory(rows, single_rows)
    assert_same_weights(out / "model.safetensors", single_out / "model.safetensors",
                        tiny_model_dir / "model.safetensors")


def test_decoder_layers_are_the_no_split_classes(tiny_model_dir):
    """In one process: the FSDP units are the instances of the classes `_no_split_modules` names, found through the
    PolicyLogps wrapper, outermost only (a named class nested in another named one is not a unit of its own)."""
    import torch

    from tokendpo.distributed import decoder_layers
    from tokendpo.logps import PolicyLogps
    from tokendpo.modeling import load_model

    model = load_model(str(tiny_model_dir))
    layers = decoder_layers(PolicyLogps(model))
    assert [id(m) for m in layers] == [id(m) for m in model.model.layers]
    assert len(layers) == n_layers(tiny_model_dir)

    class Inner(torch.nn.Linear):
        pass

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = Inner(3, 3)

    class Net(torch.nn.Module):
        _no_split_modules = ["Block", "Inner"]

        def __init__(self):
            super().__init__()
            self.blocks = torch.nn.ModuleList([Block(), Block()])
            self.head = Inner(3, 3)

    net = Net()
    assert [id(m) for m in decoder_layers(net)] == [id(net.blocks[0]), id(net.blocks[1]), id(net.head)]
    assert decoder_layers(torch.nn.Sequential(torch.nn.Linear(2, 2))) == []


# ---------------------------------------------------------------------------------------------- torchrun worker

def worker(record_dir: Path, fail_at_forward: int, argv: list[str]) -> None:
    """One rank: instrument `distributed.wrap`, run `train(cfg)` (failing at the `fail_at_forward`-th micro-batch
    forward when > 0), and write record_dir/rank{r}.json."""
    import torch
    import torch.distributed as dist
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook
    from torch.distributed.tensor import DTensor
    from torch.optim.optimizer import register_optimizer_step_post_hook

    from tokendpo import config as config_mod
    from tokendpo import distributed, training

    rec: dict = {"layer_forwards": [], "allreduce_calls": [], "optimizer_steps": 0}

    def count_step(_opt, _args, _kwargs):
        rec["optimizer_steps"] += 1

    register_optimizer_step_post_hook(count_step)
    wrap = distributed.wrap

    def instrumented_wrap(model, d, mode):
        wrapped = wrap(model, d, mode)
        if mode == "fsdp":
            params = list(wrapped.parameters())
            rec["all_dtensor"] = all(isinstance(p, DTensor) for p in params)
            rec["full_numel"] = sum(p.numel() for p in params)  # a DTensor's numel is the global one
            rec["local_numel"] = sum((p.to_local() if isinstance(p, DTensor) else p).numel() for p in params)
            layers = list(model.model.model.layers)  # PolicyLogps → LlamaForCausalLM → LlamaModel

            def before_layer(i):
                def hook(_module, _args):  # runs after FSDP's own pre-forward hook has gathered layer i
                    rec["layer_forwards"].append({
                        "layer": i,
                        "others_sharded": all(isinstance(p, DTensor) for j, lay in enumerate(layers) if j != i
                                              for p in lay.parameters()),
                        "unsharded_numel": sum(p.numel() for p in wrapped.parameters()
                                               if not isinstance(p, DTensor)),
                    })
                return hook

            for i, layer in enumerate(layers):
                layer.register_forward_pre_hook(before_layer(i))
        elif isinstance(wrapped, torch.nn.parallel.DistributedDataParallel):
            def counting_allreduce(state, bucket):
                rec["allreduce_calls"].append((rec["optimizer_steps"], bucket.index()))
                return allreduce_hook(state, bucket)

            wrapped.register_comm_hook(None, counting_allreduce)
        return wrapped

    distributed.wrap = instrumented_wrap
    pair_forward, forwards = training.pair_forward, [0]

    def failing_pair_forward(*args, **kwargs):
        forwards[0] += 1
        if forwards[0] == fail_at_forward:
            raise RuntimeError("injected failure")
        return pair_forward(*args, **kwargs)

    training.pair_forward = failing_pair_forward
    try:
        training.train(config_mod.resolve(argv))
    except RuntimeError as e:
        rec["error"] = f"{type(e).__name__}: {e}"
    rec["group_initialized_after"] = dist.is_initialized()
    (record_dir / f"rank{os.environ['RANK']}.json").write_text(json.dumps(rec))


if __name__ == "__main__":
    worker(Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3:])
