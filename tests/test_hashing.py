"""Hashing a source once: small files keep their bytes for the upload, large ones do not."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from transcribed.backends import Content
from transcribed.job import KEEP_CONTENT_BYTES, _hash
from transcribed.paths import open_beneath


def _sha256(path: Path, keep_up_to: int = 0) -> tuple[str, bytes | None]:
    opened = open_beneath(path.parent, path.name)
    assert opened is not None
    fd, _ = opened
    try:
        digest, content, _ = _hash(fd, keep_up_to)
    finally:
        os.close(fd)
    return digest, content


@pytest.mark.parametrize(
    ("size", "kept"),
    [(10, True), (KEEP_CONTENT_BYTES, True), (KEEP_CONTENT_BYTES + 1, False), (3 << 20, False)],
)
def test_small_files_keep_their_bytes_and_every_file_gets_its_digest(
    tmp_path: Path, size: int, kept: bool
) -> None:
    data = os.urandom(size)
    path = tmp_path / "a.mp3"
    path.write_bytes(data)
    digest, content = _sha256(path, KEEP_CONTENT_BYTES)
    assert digest == hashlib.sha256(data).hexdigest()
    assert content == (data if kept else None)
    assert _sha256(path) == (digest, None)  # nothing kept unless asked


def test_a_symlink_is_not_followed(tmp_path: Path) -> None:
    target = tmp_path / "outside.mp3"
    target.write_bytes(b"secret")
    (tmp_path / "link.mp3").symlink_to(target)
    assert open_beneath(tmp_path, "link.mp3") is None


def test_content_is_handed_over_once() -> None:
    content = Content(b"abc")
    assert content.take() == b"abc"
    assert content.take() is None
