"""The cache of source sha256 digests (issue 17 §4): a file is read through sha256 once; a changed file,
a damaged cache or ``VITINIT_HASH_CACHE=0`` falls back to hashing, and the output is the same bytes."""

from __future__ import annotations

import hashlib
import json
import os
import time

import pytest
from fixtures import make_fixtures as mf

from vitinit.convert import convert
from vitinit.io import hash_cache
from vitinit.io.save import sha256_file
from vitinit.targets.vitdet import read_vitdet

TINY = {"family": "mae", "size": 64, "window_size": 4, "num_heads": 2}


@pytest.fixture
def hashed(monkeypatch):
    """Count the sha256 passes that read a file; treat every file as settled (as if each read began 10 s
    after the file's last change), so that a file written by the test is cached at once."""
    calls: list[str] = []

    def counting(path, *args, **kwargs):
        calls.append(os.fspath(path))
        return sha256_file(path, *args, **kwargs)

    monkeypatch.setattr(hash_cache, "sha256_file", counting)
    monkeypatch.setattr(hash_cache, "RACY_NS", -10**10)
    return calls


def _rewrite_later(path, data: bytes, *, keep_mtime: bool) -> None:
    """Rewrite ``path`` in place with ``data`` (same size) in a later timestamp tick than its last change."""
    before = os.stat(path)
    for _ in range(60):  # timestamps come from a clock of 1-10 ms ticks (1-2 s on some filesystems)
        time.sleep(0.05)
        path.write_bytes(data)
        if keep_mtime:
            os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
        after = os.stat(path)
        if after.st_ctime_ns != before.st_ctime_ns:
            break
    assert after.st_size == before.st_size and after.st_ctime_ns != before.st_ctime_ns
    assert (after.st_mtime_ns == before.st_mtime_ns) == keep_mtime


def test_repeat_conversion_reads_the_source_once_and_writes_the_same_bytes(tmp_path, hashed, monkeypatch):
    src = tmp_path / "mae.pth"
    mf.mae_checkpoint(src)
    first = convert(src, output=tmp_path / "a.safetensors", **TINY)
    assert hashed == [str(src)]
    again = convert(src, output=tmp_path / "b.safetensors", **TINY)
    assert hashed == [str(src)]  # the second conversion took the digest from the cache
    monkeypatch.setenv("VITINIT_HASH_CACHE", "0")
    off = convert(src, output=tmp_path / "c.safetensors", **TINY)
    assert hashed == [str(src)] * 2  # disabled: read again
    written = {p: p.read_bytes() for p in (first.path, again.path, off.path)}
    assert len(set(written.values())) == 1  # byte for byte, hit or miss
    assert first.sha256 == again.sha256 == off.sha256 == sha256_file(first.path)
    truth = hashlib.sha256(src.read_bytes()).hexdigest()
    assert read_vitdet(again.path).metadata["source_sha256"] == truth


@pytest.mark.parametrize("keep_mtime", [False, True], ids=["mtime-touched", "mtime-restored"])
def test_a_modified_file_misses(tmp_path, hashed, keep_mtime):
    f = tmp_path / "w.bin"
    f.write_bytes(b"a" * 4096)
    assert hash_cache.cached_sha256(f) == hashlib.sha256(b"a" * 4096).hexdigest()
    assert hash_cache.lookup(f) is not None and len(hashed) == 1
    _rewrite_later(f, b"b" * 4096, keep_mtime=keep_mtime)  # same size; ctime moves even when mtime is reset
    assert hash_cache.lookup(f) is None
    assert hash_cache.cached_sha256(f) == hashlib.sha256(b"b" * 4096).hexdigest() and len(hashed) == 2


def test_a_file_changed_just_now_is_not_cached(tmp_path):
    """A change later within the same timestamp tick would keep every stat field: such a file is hashed
    but not remembered (git's racy-clean rule)."""
    f = tmp_path / "fresh.bin"
    f.write_bytes(b"x" * 100)
    assert hash_cache.cached_sha256(f) == hashlib.sha256(b"x" * 100).hexdigest()
    assert hash_cache.lookup(f) is None


@pytest.mark.parametrize(
    "content",
    [
        b"\x00\xffnot json",
        b"[" * 10_000 + b"]" * 10_000,
        b'{"version": 1, "sha256": []}',
        b'{"version": 2, "sha256": {}}',
        b" " * (hash_cache.MAX_BYTES + 1),
        "entry",  # the file's own key with a value that is not a lowercase 64-hex digest
    ],
    ids=["binary", "deep", "wrong-type", "other-version", "oversized", "bad-entries"],
)
def test_a_damaged_cache_is_ignored(tmp_path, hashed, content):
    f = tmp_path / "w.bin"
    f.write_bytes(b"w" * 1000)
    truth = hashlib.sha256(b"w" * 1000).hexdigest()
    cache = hash_cache.cache_dir() / hash_cache.CACHE_FILE
    cache.parent.mkdir(parents=True, exist_ok=True)
    if content == "entry":
        bad = ["0" * 63, "Z" * 64, truth.upper(), 7, None, {"x": 1}]
        for value in bad:
            cache.write_text(json.dumps({"version": 1, "sha256": {hash_cache.file_key(f): value}}))
            assert hash_cache.lookup(f) is None, value
    else:
        cache.write_bytes(content)
        assert hash_cache.lookup(f) is None
    assert hash_cache.cached_sha256(f) == truth  # hashed, and the cache is written anew
    assert hash_cache.lookup(f) == truth and len(hashed) == 1


