"""Shared fixtures: offline hub, a tiny real Llama + byte-level tokenizer saved to disk, the HH-RLHF file."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

from pathlib import Path  # noqa: E402

import torch  # noqa: E402

if not torch.cuda.is_available():  # Triton kernels run in its interpreter on CPU (set before any @triton.jit)
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
HH_FILE = SHARED_DATA / "hh-rlhf-harmless-base-test.jsonl.gz"


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A 'tiny-llama' preset (random init, seed 0) with the byte-level tokenizer, saved as safetensors."""
    from tokendpo.modeling import build_preset

    return build_preset("tiny-llama", tmp_path_factory.mktemp("tiny-llama"), seed=0)


@pytest.fixture(scope="session")
def hh_file() -> Path:
    if not HH_FILE.exists():
        pytest.fail(f"shared HH-RLHF data missing at {HH_FILE}; the project expects ../shared beside the repo")
    return HH_FILE
