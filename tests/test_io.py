"""vitinit.io.load and vitinit.io.save: safe lazy reading, streaming atomic writing."""

from __future__ import annotations

import argparse
import collections
import hashlib
import json
import os
import pickle
import struct
import time
import weakref
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import vitinit.io.chunks as chunks
import vitinit.io.torch_zip as torch_zip
from vitinit.canonical import LazyTensor
from vitinit.errors import CheckpointFormatError, OutputExistsError, UnsafeCheckpointError
from vitinit.io.load import open_checkpoint
from vitinit.io.save import sha256_file, write_safetensors


def _state_dict() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    base = torch.randn(6, 8, generator=g)
    return collections.OrderedDict(
        weight=base,
        transposed=torch.randn(8, 6, generator=g).t(),  # strided view of its own storage
        rows=base[2:5],  # view with a storage offset, sharing base's storage
        column=base[:, 3],  # strided view sharing base's storage
        half=torch.randn(5, generator=g).half(),
        bf16=torch.randn(3, 2, generator=g).bfloat16(),
        index=torch.arange(7),
        flags=torch.tensor([True, False, True]),
        scalar=torch.tensor(2.5),
        empty=torch.empty(0, 4),
        param=torch.nn.Parameter(torch.randn(4, generator=g)),
    )


def _assert_same(tree_tensors: dict[str, LazyTensor], reference: dict[str, torch.Tensor]) -> None:
    assert set(tree_tensors) == set(reference)
    for k, lazy in tree_tensors.items():
        t = lazy.load()
        assert lazy.shape == tuple(reference[k].shape) and lazy.dtype == reference[k].dtype, k
        assert torch.equal(t, reference[k].detach()), k


# ---------------------------------------------------------------------------------------------------------
# reading PyTorch pickles
# ---------------------------------------------------------------------------------------------------------


def test_zip_checkpoint_streams_every_kind_of_tensor(tmp_path):
    sd = _state_dict()
    path = tmp_path / "ckpt.pth"
    torch.save({"model": sd, "args": argparse.Namespace(lr=0.1), "epoch": 3}, path)
    raw = open_checkpoint(path)
    assert raw.container == "torch-zip"
    assert raw.tree["epoch"] == 3 and raw.tree["args"].lr == 0.1
    # The streaming reader (not torch.load's fallback) built these: their loaders read from the file.
    assert all(isinstance(t.loader, torch_zip._ZipTensorReader) for t in raw.tensors("model").values())
    _assert_same(raw.tensors("model"), sd)


def test_loaded_tensors_own_their_memory(tmp_path):
    sd = _state_dict()
    path = tmp_path / "ckpt.pth"
    torch.save(sd, path)
    rows = open_checkpoint(path).tensors()["rows"].load()
    assert rows.untyped_storage().nbytes() == rows.numel() * rows.element_size()  # not the whole storage
    rows.add_(1)  # writable, and the file is not touched
    assert torch.equal(open_checkpoint(path).tensors()["rows"].load(), sd["rows"])


def test_zip_reading_is_lazy(tmp_path, monkeypatch):
    small, big = torch.randn(256), torch.randn(1024, 1024)
    path = tmp_path / "ckpt.pth"
    torch.save({"small": small, "big": big}, path)
    read: list[int] = []
    real_preadv = os.preadv

    def counting_preadv(fd, buffers, offset, *args):
        n = real_preadv(fd, buffers, offset, *args)
        read.append(n)
        return n

    monkeypatch.setattr(torch_zip.os, "preadv", counting_preadv)
    raw = open_checkpoint(path)
    assert sum(read) == 0  # opening reads no tensor data
    assert torch.equal(raw.tensors()["small"].load(), small)
    assert sum(read) == small.numel() * 4  # exactly the small tensor's bytes; the 4 MB one was never read


def test_tensor_bytes_are_read_at_load_time(tmp_path):
    path = tmp_path / "ckpt.pth"
    twos = torch.full((1000,), 2.0)
    torch.save({"a": torch.zeros(1000), "b": twos}, path)
    raw = open_checkpoint(path)
    with open(path, "r+b") as f:  # change b's bytes after opening: a lazy reader sees the new bytes
        f.seek(path.read_bytes().index(twos.numpy().tobytes()))
        f.write(torch.ones(1000).numpy().tobytes())
    assert torch.equal(raw.tree["b"].load(), torch.ones(1000))
    assert torch.equal(raw.tree["a"].load(), torch.zeros(1000))
    chunk = bytearray(4000)
    raw.tree["b"].read_into(memoryview(chunk), 0)
    assert bytes(chunk) == torch.ones(1000).numpy().tobytes()


