"""Device selection, shared by training and decoding."""

from __future__ import annotations

import torch


def pick_device(name: str) -> torch.device:
    """`auto` → cuda when available, else cpu. Asking for cuda on a machine without it is an error (a ValueError
    the CLIs print as `error: ...`), not a traceback from the first tensor moved there."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise ValueError(f"--device {name!r}: not a device name ({e})") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available on this machine (use --device cpu or auto)")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) here")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"--device {name}: only cpu, cuda[:N] and auto are supported")
    return device
