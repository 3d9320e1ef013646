"""Atomic outputs: a crash inside a stage leaves the previous output untouched and no temp folder behind."""

import json

import pytest

from orchard.dataio import atomic_dir, content_hash, read_rows, with_provenance, write_split


def test_atomic_dir_keeps_old_output_on_error(tmp_path):
    final = tmp_path / "stage"
    with atomic_dir(final) as tmp:
        (tmp / "a.txt").write_text("v1")
    with pytest.raises(RuntimeError):
        with atomic_dir(final) as tmp:
            (tmp / "a.txt").write_text("v2-half")
            raise RuntimeError("killed")
    assert (final / "a.txt").read_text() == "v1"
    assert [p.name for p in tmp_path.iterdir()] == ["stage"]


def test_roundtrip_and_provenance_merge(tmp_path):
    row = {"id": "x", "seed_id": "s", "provenance": {"method": "seed"},
           "messages": [{"role": "user", "content": "hi"}]}
    write_split(tmp_path, "train", [with_provenance(row, judge={"overall": 4})])
    back = read_rows(tmp_path)[0]
    assert json.loads(back["provenance"]) == {"method": "seed", "judge": {"overall": 4}}
    assert back["messages"][0]["content"] == "hi"
    assert content_hash({"a": 1, "b": 2}) == content_hash({"b": 2, "a": 1})
