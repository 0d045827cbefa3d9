"""The output's sha256 computed while it is written, from a header known only later (issue 17)."""

from __future__ import annotations

import hashlib
import threading

import pytest

from vitinit.io.follow_hash import FollowingHash


def test_hash_follows_the_writer_and_equals_the_final_file(tmp_path):
    path = tmp_path / "f.bin"
    final_header = b"H" * 16
    header_known = threading.Event()
    body = bytes(range(256)) * 20_000  # 5 MB: several read-back chunks

    def prefix() -> bytes:
        header_known.wait(10)  # the source's hash arrives while the body is being written
        return final_header

    with open(path, "wb") as f:
        follower = FollowingHash(path, 16 + len(body), prefix)
        f.write(b"0" * 16)  # the provisional header
        for i in range(0, len(body), 700_001):
            f.write(body[i : i + 700_001])
            f.flush()
            follower.advance(f.tell())
            if i > len(body) // 2:
                header_known.set()
        header_known.set()
        header, digest = follower.result()
        f.seek(0)
        f.write(header)
    assert digest == hashlib.sha256(path.read_bytes()).hexdigest()


def test_an_error_in_the_header_reaches_the_writer_and_abort_returns_at_once(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"x" * 10)

    def bad_prefix() -> bytes:
        raise ValueError("late metadata changed length")

    with pytest.raises(ValueError, match="changed length"):
        FollowingHash(path, 10, bad_prefix).result()
    waiting = FollowingHash(path, 10_000, lambda: b"")  # waits for bytes that never come
    waiting.abort()
    waiting._thread.join(5)
    assert not waiting._thread.is_alive()
