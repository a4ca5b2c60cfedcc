"""Output directories that runs cannot corrupt: an exclusive lock, the "holds a run" rule, atomic file writes.

- A directory *holds a run* if it has `train_config.yaml`, `metrics.jsonl` or a `checkpoint-*/` directory.
- `OutputLock(dir)` takes an exclusive, non-blocking `flock` on `dir/.tokendpo.lock` and records its pid there.
  A second run into the same dir fails at once with `RunLockedError` naming the holder's pid. The kernel drops an
  flock when its process dies, so the lock file a killed run leaves behind never blocks `--resume_from`.
- `clear_run(dir)` deletes only the files tokendpo writes (never anything else a user keeps there).
- `write_atomic(path, text)` writes a whole file through a temporary file and `os.replace`: a reader (or a crash)
  sees the old file or the new one, never a truncated mix.
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
from pathlib import Path

LOCK_NAME = ".tokendpo.lock"
RUN_MARKERS = ("train_config.yaml", "metrics.jsonl")

# Everything `tokendpo.training.train` writes into its output dir (save_pretrained's model and tokenizer files
# included); `clear_run` deletes these names and nothing else.
_RUN_FILES = RUN_MARKERS + (
    "data_stats.json", "config.json", "generation_config.json", "model.safetensors", "model.safetensors.index.json",
    "adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "tokenizer_config.json",
    "special_tokens_map.json", "chat_template.jinja", "tokenizer.model", "vocab.json", "merges.txt",
    "added_tokens.json",
)  # not README.md: peft writes one with an adapter, but a user's own README.md must never be deleted
_RUN_GLOBS = ("checkpoint-*", ".tmp-checkpoint-*", "model-*-of-*.safetensors", ".tmp-final*", "ref_cache")


class RunLockedError(RuntimeError):
    """Another live process holds the output directory."""


class RunExistsError(ValueError):
    """A fresh run was asked for in a directory that already holds one."""


def holds_run(directory: str | os.PathLike) -> bool:
    d = Path(directory)
    if not d.is_dir():
        return False
    return any((d / m).exists() for m in RUN_MARKERS) or any(p.is_dir() for p in d.glob("checkpoint-*"))


def clear_run(directory: str | os.PathLike) -> list[Path]:
    """Delete tokendpo's files in `directory` (see _RUN_FILES/_RUN_GLOBS); returns what was removed."""
    d = Path(directory)
    removed = [d / n for n in _RUN_FILES if (d / n).exists()]
    for pattern in _RUN_GLOBS:
        removed.extend(d.glob(pattern))
    for p in removed:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()
    return removed


class OutputLock:
    """An exclusive lock on an output dir, held for the life of a run (a context manager).

    The directory is created if needed; when the run fails before writing anything, a directory this lock created
    is removed again on release, so a rejected run leaves no trace."""

    def __init__(self, directory: str | os.PathLike, what: str = "tokendpo run"):
        self.dir = Path(directory)
        self.what = what
        self._fd: int | None = None
        self._created = False

    def acquire(self) -> "OutputLock":
        self._created = not self.dir.exists()
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except FileExistsError:
            raise ValueError(f"output dir {self.dir}: exists and is not a directory") from None
        path = self.dir / LOCK_NAME
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            if e.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise RunLockedError(
                    f"output dir {self.dir} is in use by another {self.what} (pid {holder}); wait for it to "
                    f"finish, or choose another --output_dir") from None
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        os.ftruncate(self._fd, 0)
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None
        lock = self.dir / LOCK_NAME
        if self._created and self.dir.is_dir() and [p.name for p in self.dir.iterdir()] == [LOCK_NAME]:
            lock.unlink(missing_ok=True)
            self.dir.rmdir()

    def __enter__(self) -> "OutputLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def write_atomic(path: str | os.PathLike, data: str | bytes) -> None:
    """Write the whole file at `path` via a temporary sibling and `os.replace` (atomic on one filesystem).

    On any error (a full disk included) the temporary file is removed and the previous file stays intact."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb" if isinstance(data, bytes) else "w") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def describe_os_error(e: OSError, what: str) -> str:
    """One line for an OSError while writing `what`, with a hint for the common cases."""
    if e.errno == errno.ENOSPC:
        return f"{what}: no space left on device ({e.filename or ''}); free disk space and resume"
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"{what}: permission denied ({e.filename or ''})"
    return f"{what}: {e}"


def save_final_atomic(out: str | os.PathLike, save_fn) -> None:
    """Run `save_fn(tmp_dir)` (save_pretrained of model and tokenizer) into a temporary dir inside `out`, then move
    each file into place with `os.replace`: every final file is either the old one or a complete new one, and a
    failed save (a full disk) leaves the previous files and no half-written ones."""
    out = Path(out)
    tmp = out / f".tmp-final-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        save_fn(tmp)
        for p in sorted(tmp.iterdir()):
            if p.is_dir():  # save_pretrained writes files only; a nested dir replaces its old copy whole
                shutil.rmtree(out / p.name, ignore_errors=True)
            os.replace(p, out / p.name)
    except OSError as e:
        raise OSError(e.errno, describe_os_error(e, f"saving the final model in {out}")) from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def continue_flags(directory: str | os.PathLike) -> list[str]:
    """`tokendpo.train` flags for re-running a documented command into `directory`: continue its newest
    checkpoint (`--resume_from latest`), or start afresh when it holds an unfinished run with no checkpoint
    (`--overwrite_output_dir`); nothing for a dir that holds no run."""
    d = Path(directory)
    if any(p.is_dir() for p in d.glob("checkpoint-*")):
        return ["--resume_from", "latest"]
    return ["--overwrite_output_dir"] if holds_run(d) else []
