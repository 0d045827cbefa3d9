"""vitinit.io.chunks: tensors streamed from their files through reused buffers, hashed beside the writing."""

from __future__ import annotations

import hashlib
import logging

import pytest
import torch
from safetensors.torch import load_file, save_file

import vitinit.io.chunks as chunks
from vitinit.canonical import LazyTensor
from vitinit.errors import CheckpointFormatError
from vitinit.io.load import open_checkpoint
from vitinit.io.save import write_safetensors


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch):
    """Chunks of 4 KiB: every tensor below spans several, and most end inside one."""
    monkeypatch.setattr(chunks, "CHUNK_BYTES", 4096)
    monkeypatch.setattr(chunks, "IN_FLIGHT", 3)


def _weights() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "blocks.0.attn.qkv.weight": torch.randn(96, 32, generator=g),  # 12 KiB: three chunks
        "blocks.0.mlp.fc1.weight": torch.randn(77, 29, generator=g),  # 8932 B: ends inside a chunk
        "half": torch.randn(3001, generator=g).half(),
        "bf16": torch.randn(2049, generator=g).bfloat16(),
        "index": torch.arange(1000),
        "flags": torch.rand(5000, generator=g) > 0.5,
        "scalar": torch.tensor(1.5),
        "empty": torch.empty(0, 3),
    }


@pytest.mark.parametrize("container", ["pth", "safetensors"])
def test_file_tensors_stream_through_the_pool_unchanged(tmp_path, container):
    weights = _weights()
    src = tmp_path / f"src.{container}"
    if container == "pth":
        torch.save({"model": weights}, src)
        lazy = open_checkpoint(src).tensors("model")
    else:
        save_file(weights, src)
        lazy = open_checkpoint(src).tensors()
    assert all(lazy[k].read_into is not None for k in weights)
    loads = []
    streamed = {  # a tensor read whole would call its loader
        k: LazyTensor(t.shape, t.dtype, lambda k=k: loads.append(k) or lazy[k].load(), t.read_into)
        for k, t in lazy.items()
    }
    out = tmp_path / "out.safetensors"
    sha = write_safetensors(out, streamed, {"k": "v"})
    assert loads == []
    assert sha == hashlib.sha256(out.read_bytes()).hexdigest()
    back = load_file(out)
    assert set(back) == set(weights)
    assert all(torch.equal(back[k], weights[k]) for k in weights)


def test_views_that_are_not_one_run_of_bytes_are_loaded_whole(tmp_path):
    base = torch.randn(64, 48)
    src = tmp_path / "src.pth"
    torch.save({"t": base.t(), "rows": base[10:20], "column": base[:, 5]}, src)
    lazy = open_checkpoint(src).tensors()
    assert lazy["t"].read_into is None and lazy["column"].read_into is None
    assert lazy["rows"].read_into is not None  # a slice of whole rows is compact
    out = tmp_path / "out.safetensors"
    write_safetensors(out, lazy, {})
    back = load_file(out)
    assert torch.equal(back["t"], base.t()) and torch.equal(back["rows"], base[10:20])
    assert torch.equal(back["column"], base[:, 5])


def test_a_safetensors_header_too_big_to_reread_falls_back_to_loading(tmp_path, monkeypatch):
    from vitinit.io import safetensors_read

    src = tmp_path / "src.safetensors"
    save_file(_weights(), src)
    monkeypatch.setattr(safetensors_read._SafetensorsRanges, "MAX_HEADER_BYTES", 16)
    lazy = open_checkpoint(src).tensors()
    assert all(t.read_into is None for t in lazy.values())
    write_safetensors(tmp_path / "out.safetensors", lazy, {})
    back = load_file(tmp_path / "out.safetensors")
    assert all(torch.equal(back[k], v) for k, v in _weights().items())


def test_non_finite_values_are_counted_across_chunks(tmp_path, caplog):
    w = torch.zeros(4096)  # 16 KiB: four chunks, one NaN/inf in three of them
    w[5], w[1500], w[4000] = float("nan"), float("inf"), float("-inf")
    src = tmp_path / "src.pth"
    torch.save({"w": w}, src)
    with caplog.at_level(logging.WARNING, logger="vitinit.io.save"):
        write_safetensors(tmp_path / "out.safetensors", open_checkpoint(src).tensors(), {})
    assert "1 tensor(s) hold NaN/inf values" in caplog.text and "w (3)" in caplog.text


@pytest.mark.parametrize("late", [False, True])
def test_a_source_truncated_while_it_is_read_leaves_no_output(tmp_path, late):
    """The file shrinks after it was opened (another process rewrote it): one-line error, no file, no hang."""
    src = tmp_path / "src.pth"
    torch.save({"a": torch.randn(8192), "b": torch.randn(8192)}, src)
    lazy = open_checkpoint(src).tensors()
    with open(src, "r+b") as f:
        f.truncate(src.stat().st_size // 2)
    late_metadata = {"k": lambda: "w"} if late else None
    with pytest.raises(CheckpointFormatError, match="truncated"):
        write_safetensors(tmp_path / "out.safetensors", lazy, {"k": "v"}, late_metadata=late_metadata)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src.pth"]


def test_the_pool_is_reused_not_grown(tmp_path, monkeypatch):
    made = []
    real = chunks.mmap.mmap

    def counting(*args, **kwargs):
        made.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(chunks.mmap, "mmap", counting)
    src = tmp_path / "src.pth"
    torch.save({f"w{i}": torch.randn(4096) for i in range(10)}, src)  # 40 chunks of 4 KiB
    write_safetensors(tmp_path / "out.safetensors", open_checkpoint(src).tensors(), {})
    assert len(made) == chunks.IN_FLIGHT