def test_legacy_pickle_is_read_whole(tmp_path):
    sd = {"w": torch.randn(3, 4), "b": torch.arange(3)}
    path = tmp_path / "legacy.pth"
    torch.save(sd, path, _use_new_zipfile_serialization=False)
    raw = open_checkpoint(path)
    assert raw.container == "torch-legacy"
    _assert_same(raw.tensors(), sd)


def test_globals_outside_the_streaming_list_go_to_torch_weights_only(tmp_path):
    # torch.device is allowed by torch's weights_only unpickler but not by the streaming one.
    path = tmp_path / "ckpt.pth"
    torch.save({"model": {"w": torch.randn(2, 2)}, "device": torch.device("cpu")}, path)
    raw = open_checkpoint(path)
    assert raw.tree["device"] == torch.device("cpu")
    assert raw.tensors("model")["w"].shape == (2, 2)


class _Payload:
    """Unpickling this would create ``marker`` (builtins.open in 'w' mode)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.mark.parametrize("container", ["zip", "legacy-torch", "plain-pickle"])
def test_pickle_that_would_run_code_is_refused_unexecuted(tmp_path, container):
    marker = tmp_path / "payload_ran"
    path = tmp_path / "evil.pth"
    obj = {"model": {"w": torch.zeros(2)}, "x": _Payload(marker)}
    if container == "zip":
        torch.save(obj, path)
    elif container == "legacy-torch":
        torch.save(obj, path, _use_new_zipfile_serialization=False)
    else:
        path.write_bytes(pickle.dumps({"x": _Payload(marker)}, protocol=4))
    before = path.read_bytes()
    with pytest.raises(UnsafeCheckpointError) as e:
        open_checkpoint(path)
    assert not marker.exists()  # the payload did not run
    msg = str(e.value)
    assert "global io.open" in msg and "\n" not in msg  # names the global (open is io.open)
    assert path.read_bytes() == before  # source untouched


def test_empty_file(tmp_path):
    path = tmp_path / "empty.pth"
    path.touch()
    with pytest.raises(CheckpointFormatError, match="empty"):
        open_checkpoint(path)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_truncated_file(tmp_path, suffix):
    path = tmp_path / f"ckpt{suffix}"
    tensors = {"w": torch.randn(64, 64), "b": torch.randn(64)}
    torch.save(tensors, path) if suffix == ".pth" else save_file(tensors, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointFormatError) as e:
        raw = open_checkpoint(path)
        for t in raw.tensors().values():
            t.load()
    assert "\n" not in str(e.value) and str(path) in str(e.value)


def test_corrupt_safetensors_header(tmp_path):
    path = tmp_path / "bad.safetensors"
    text = b'{"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]'  # JSON cut short
    path.write_bytes(struct.pack("<Q", len(text)) + text + bytes(8))
    with pytest.raises(CheckpointFormatError, match="not a readable safetensors file"):
        open_checkpoint(path)
    huge = tmp_path / "huge_header.safetensors"
    huge.write_bytes(struct.pack("<Q", 1 << 40) + b"{}")  # header length past the end of the file
    with pytest.raises(CheckpointFormatError):
        open_checkpoint(huge)


def test_safetensors_reading_is_lazy(tmp_path):
    path = tmp_path / "w.safetensors"
    save_file({"a": torch.zeros(1000), "b": torch.zeros(1000)}, path, metadata={"k": "v"})
    raw = open_checkpoint(path)
    assert raw.metadata == {"k": "v"} and raw.container == "safetensors"
    header_len = struct.unpack("<Q", path.read_bytes()[:8])[0]
    offsets = json.loads(path.read_bytes()[8 : 8 + header_len])["b"]["data_offsets"]
    with open(path, "r+b") as f:  # overwrite b after opening: the bytes come from the file at load time
        f.seek(8 + header_len + offsets[0])
        f.write(torch.ones(1000).numpy().tobytes())
    assert torch.equal(raw.tree["b"].load(), torch.ones(1000))


# ---------------------------------------------------------------------------------------------------------
# streaming safetensors writer
# ---------------------------------------------------------------------------------------------------------


def test_write_safetensors_round_trip(tmp_path):
    sd = {k: v.detach() for k, v in _state_dict().items()}
    path = tmp_path / "out.safetensors"
    meta = {"format": "vitinit.test", "note": "ünïcode"}
    sha = write_safetensors(path, {k: LazyTensor.of(v) for k, v in sd.items()}, meta)
    assert sha == hashlib.sha256(path.read_bytes()).hexdigest() == sha256_file(path)
    with safe_open(str(path), framework="pt") as f:
        assert f.metadata() == meta
        assert set(f.keys()) == set(sd)
        for k in f.keys():
            assert torch.equal(f.get_tensor(k), sd[k]), k
    loaded = load_file(path)
    assert all(torch.equal(loaded[k], sd[k]) for k in sd)
    header_len = struct.unpack("<Q", path.read_bytes()[:8])[0]
    assert header_len % 8 == 0
    header = json.loads(path.read_bytes()[8 : 8 + header_len])
    for k, entry in header.items():  # every tensor starts at a multiple of its item size
        if k != "__metadata__":
            assert entry["data_offsets"][0] % sd[k].element_size() == 0, k


@pytest.mark.parametrize("slow_hash", [False, True])
def test_write_safetensors_streams_tensor_by_tensor(tmp_path, monkeypatch, slow_hash):
    """Loaded tensors wait for the hashing thread at most up to MAX_PENDING_BYTES, even when it lags."""
    monkeypatch.setattr(chunks, "MAX_PENDING_BYTES", 3 * 256 * 256 * 4)
    if slow_hash:
        monkeypatch.setattr(chunks.hashlib, "sha256", _SlowSha256)  # hashlib itself, for this test
    alive: list[weakref.ref] = []
    max_alive = 0

    def loader(i: int):
        def load() -> torch.Tensor:
            nonlocal max_alive
            values = np.full((256, 256), float(i), dtype=np.float32)  # lives as long as the tensor's memory
            alive.append(weakref.ref(values))
            max_alive = max(max_alive, sum(r() is not None for r in alive))
            return torch.from_numpy(values)

        return load

    tensors = {f"t{i:02d}": LazyTensor((256, 256), torch.float32, loader(i)) for i in range(20)}
    sha = write_safetensors(tmp_path / "s.safetensors", tensors, {})
    assert len(alive) == 20
    assert max_alive <= 4  # three waiting for the hash, one just loaded; never the whole checkpoint
    assert sha == sha256_file(tmp_path / "s.safetensors")
    out = load_file(tmp_path / "s.safetensors")
    assert all(torch.equal(out[f"t{i:02d}"], torch.full((256, 256), float(i))) for i in range(20))


class _SlowSha256:
    """hashlib.sha256 that takes 5 ms per update: the hashing thread falls behind the writer."""

    _real = hashlib.sha256

    def __init__(self, data: bytes = b""):
        self._h = _SlowSha256._real(data)

    def update(self, data) -> None:
        time.sleep(0.005)
        self._h.update(data)

    def hexdigest(self) -> str:
        return self._h.hexdigest()


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_failed_write_leaves_no_file(tmp_path, error):
    def failing() -> torch.Tensor:
        raise error("boom")

    tensors = {f"a{i}": LazyTensor.of(torch.randn(100, 100)) for i in range(5)}
    tensors["z_fails"] = LazyTensor((3,), torch.float32, failing)  # written last (names sort)
    with pytest.raises(error):
        write_safetensors(tmp_path / "out.safetensors", tensors, {"k": "v"})
    assert list(tmp_path.iterdir()) == []  # neither the output nor a temp file


def test_declared_dtype_must_match(tmp_path):
    lying = LazyTensor((2,), torch.float16, lambda: torch.zeros(2))
    with pytest.raises(ValueError, match="declared"):
        write_safetensors(tmp_path / "out.safetensors", {"w": lying}, {})
    assert list(tmp_path.iterdir()) == []


def test_metadata_must_be_strings(tmp_path):
    with pytest.raises(TypeError, match="must be str"):
        write_safetensors(tmp_path / "out.safetensors", {"w": LazyTensor.of(torch.zeros(1))}, {"n": 3})
    assert list(tmp_path.iterdir()) == []


def test_existing_output_is_refused_unless_overwrite(tmp_path):
    path = tmp_path / "out.safetensors"
    path.write_bytes(b"keep me")
    tensors = {"w": LazyTensor.of(torch.ones(3))}
    with pytest.raises(OutputExistsError):
        write_safetensors(path, tensors, {})
    assert path.read_bytes() == b"keep me"
    write_safetensors(path, tensors, {}, overwrite=True)
    assert torch.equal(load_file(path)["w"], torch.ones(3))


def test_write_from_a_streamed_source(tmp_path):
    """The conversion path: open a .pth lazily, write it out as safetensors, read it back."""
    sd = {k: v.detach() for k, v in _state_dict().items()}
    src = tmp_path / "src.pth"
    torch.save({"model": sd}, src)
    out = tmp_path / "out.safetensors"
    meta = {"source_sha256": sha256_file(src)}
    write_safetensors(out, open_checkpoint(src).tensors("model"), meta, progress=True)
    _assert_same(open_checkpoint(out).tensors(), sd)


def test_late_metadata_is_written_into_the_final_header(tmp_path):
    """Metadata known only later (a concurrently computed source hash) lands in the header, and the
    returned sha256 is that of the final file. The value is asked for once, on the hashing thread, at any
    moment of the writing (vitinit.io.follow_hash)."""
    out = tmp_path / "late.safetensors"
    tensors = {"a": LazyTensor.of(torch.arange(6.0).reshape(2, 3)), "b": LazyTensor.of(torch.ones(4))}
    calls = []

    def late_value() -> str:
        calls.append(1)
        return "f" * 64

    sha = write_safetensors(out, tensors, {"hash": "0" * 64, "kept": "x"}, late_metadata={"hash": late_value})
    assert calls == [1]
    with safe_open(str(out), framework="pt") as f:
        assert f.metadata() == {"hash": "f" * 64, "kept": "x"}
        torch.testing.assert_close(f.get_tensor("a"), torch.arange(6.0).reshape(2, 3))
    assert sha == sha256_file(out)


def test_late_metadata_that_changes_length_leaves_no_file(tmp_path):
    out = tmp_path / "late.safetensors"
    tensors = {"a": LazyTensor.of(torch.zeros(3))}
    with pytest.raises(ValueError, match="changed length"):
        write_safetensors(out, tensors, {"hash": "0" * 64}, late_metadata={"hash": lambda: "short"})
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="provisional"):
        write_safetensors(out, tensors, {}, late_metadata={"hash": lambda: "x"})
    assert list(tmp_path.iterdir()) == []


def test_outputs_get_the_mode_of_an_ordinary_file(tmp_path):
    """Temp files are created 0600; a finished output is readable as any file the user writes."""
    old = os.umask(0o022)
    try:
        out = tmp_path / "w.safetensors"
        write_safetensors(out, {"a": LazyTensor.of(torch.zeros(2))}, {})
        assert out.stat().st_mode & 0o777 == 0o644
    finally:
        os.umask(old)


def test_a_pickle_that_is_no_checkpoint_is_not_called_unsafe(tmp_path):
    """A plain pickle of a number names no global: it is unreadable, not dangerous, and the message must not
    relay torch's advice to retry with weights_only=False."""
    path = tmp_path / "number.pth"
    path.write_bytes(pickle.dumps(12345, protocol=4))
    with pytest.raises(CheckpointFormatError) as err:
        open_checkpoint(path)
    assert not isinstance(err.value, UnsafeCheckpointError)
    assert "weights_only" not in str(err.value)


def test_a_pickle_nested_too_deeply_is_a_one_line_error(tmp_path):
    """A zip checkpoint whose data.pkl nests dicts 5000 deep (written opcode by opcode: pickle.dumps itself
    would hit the recursion limit) is refused with a CheckpointFormatError, not a RecursionError."""
    import zipfile

    path = tmp_path / "deep.pth"
    torch.save({"a": 1}, path)
    deep = b"\x80\x02" + b"(X\x01\x00\x00\x00x" * 5000 + b"}" + b"d" * 5000 + b"."
    with zipfile.ZipFile(path) as z:
        entries = {name: z.read(name) for name in z.namelist()}
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        for name, data in entries.items():
            z.writestr(name, deep if name.endswith("data.pkl") else data)
    with pytest.raises(CheckpointFormatError, match="nested too deeply"):
        open_checkpoint(path)


def test_rewriting_an_existing_file_still_replaces_it(tmp_path):
    """atomic_path's default refuses only a file that appeared during the write, not one that was there."""
    from vitinit.io.files import write_json

    path = tmp_path / "results.json"
    write_json(path, {"iter": 1})
    write_json(path, {"iter": 2})
    assert json.loads(path.read_text()) == {"iter": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]
