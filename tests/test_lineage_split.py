"""The held-out split by lineage: no seed family on both sides, near-duplicates joined, sizes as asked."""

from orchard.lineage import lineage_split, seeds_on_both_sides


def _row(i, seed, text):
    return {"id": f"r{i}", "seed_id": seed, "messages": [{"role": "user", "content": text},
                                                         {"role": "assistant", "content": "ok"}]}


def test_no_seed_family_on_both_sides_and_size_close_to_target():
    rows = []
    words = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet"]
    for s in range(40):
        for k in range(s % 3 + 1):  # families of 1-3 items
            uniq = " ".join(f"{words[(s + j) % 10]}{s}x{k}" for j in range(8))
            rows.append(_row(len(rows), f"seed{s}", f"Explain the topic {uniq} in detail"))
    res = lineage_split(rows, test_size=0.25, seed=3)
    assert not seeds_on_both_sides(res.train, res.test)
    assert len(res.train) + len(res.test) == len(rows)
    frac = len(res.test) / len(rows)
    assert 0.2 <= frac <= 0.32, frac
    assert res.stats()["seeds_on_both_sides"] == 0


def test_near_duplicates_of_different_seeds_fall_on_the_same_side():
    base = "Write a short poem about the quiet winter morning in the mountains near the lake"
    rows = []
    for s in range(30):
        rows.append(_row(len(rows), f"s{s}", f"Distinct task number {s} about subject{s} and object{s} today"))
    # a paraphrase pair grown from two different seeds: must not straddle the split
    rows.append(_row(100, "sA", base))
    rows.append(_row(101, "sB", base + " please"))
    for seed in range(10):
        res = lineage_split(rows, test_size=0.3, threshold=0.7, seed=seed)
        sides = {r["id"]: "test" for r in res.test} | {r["id"]: "train" for r in res.train}
        assert sides["r100"] == sides["r101"]
    assert res.joined_by_near_duplicates == 1


def test_split_is_deterministic_for_a_seed_and_moves_with_it():
    rows = [_row(i, f"s{i}", f"task {i} with words w{i} v{i} u{i}") for i in range(50)]
    a = lineage_split(rows, 0.2, seed=1)
    b = lineage_split(rows, 0.2, seed=1)
    c = lineage_split(rows, 0.2, seed=2)
    assert [r["id"] for r in a.test] == [r["id"] for r in b.test]
    assert [r["id"] for r in a.test] != [r["id"] for r in c.test]
