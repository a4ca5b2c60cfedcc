"""Reading rows: JSON / JSON Lines files (.gz ok) parsed here with exact line numbers; parquet, csv, saved
datasets and hub ids through `datasets`; a local dir resolved into per-split files with `datasets`' patterns.

Every reader yields (source, row) where source is `FILE:LINE` (1-based) or `NAME:INDEX` (0-based row index)
and row is a dict, or a `DataError` for a bad row (the caller raises or skips it). Whole-file problems raise.
"""

from __future__ import annotations

import gzip
import itertools
import json
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

JSON_SUFFIXES = (".json", ".jsonl")
DATASETS_SUFFIXES = (".parquet", ".csv")


class DataError(ValueError):
    """A bad row or file: `FILE:LINE: field 'X': reason`."""

    def __init__(self, source: str, field: str, reason: str):
        self.source, self.field, self.reason = source, field, reason
        super().__init__(f"{source}: field '{field}': {reason}")


def _open_lines(path: Path) -> Iterator[bytes]:
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rb") as f:
        yield from f


def _read_json_file(path: Path, name: str) -> Iterator[tuple[str, Any]]:
    """(`name:LINE`, row dict or DataError) per row of a JSON Lines file, or of a .json file holding an array."""
    line = 0
    try:
        lines = _open_lines(path)
        first = next(lines, b"")
        if path.name.removesuffix(".gz").endswith(".json") and first.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"["):
            yield from _read_json_array(first + b"".join(lines), name)
            return
        for line, raw in enumerate(itertools.chain([first], lines), 1):
            try:
                text = raw.decode("utf-8-sig" if line == 1 else "utf-8")
            except UnicodeDecodeError as e:
                yield f"{name}:{line}", DataError(f"{name}:{line}", "<row>", f"invalid UTF-8 (byte "
                                                  f"0x{e.object[e.start]:02x} at byte {e.start + 1} of the line)")
                continue
            if text.strip():  # blank lines are not rows
                yield f"{name}:{line}", _parse_json_row(text.strip(), f"{name}:{line}")
    except (EOFError, OSError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
        raise DataError(f"{name}:0", "<file>", f"cannot read past line {line}: {type(e).__name__}: {e} "
                                               "(corrupt or truncated file?)") from None


def _parse_json_row(text: str, src: str) -> Any:
    try:
        row = json.loads(text)
    except json.JSONDecodeError as e:
        hint = " (the line ends early: truncated?)" if e.pos >= len(text) or e.msg.startswith("Unterminated") else ""
        return DataError(src, "<row>", f"invalid JSON: {e.msg} at column {e.colno}{hint}")
    except RecursionError:
        return DataError(src, "<row>", "invalid JSON: nested too deeply")
    if not isinstance(row, dict):
        return DataError(src, "<row>", f"expected a JSON object, got {type(row).__name__}")
    return row


def _read_json_array(data: bytes, name: str) -> Iterator[tuple[str, Any]]:
    """Rows of a JSON array with the line each element starts on. Syntax errors end the file (no resync)."""
    try:
        s = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise DataError(f"{name}:{line}", "<row>", f"invalid UTF-8 (byte 0x{e.object[e.start]:02x})") from None
    dec, n = json.JSONDecoder(), len(s)

    def skip_ws(i: int) -> int:
        while i < n and s[i] in " \t\r\n":
            i += 1
        return i

    def fail(i: int, reason: str) -> DataError:
        return DataError(f"{name}:{s.count(chr(10), 0, i) + 1}", "<row>", reason)

    i, line, last = skip_ws(skip_ws(0) + 1), 1, 0
    if i < n and s[i] == "]":  # an empty array
        if skip_ws(i + 1) < n:
            raise fail(skip_ws(i + 1), "invalid JSON: extra data after the closing ']'")
        return
    while i < n:
        line, last = line + s.count("\n", last, i), i
        try:
            row, i = dec.raw_decode(s, i)
        except json.JSONDecodeError as e:
            hint = " (file ends early: truncated?)" if e.pos >= n or e.msg.startswith("Unterminated") else ""
            raise fail(e.pos, f"invalid JSON: {e.msg}{hint}") from None
        except RecursionError:
            raise fail(i, "invalid JSON: nested too deeply") from None
        yield f"{name}:{line}", row if isinstance(row, dict) else DataError(
            f"{name}:{line}", "<row>", f"expected a JSON object, got {type(row).__name__}")
        i = skip_ws(i)
        if i < n and s[i] == ",":
            i = skip_ws(i + 1)
        elif i < n and s[i] == "]":
            if skip_ws(i + 1) < n:
                raise fail(skip_ws(i + 1), "invalid JSON: extra data after the closing ']'")
            return
        else:
            raise fail(i, "invalid JSON: expected ',' or ']' after an array element (file ends early: truncated?)")
    raise fail(n, "invalid JSON: unterminated array (file ends early: truncated?)")


def _read_with_datasets(ds, name: str) -> Iterator[tuple[str, Any]]:
    for i, row in enumerate(ds):
        yield f"{name}:{i}", row


def _read_file(path: Path, name: str) -> Iterator[tuple[str, Any]]:
    suffix = path.name.removesuffix(".gz")
    if suffix.endswith(JSON_SUFFIXES):
        yield from _read_json_file(path, name)
    elif suffix.endswith(DATASETS_SUFFIXES) and not path.name.endswith(".gz"):
        import datasets

        builder = suffix.rsplit(".", 1)[1]
        try:
            ds = datasets.load_dataset(builder, data_files=str(path), split="train")
        except Exception as e:  # arrow / parser errors: report them as a file-level error, not a traceback
            raise DataError(f"{name}:0", "<file>", f"cannot load as {builder}: {type(e).__name__}: {e}") from None
        yield from _read_with_datasets(ds, name)
    else:
        raise DataError(f"{name}:0", "<file>", "unsupported file type; use .json, .jsonl (optionally .gz), "
                                               ".parquet or .csv")


def read_rows(spec: str, split: str) -> Iterator[tuple[str, Any]]:
    """(source, row dict or DataError) for every row of a file, a local dir or a hub dataset."""
    path = Path(spec)
    if path.is_file():  # a single file is read whole; `split` does not apply
        yield from _read_file(path, spec)
        return
    import datasets

    if path.is_dir() and ((path / "dataset_dict.json").exists() or (path / "state.json").exists()):
        try:
            saved = datasets.load_from_disk(str(path))
        except Exception as e:
            raise ValueError(f"{spec}: cannot load this save_to_disk dir ({type(e).__name__}: {e})") from None
        if isinstance(saved, datasets.DatasetDict):
            if split not in saved:
                raise ValueError(f"{spec}: no split {split!r}; splits: {', '.join(map(str, saved))}")
            saved = saved[split]
        yield from _read_with_datasets(saved, f"{spec}[{split}]")
        return
    if path.is_dir():
        from datasets.data_files import DataFilesDict, get_data_patterns

        try:
            files = DataFilesDict.from_patterns(get_data_patterns(str(path)), base_path=str(path))
        except Exception as e:
            raise ValueError(f"{spec}: no data files found ({type(e).__name__}: {e})") from None
        if split not in files:
            raise ValueError(f"{spec}: no files for split {split!r}; splits found: {', '.join(map(str, files))}")
        data_files = [Path(f) for f in files[split] if Path(f).name.removesuffix(".gz").endswith(
            JSON_SUFFIXES + DATASETS_SUFFIXES)]
        if not data_files:
            raise ValueError(f"{spec}: no .json/.jsonl/.parquet/.csv files for split {split!r}")
        for f in sorted(data_files):
            yield from _read_file(f, str(f))
        return
    if path.is_absolute() or path.name.removesuffix(".gz").endswith(JSON_SUFFIXES + DATASETS_SUFFIXES):
        raise ValueError(f"{spec!r}: no such file or dir")
    try:
        ds = datasets.load_dataset(spec, split=split)
    except Exception as e:
        raise ValueError(f"--dataset {spec!r}: not a file or dir, and loading it as a hub dataset failed "
                         f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    yield from _read_with_datasets(ds, f"{spec}[{split}]")
