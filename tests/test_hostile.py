"""Hostile inputs and conditions (issue 13): each ends in a one-line error (nothing at or beside the output,
the source untouched) or a correct result. Every bad input is built here, small."""

from __future__ import annotations

import collections
import errno
import io
import json
import logging
import os
import pickle
import signal
import socket
import subprocess
import sys
import threading
import time
import warnings
import zipfile
from pathlib import Path

import pytest
import torch
from _hostile import one_line_error, run
from fixtures import make_fixtures as mf

import vitinit.io.atomic as atomic
import vitinit.io.zip_checks as zip_checks
from vitinit.data.coco import CocoDetection
from vitinit.data.synthetic import SyntheticSpec, synthetic_coco
from vitinit.errors import CheckpointFormatError, DatasetError, OutputExistsError
from vitinit.io.lazy import LazyTensor
from vitinit.io.load import open_checkpoint
from vitinit.io.save import sha256_file, write_safetensors
from vitinit.targets.vitdet import read_vitdet

TINY = ("--num-heads", "2", "--size", "64", "--window-size", "4")


@pytest.fixture(scope="module")
def mae(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("src") / "mae.pth"
    mf.mae_checkpoint(path)
    return path




def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


# ---------------------------------------------------------------------------------------------------------
# Silently wrong
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("rename", ["renameat2", "link"])
def test_output_created_during_the_write_is_not_replaced(mae, tmp_path, monkeypatch, rename):
    """The existence check holds at the final rename: a file that appears meanwhile wins, we fail."""
    if rename == "link":
        monkeypatch.setattr(atomic, "_RENAMEAT2", None)
    elif atomic._RENAMEAT2 is None:
        pytest.skip("no renameat2 in this libc")
    out = tmp_path / "out.safetensors"
    real_umask = atomic._current_umask

    def other_writer_finishes_first() -> int:  # runs between the last byte written and the rename
        out.write_bytes(b"the other conversion")
        return real_umask()

    monkeypatch.setattr(atomic, "_current_umask", other_writer_finishes_first)
    one_line_error(run("convert", str(mae), *TINY, "-o", str(out)), "created by another process")
    assert out.read_bytes() == b"the other conversion"
    assert leftovers(tmp_path) == []


def test_two_concurrent_writers_exactly_one_wins(tmp_path):
    out = tmp_path / "race.safetensors"
    both_writing = threading.Barrier(2, timeout=20)

    def tensors(value: float) -> dict[str, LazyTensor]:
        def load() -> torch.Tensor:
            both_writing.wait()  # neither renames before both have checked the path and started writing
            return torch.full((256,), value)

        return {"w": LazyTensor((256,), torch.float32, load)}

    results: dict[float, object] = {}

    def writer(value: float) -> None:
        try:
            results[value] = write_safetensors(out, tensors(value), {"who": str(value)})
        except OutputExistsError as e:
            results[value] = e

    threads = [threading.Thread(target=writer, args=(v,)) for v in (1.0, 2.0)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    won = [v for v, r in results.items() if isinstance(r, str)]
    lost = [v for v, r in results.items() if isinstance(r, OutputExistsError)]
    assert len(won) == 1 and len(lost) == 1, results
    assert results[won[0]] == sha256_file(out)  # the sha256 printed is the file's
    assert open_checkpoint(out).metadata["who"] == str(won[0])
    assert leftovers(tmp_path) == []


def _rezip(src: Path, dst: Path, *, deflate=lambda name: False, duplicate: str | None = None) -> None:
    """Copy a torch.save zip entry by entry; ``deflate`` picks entries to compress, ``duplicate`` adds a
    second entry of that name with other bytes of the same length."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about the duplicate: that is the point
        for info in zin.infolist():
            data = zin.read(info)
            kind = zipfile.ZIP_DEFLATED if deflate(info.filename) else zipfile.ZIP_STORED
            zout.writestr(info.filename, data, compress_type=kind)
            if info.filename == duplicate:
                zout.writestr(info.filename, bytes(len(data)), compress_type=zipfile.ZIP_STORED)


def test_zip_with_two_entries_of_one_name_is_refused(mae, tmp_path):
    bad = tmp_path / "dup.pth"
    first_record = next(n for n in zipfile.ZipFile(mae).namelist() if "/data/" in n)
    _rezip(mae, bad, duplicate=first_record)
    with pytest.raises(CheckpointFormatError, match="two entries named"):
        open_checkpoint(bad)
    one_line_error(run("inspect", str(bad)), "two entries named")
    one_line_error(run("convert", str(bad), *TINY, "-o", str(tmp_path / "o.safetensors")), "two entries")
    assert not (tmp_path / "o.safetensors").exists()


@pytest.mark.parametrize("target", ["vitdet", "detectron2"])
def test_nan_in_a_source_tensor_is_named_in_a_warning(mae, tmp_path, caplog, target):
    ckpt = torch.load(mae, weights_only=False)
    ckpt["model"]["blocks.1.mlp.fc1.weight"][0, :3] = torch.tensor([float("nan"), float("inf"), 0.0])
    src = tmp_path / "nan.pth"
    torch.save(ckpt, src)
    out = tmp_path / ("nan.safetensors" if target == "vitdet" else "nan.pth.d2.pth")
    with caplog.at_level(logging.WARNING, logger="vitinit.io.save"):
        res = run("convert", str(src), "--to", target, *TINY, "-o", str(out))
    assert res.exit_code == 0, res.output
    warned = [r.getMessage() for r in caplog.records if "NaN/inf" in r.getMessage()]
    assert len(warned) == 1 and "blocks.1.mlp.fc1.weight (2)" in warned[0], warned
    # The clean source converts without a word.
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="vitinit.io.save"):
        run("convert", str(mae), "--to", target, *TINY, "-o", str(tmp_path / ("ok" + out.suffix)))
    assert not [r for r in caplog.records if "NaN/inf" in r.getMessage()]


@pytest.mark.parametrize(
    ("target", "name", "message"),
    [
        ("vitdet", "out.pth", "ending in .safetensors"),
        ("vitdet", "out.bin", "ending in .safetensors"),
        ("detectron2", "out.safetensors", "is a PyTorch pickle"),
    ],
)
def test_output_name_must_match_the_container(mae, tmp_path, target, name, message):
    res = run("convert", str(mae), "--to", target, *TINY, "-o", str(tmp_path / name))
    one_line_error(res, message)
    assert not (tmp_path / name).exists() and leftovers(tmp_path) == []
    with pytest.raises(Exception, match="ending in .safetensors"):  # the writer refuses it too
        write_safetensors(tmp_path / "x.pth", {"w": LazyTensor.of(torch.zeros(2))}, {})


@pytest.fixture(scope="module")
def coco(tmp_path_factory):
    return synthetic_coco(SyntheticSpec(num_train=4, num_val=2, image_size=64, seed=5),
                          cache_dir=tmp_path_factory.mktemp("coco"))


def _broken(coco, tmp_path, edit) -> Path:
    data = json.loads(coco.train_annotations.read_text())
    edit(data)
    path = tmp_path / "broken.json"
    path.write_text(json.dumps(data))
    return path


def _first(data):
    return data["annotations"][0]


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: [a.update(bbox=[a["bbox"][0], a["bbox"][1], 0.0, 0.0]) for a in d["annotations"]],
         "zero area"),
        (lambda d: _first(d).pop("bbox"), "has no 'bbox'"),
        (lambda d: _first(d).update(bbox=[1, 2, 3]), "expected 4 finite numbers"),
        (lambda d: _first(d).update(bbox=[1, 2, "a", 4]), "expected 4 finite numbers"),
        (lambda d: _first(d).pop("segmentation"), "has no 'segmentation'"),
        (lambda d: _first(d).update(segmentation=[[1.0, "a", 5.0, 5.0, 9.0, 3.0]]), "not a list of numbers"),
        (lambda d: _first(d).update(category_id=999), "unknown category 999"),
        (lambda d: _first(d).update(segmentation={"counts": "abc", "size": [3, 3]}), "RLE of size"),
        (lambda d: d["images"][0].pop("width"), "has no 'width'"),
    ],
)
def test_broken_annotations_fail_up_front(coco, tmp_path, edit, message):
    path = _broken(coco, tmp_path, edit)
    with pytest.raises(DatasetError, match=message) as e:
        CocoDetection(coco.train_images, path, train=True)
    assert "\n" not in str(e.value) and str(path) in str(e.value)


def test_some_zero_area_boxes_are_fine(coco, tmp_path):
    path = _broken(coco, tmp_path, lambda d: _first(d).update(bbox=[1.0, 1.0, 0.0, 4.0]))
    assert len(CocoDetection(coco.train_images, path, train=True)) > 0


# ---------------------------------------------------------------------------------------------------------
# Resource bombs
# ---------------------------------------------------------------------------------------------------------


def test_compressed_tensor_record_is_refused_before_inflating(mae, tmp_path):
    bad = tmp_path / "deflated.pth"
    _rezip(mae, bad, deflate=lambda name: "/data/" in name)
    with pytest.raises(CheckpointFormatError, match="is compressed"):
        open_checkpoint(bad)
    one_line_error(run("inspect", str(bad)), "is compressed")


def test_data_pkl_that_inflates_past_the_cap_is_refused(tmp_path, monkeypatch):
    src, bad = tmp_path / "plain.pth", tmp_path / "bomb.pth"
    torch.save({"w": torch.zeros(3), "pad": b"\0" * (1 << 20)}, src)  # 1 MiB of zeros inside data.pkl
    _rezip(src, bad, deflate=lambda name: name.endswith("data.pkl"))
    assert bad.stat().st_size < 20_000
    monkeypatch.setattr(zip_checks, "MAX_PICKLE_BYTES", 64 << 10)  # the real cap is 64 MiB; same code path
    with pytest.raises(CheckpointFormatError, match="zip bomb"):
        open_checkpoint(bad)


def test_stride_0_view_claiming_terabytes_is_refused_before_allocating(tmp_path):
    bad = tmp_path / "expanded.pth"
    torch.save({"w": torch.zeros(1).expand(1 << 20, 1 << 20)}, bad)  # 4 TiB of float32, a 1 KB file
    assert bad.stat().st_size < 16_000
    with pytest.raises(CheckpointFormatError, match="claims more data than its storage record"):
        open_checkpoint(bad)
    one_line_error(run("inspect", str(bad)), "claims more data")


def test_storage_claiming_more_bytes_than_the_file_holds_is_refused(tmp_path):
    """A 16 KB record whose pickle declares a 4 TiB storage: checked against the bytes present, at open."""

    class Storage:
        pass

    class Tensor:
        def __reduce__(self):
            args = (Storage(), 0, (1 << 20, 1 << 20), (1 << 20, 1), False, collections.OrderedDict())
            return torch._utils._rebuild_tensor_v2, args

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            return ("storage", torch.FloatStorage, "0", "cpu", 1 << 40) if isinstance(obj, Storage) else None

    data = io.BytesIO()
    Pickler(data, protocol=2).dump({"w": Tensor()})
    bad = tmp_path / "claims.pth"
    with zipfile.ZipFile(bad, "w") as z:
        z.writestr("claims/data.pkl", data.getvalue())
        z.writestr("claims/byteorder", sys.byteorder)
        z.writestr("claims/data/0", bytes(16 << 10))
        z.writestr("claims/version", "3\n")
    with pytest.raises(CheckpointFormatError, match="too short"):
        open_checkpoint(bad)


# ---------------------------------------------------------------------------------------------------------
# Signals and leftovers
# ---------------------------------------------------------------------------------------------------------

# The real CLI in a child process, each tensor write slowed down so that a signal lands mid-write.
SLOW_CHILD = """
import sys, time
import vitinit.io.save as save
check = save.NonFiniteCheck.check
def slow(self, name, tensor):
    time.sleep(0.05)
    check(self, name, tensor)
save.NonFiniteCheck.check = slow
from vitinit_cli.main import app
app(sys.argv[1:], prog_name="vitinit")
"""


def _convert_until_mid_write(mae: Path, out: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-c", SLOW_CHILD, "convert", str(mae), *TINY, "-o", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=out.parent,
    )
    deadline = time.monotonic() + 60
    while not list(out.parent.glob(f".{out.name}.*.tmp")):
        assert proc.poll() is None, proc.communicate()[0].decode()
        assert time.monotonic() < deadline, "the child never started writing"
        time.sleep(0.01)
    return proc


@pytest.mark.parametrize(
    ("sig", "code", "word"), [(signal.SIGTERM, 143, "terminated"), (signal.SIGINT, 130, "interrupted")]
)
def test_sigterm_and_sigint_mid_write_clean_up(mae, tmp_path, sig, code, word):
    out = tmp_path / "out.safetensors"
    proc = _convert_until_mid_write(mae, out)
    proc.send_signal(sig)
    output = proc.communicate(timeout=60)[0].decode()
    assert proc.returncode == code, output
    assert word in output and "Traceback" not in output
    assert not out.exists() and leftovers(tmp_path) == []


def test_after_sigkill_the_next_run_removes_the_dead_writers_temp_file(mae, tmp_path):
    out = tmp_path / "out.safetensors"
    proc = _convert_until_mid_write(mae, out)
    proc.kill()
    proc.wait(timeout=60)
    stale = leftovers(tmp_path)
    assert len(stale) == 1 and f".{atomic.TEMP_MARK}-" in stale[0]
    res = run("convert", str(mae), *TINY, "-o", str(out))
    assert res.exit_code == 0, res.output
    assert leftovers(tmp_path) == [] and read_vitdet(out).config.img_size == 64


def test_only_provably_dead_writers_temp_files_are_removed(tmp_path):
    out = tmp_path / "x.safetensors"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = atomic._host()
    names = {
        "dead": f".x.safetensors.{atomic.TEMP_MARK}-{host}-{dead.pid}-abc.tmp",
        "alive": f".x.safetensors.{atomic.TEMP_MARK}-{host}-{os.getpid()}-abc.tmp",
        "other host": f".x.safetensors.{atomic.TEMP_MARK}-elsewhere{socket.gethostname()}-{dead.pid}-a.tmp",
        "not ours": f".x.safetensors.{dead.pid}.tmp",
        "other output": f".y.safetensors.{atomic.TEMP_MARK}-{host}-{dead.pid}-abc.tmp",
    }
    for name in names.values():
        (tmp_path / name).write_bytes(b"")
    removed = atomic.remove_stale_temps(out)
    assert [p.name for p in removed] == [names["dead"]]
    assert sorted(leftovers(tmp_path)) == sorted(n for k, n in names.items() if k != "dead")


# ---------------------------------------------------------------------------------------------------------
# Filesystem errors: one line naming the file, nothing left behind
# ---------------------------------------------------------------------------------------------------------


class _FullDisk:
    """A file whose device fills up after ``room`` bytes (ENOSPC on the write that does not fit)."""

    def __init__(self, f, room: int):
        self.f, self.room = f, room

    def write(self, data) -> int:
        n = memoryview(data).nbytes
        if n > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= n
        return self.f.write(data)

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


def _fill_disk_after(monkeypatch, room: int, only: str = "") -> None:
    """Outputs written by vitinit.io.save (whose temp name contains ``only``) hit a full disk."""
    import vitinit.io.save as save

    def open_on_full_disk(path, mode="r", *args, **kwargs):
        f = open(path, mode, *args, **kwargs)
        return _FullDisk(f, room) if "w" in mode and only in Path(path).name else f

    monkeypatch.setattr(save, "open", open_on_full_disk, raising=False)


@pytest.mark.parametrize("target", ["vitdet", "detectron2"])
def test_disk_full_while_writing(mae, tmp_path, monkeypatch, target):
    _fill_disk_after(monkeypatch, room=4096)
    out = tmp_path / ("out.safetensors" if target == "vitdet" else "out.pth")
    line = one_line_error(run("convert", str(mae), "--to", target, *TINY, "-o", str(out)), "no space left")
    assert str(out) in line
    assert not out.exists() and leftovers(tmp_path) == []


def test_disk_full_during_the_pth_copy_takes_the_safetensors_along(mae, tmp_path, monkeypatch):
    _fill_disk_after(monkeypatch, room=1024, only=".out.pth.")  # the .safetensors fits, its copy does not
    out = tmp_path / "out.safetensors"
    one_line_error(run("convert", str(mae), *TINY, "--pth", "-o", str(out)), "no space left")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.parametrize("code", [errno.EROFS, errno.EDQUOT, errno.EACCES])
def test_filesystem_refusing_the_temp_file(mae, tmp_path, monkeypatch, code):
    def refuse(*args, **kwargs):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(atomic.tempfile, "mkstemp", refuse)
    out = tmp_path / "out.safetensors"
    line = one_line_error(run("convert", str(mae), *TINY, "-o", str(out)), f"cannot write {out}")
    assert {errno.EROFS: "read-only", errno.EDQUOT: "quota", errno.EACCES: "permission"}[code] in line
    assert not out.exists()


@pytest.fixture
def tiny_fs(tmp_path):
    """A real filesystem of the given size or read-only (tmpfs; needs root, else the test is skipped)."""
    mounted = []

    def mount(size_kb: int, *, read_only: bool = False) -> Path:
        where = tmp_path / f"fs{len(mounted)}"
        where.mkdir()
        opts = f"size={size_kb}k" + (",ro" if read_only else "")
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(where)], capture_output=True)
        if done.returncode != 0:
            pytest.skip("cannot mount a tmpfs here (not root); the monkeypatched cases cover the same code")
        mounted.append(where)
        return where

    yield mount
    for where in mounted:
        subprocess.run(["umount", "-l", str(where)], check=False)


@pytest.mark.parametrize("target", ["vitdet", "detectron2"])
def test_real_full_filesystem(mae, tmp_path, tiny_fs, target):
    fs = tiny_fs(64)
    out = fs / ("out.safetensors" if target == "vitdet" else "out.pth")
    one_line_error(run("convert", str(mae), "--to", target, *TINY, "-o", str(out)), "no space left")
    assert list(fs.iterdir()) == []


def test_real_full_filesystem_during_the_pth_copy(mae, tmp_path, tiny_fs):
    sized = tmp_path / "sized.safetensors"
    assert run("convert", str(mae), *TINY, "-o", str(sized)).exit_code == 0
    fs = tiny_fs(sized.stat().st_size * 3 // 2 // 1024)  # room for the .safetensors, not for both
    res = run("convert", str(mae), *TINY, "--pth", "-o", str(fs / "out.safetensors"))
    one_line_error(res, "no space left")
    assert list(fs.iterdir()) == []


def test_real_read_only_filesystem(mae, tiny_fs):
    fs = tiny_fs(64, read_only=True)
    one_line_error(run("convert", str(mae), *TINY, "-o", str(fs / "o.safetensors")), "read-only")


# ---------------------------------------------------------------------------------------------------------
# The CLI's wrapper: user errors are one line, bugs say so (traceback with -v)
# ---------------------------------------------------------------------------------------------------------


def test_a_bug_is_one_line_without_v_and_a_traceback_with_v(mae, tmp_path, monkeypatch):
    def buggy(*args, **kwargs):
        return 1 / 0

    monkeypatch.setattr("vitinit.convert.convert", buggy)
    line = one_line_error(run("convert", str(mae), "-o", str(tmp_path / "o.safetensors"), bug=True),
                          "internal error")
    assert "ZeroDivisionError" in line and "rerun with -v" in line
    res = run("convert", str(mae), "-o", str(tmp_path / "o.safetensors"), "-v", bug=True)
    assert isinstance(res.exception, ZeroDivisionError)


def test_memory_error_is_one_line(mae, tmp_path, monkeypatch):
    def too_big(*args, **kwargs):
        raise MemoryError

    monkeypatch.setattr("vitinit.convert.convert", too_big)
    one_line_error(run("convert", str(mae), "-o", str(tmp_path / "o.safetensors")), "out of memory")


def test_os_error_names_the_file(mae, tmp_path, monkeypatch):
    def missing(*args, **kwargs):
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), "/data/imagenet/val")

    monkeypatch.setattr("vitinit.convert.convert", missing)
    line = one_line_error(run("convert", str(mae)), "/data/imagenet/val: No such file or directory")
    assert "Errno" not in line