def test_an_unwritable_cache_is_no_error(tmp_path, hashed, monkeypatch):
    (tmp_path / "plain-file").write_text("")
    monkeypatch.setenv("VITINIT_CACHE", str(tmp_path / "plain-file"))  # a file where a folder should be
    f = tmp_path / "w.bin"
    f.write_bytes(b"q" * 10)
    assert hash_cache.cached_sha256(f) == hashlib.sha256(b"q" * 10).hexdigest()
    assert hash_cache.lookup(f) is None


def test_the_cache_keeps_the_newest_entries(tmp_path, monkeypatch):
    monkeypatch.setattr(hash_cache, "MAX_ENTRIES", 3)
    f = tmp_path / "w.bin"
    f.write_bytes(b"")
    for i in range(5):
        hash_cache.store(f, f"{i:064x}", key=f"k{i}")
    table = json.loads((hash_cache.cache_dir() / hash_cache.CACHE_FILE).read_text())["sha256"]
    assert table == {f"k{i}": f"{i:064x}" for i in (2, 3, 4)}


# --- --expect-sha256: the source's published hash, checked while the conversion runs ---------------------


def _folder_listing(folder):
    return sorted(p.name for p in folder.iterdir())


def test_an_expected_hash_writes_the_final_header_at_once_and_the_same_bytes(tmp_path, hashed, monkeypatch):
    """Cold, with the published hash: the source is read through sha256 once (alongside, not before), the
    output is written with its final header from the first byte (no header rewrite, no read-back hash),
    and the bytes are those of a conversion without the hint."""
    import vitinit.io.save as save

    src = tmp_path / "mae.pth"
    mf.mae_checkpoint(src)
    truth = hashlib.sha256(src.read_bytes()).hexdigest()
    monkeypatch.setenv("VITINIT_HASH_CACHE", "0")
    plain = convert(src, output=tmp_path / "plain.safetensors", **TINY)

    def no_late_header(*args, **kwargs):
        raise AssertionError("the header was rewritten although the source's hash was known")

    monkeypatch.setattr(save, "_write_with_late_metadata", no_late_header)
    hinted = convert(src, output=tmp_path / "hinted.safetensors", expected_sha256=truth.upper(), **TINY)
    assert hashed == [str(src)] * 2  # one pass each: the hint does not skip the check
    assert hinted.path.read_bytes() == plain.path.read_bytes()
    assert hinted.sha256 == plain.sha256 == sha256_file(hinted.path)
    assert read_vitdet(hinted.path).metadata["source_sha256"] == truth


@pytest.mark.parametrize("cached", [False, True], ids=["cold", "cached"])
@pytest.mark.parametrize("target", ["vitdet", "detectron2"])
def test_a_wrong_expected_hash_writes_nothing(tmp_path, hashed, cached, target):
    """A source that is not the published file (a truncated download, another release): one error naming
    both hashes, and neither an output nor a temp file is left; the source is untouched."""
    from vitinit.errors import ChecksumMismatchError

    src = tmp_path / "mae.pth"
    mf.mae_checkpoint(src)
    before = src.read_bytes()
    truth = hashlib.sha256(before).hexdigest()
    if cached:
        assert hash_cache.cached_sha256(src) == truth and hash_cache.lookup(src) == truth
    listing = _folder_listing(tmp_path)
    wrong = "0" * 64
    out = tmp_path / ("out.safetensors" if target == "vitdet" else "out.pth")
    with pytest.raises(ChecksumMismatchError, match=f"sha256 is {truth}, not the expected {wrong}"):
        convert(src, target=target, output=out, expected_sha256=wrong, **TINY)
    assert _folder_listing(tmp_path) == listing
    assert src.read_bytes() == before


def test_expect_sha256_is_checked_before_anything_is_read(tmp_path):
    from _hostile import one_line_error, run

    src = tmp_path / "mae.pth"
    mf.mae_checkpoint(src)
    out = tmp_path / "o.safetensors"
    for bad in ("abc", "g" * 64, "0" * 65, "x" * 10_000):
        line = one_line_error(
            run("convert", str(src), "-o", str(out), "--expect-sha256", bad), "--expect-sha256 must be"
        )
        assert len(line) < 200
    one_line_error(run("convert", "--from", "random", "--model", "vit-s", "-o", str(out),
                       "--expect-sha256", "0" * 64), "--from random has none")
    tiny = ("--size", "64", "--window-size", "4", "--num-heads", "2")
    wrong = run("convert", str(src), "-o", str(out), *tiny, "--expect-sha256", "f" * 64)
    one_line_error(wrong, "not the expected " + "f" * 64)
    assert not out.exists()
    truth = hashlib.sha256(src.read_bytes()).hexdigest()
    ok = run("convert", str(src), "-o", str(out), *tiny, "--expect-sha256", truth)
    assert ok.exit_code == 0, ok.output
    assert read_vitdet(out).metadata["source_sha256"] == truth
