"""Tests of cartocell_bmz.io.hashing: the one sha256 of a file."""

from __future__ import annotations

import hashlib

from cartocell_bmz.io.hashing import sha256_file


def test_sha256_of_a_file_in_chunks(tmp_path):
    data = bytes(range(256)) * 5000  # 1.28 MB: more than one chunk
    path = tmp_path / "blob.bin"
    path.write_bytes(data)
    expected = hashlib.sha256(data).hexdigest()
    assert sha256_file(path) == expected
    assert sha256_file(path, chunk=1000) == expected  # the chunk size does not matter
    (tmp_path / "empty").write_bytes(b"")
    assert sha256_file(tmp_path / "empty") == hashlib.sha256(b"").hexdigest()


def test_the_modules_that_hash_files_share_it():
    from cartocell_bmz.bmz import export, safety

    assert safety.sha256_file is sha256_file and export.sha256_of is sha256_file
