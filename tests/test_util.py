"""ksae._util: writing files atomically."""

from __future__ import annotations

import ksae_helpers as kh


def test_atomic_write_gives_the_permissions_of_a_plain_write(tmp_path):
    """Results and figures must be readable like any file the user writes (mkstemp alone makes them 0600)."""
    import os

    plain = tmp_path / "plain.txt"
    plain.write_bytes(b"x")
    written = kh.atomic_write_bytes(tmp_path / "sub" / "atomic.txt", b"payload")
    assert written.read_bytes() == b"payload"
    assert os.stat(written).st_mode & 0o777 == os.stat(plain).st_mode & 0o777
    assert [p.name for p in written.parent.iterdir()] == ["atomic.txt"]  # no temp file left behind
