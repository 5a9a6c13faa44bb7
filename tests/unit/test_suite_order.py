"""The suite's own schedule: the files named as the longest, to start first under xdist, are files that exist (a
renamed one would fall back to the end silently and serialize the tail again)."""

from __future__ import annotations

from conftest import LONGEST_FIRST, TESTS


def test_every_file_named_longest_first_exists():
    missing = [name for name in LONGEST_FIRST if not (TESTS / name).is_file()]
    assert not missing, f"tests/conftest.py LONGEST_FIRST names files that are gone: {missing}"
    assert len(set(LONGEST_FIRST)) == len(LONGEST_FIRST)
