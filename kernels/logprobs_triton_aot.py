"""Ahead-of-time compilation of the log-prob kernels for Hopper (sm_90), no GPU needed.

The interpreter runs kernels as Python and accepts code the compiler rejects, so every kernel × dtype is
also compiled here for `GPUTarget("cuda", 90, 32)` with the launchers' block sizes; the report gives
registers, shared memory and spills (read from the cubin with the cuobjdump that ships with Triton) and
whether the tile products became `wgmma` instructions.

    python -m kernels.logprobs_triton_aot            # table of all variants (also used by the benchmark)

Run it in a process without TRITON_INTERPRET: in the interpreter the kernels are not JIT functions.
"""

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import triton
from triton.backends.compiler import GPUTarget

from kernels import logprobs_triton as lt
from kernels.head import IDENTITY, LINEAR, SOFTCAP

KERNELS = {"fwd": lt._fwd_kernel, "bwd_dh": lt._bwd_dh_kernel, "bwd_dw": lt._bwd_dw_kernel,
           "bwd_dz": lt._bwd_dz_kernel}
DTYPES = {"fp32": "tf32x3", "bf16": "tf32", "fp16": "tf32"}  # pointer dtype → tl.dot input precision
INPUT_PTRS = {"h_ptr", "w_ptr", "b_ptr", "rh_ptr", "rw_ptr", "rb_ptr", "dz_ptr"}  # dz: the GEMM operand
HOPPER = GPUTarget("cuda", 90, 32)


def variants():
    """(kernel, dtype, flags) for every kernel and dtype: all flags on (every code path: bias, entropy, KL,
    transformed heads on both sides — soft-capped policy and scaled reference in fwd / bwd_dh, the other way
    round in bwd_dw / bwd_dz — and the forward's log Σp², mean logit and is-top-1), and for the
    tensor-core dtypes the plain DPO path (no bias, no entropy, no KL, an untransformed head) and the Gemma-2
    DPO path ("softcap": the plain path through a soft-capped head)."""
    for name in KERNELS:
        for dt in DTYPES:
            yield name, dt, "all"
            if dt != "fp32":
                yield name, dt, "plain"
                yield name, dt, "softcap"


def compile_for_hopper(name: str, dtype: str, flags: str = "all", block_ho: int = lt.MAX_BLOCK_HO):
    """triton.compile one kernel variant for sm_90; returns the CompiledKernel."""
    kernel = KERNELS[name]
    on = flags == "all"
    blocks = dict(lt.FWD_BLOCKS if name == "fwd" else lt.BWD_BLOCKS)
    options = {"num_warps": blocks.pop("num_warps"), "num_stages": blocks.pop("num_stages")}
    head = ref_head = SOFTCAP if flags == "softcap" else IDENTITY
    if on:  # every head branch compiled somewhere: soft-capped policy + scaled reference, and the other way round
        head, ref_head = (SOFTCAP, LINEAR) if name in ("fwd", "bwd_dh") else (LINEAR, SOFTCAP)
    constexprs = dict(HAS_BIAS=on, ENTROPY=on, KL=on, REF_HAS_BIAS=on, HEAD=head, REF_HEAD=ref_head, UPCAST=False,
                      PREC=DTYPES[dtype], **blocks)
    if name == "fwd":
        constexprs.update(LSQ=on, MEAN=on, TOP1=on)
    if name in ("bwd_dh", "bwd_dw"):
        constexprs["BLOCK_HO"] = block_ho
    signature = {}
    for arg in kernel.arg_names:
        if arg in constexprs:
            signature[arg] = "constexpr"
        elif arg == "t_ptr":
            signature[arg] = "*i64"
        elif arg == "top1_ptr":
            signature[arg] = "*i8"
        elif arg in INPUT_PTRS:
            signature[arg] = "*" + dtype
        elif arg.endswith("_ptr"):
            signature[arg] = "*fp32"  # outputs, saved lse, incoming gradients and head factors: fp32
        else:
            signature[arg] = "i32"
    src = triton.compiler.ASTSource(fn=kernel, signature=signature, constexprs=constexprs)
    return triton.compile(src, target=HOPPER, options=options)


def resources(compiled, spills: bool = True) -> dict:
    """Registers and stack frame from the cubin, shared memory from the metadata, spills from `ptxas -v`."""
    cuobjdump = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(compiled.asm["cubin"])
        f.flush()
        text = subprocess.run([str(cuobjdump), "--dump-resource-usage", f.name],
                              capture_output=True, text=True, check=True).stdout
    usage = dict(re.findall(r"(REG|STACK|SHARED|LOCAL):(\d+)", text))
    ptx = compiled.asm["ptx"]
    row = {"registers": int(usage["REG"]), "shared_bytes": compiled.metadata.shared + int(usage["SHARED"]),
           "stack_bytes": int(usage["STACK"]), "wgmma": "wgmma" in ptx, "num_warps": compiled.metadata.num_warps}
    if spills:  # ptxas -v on the same PTX: "N bytes spill stores, M bytes spill loads"
        log = ""
        with tempfile.NamedTemporaryFile(suffix=".ptx", mode="w") as f:
            f.write(ptx)
            f.flush()
            for ptxas in ("ptxas-blackwell", "ptxas"):  # Triton 3.9 emits PTX 9.x, which the newer one reads
                run = subprocess.run([str(cuobjdump.parent / ptxas), "-arch=sm_90a", "-v", "-o", os.devnull,
                                      f.name], capture_output=True, text=True)
                if run.returncode == 0:
                    log = run.stderr
                    break
        found = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log)
        row["spill_stores"], row["spill_loads"] = (int(found[1]), int(found[2])) if found else (-1, -1)
    return row


def report(flag_sets=("all", "plain", "softcap"), spills=True) -> list:
    rows = []
    for name, dtype, flags in variants():
        if flags in flag_sets:
            rows.append({"kernel": name, "dtype": dtype, "flags": flags,
                         **resources(compile_for_hopper(name, dtype, flags), spills)})
    return rows


def report_in_subprocess(*extra_args: str, timeout: float = 600) -> list:
    """The report from a fresh interpreter without TRITON_INTERPRET (tests and benchmarks run with it)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # Triton 3.9's default, stated to silence its warning
    out = subprocess.run([sys.executable, "-m", "kernels.logprobs_triton_aot", "--json", *extra_args], env=env,
                         capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        raise RuntimeError(f"AOT compile for Hopper failed:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def format_table(rows) -> str:
    head = (f"{'kernel':8} {'dtype':5} {'flags':7} {'warps':>5} {'regs':>5} {'shared B':>9} {'stack B':>8} "
            f"{'spill st/ld B':>14} {'wgmma':>6}")
    lines = [head] + [f"{r['kernel']:8} {r['dtype']:5} {r['flags']:7} {r['num_warps']:5d} {r['registers']:5d} "
                      f"{r['shared_bytes']:9d} {r['stack_bytes']:8d} "
                      f"{str(r.get('spill_stores', '?')) + '/' + str(r.get('spill_loads', '?')):>14} "
                      f"{str(r['wgmma']):>6}" for r in rows]
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print the rows as one JSON line")
    parser.add_argument("--all-flags-only", action="store_true",
                        help="only the all-flags variant of each kernel × dtype, without ptxas spill counts (tests)")
    args = parser.parse_args()
    if lt.interpreted():
        sys.exit("unset TRITON_INTERPRET: the interpreter's kernels cannot be compiled")
    rows = report(("all",), spills=False) if args.all_flags_only else report()
    print(json.dumps(rows) if args.json else format_table(rows))


if __name__ == "__main__":
    main()
