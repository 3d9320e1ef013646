"""What reviewers see of a row's provenance: labelled lines in a stable order, nested facts under their parent's
name, and no absolute local path (only the file's name), while URLs and relative names stay as they are."""

from orchard.review.provenance_view import readable_provenance


def test_provenance_reads_as_labelled_lines_without_local_paths():
    prov = {
        "table_gate": True,
        "source_file": "/home/ann/projects/clinic/seeds.jsonl",
        "judge": {"overall": 4.25, "scores": {"helpful": 5}, "rationale": "Cites /srv/data/x/notes.txt and "
                  "https://example.org/a/b correctly"},
        "method": "grounded_doc",
        "document": "guides/pruning.md",
        "grounding": "the full chunk text",
        "teacher": {"model": "qwen-7b", "hosts": ["127.0.0.1:8000", "api.example.org"]},
        "seed_id": "abc123",
        "filters": {"rouge_l_max": 0.4123456, "pii": []},
        "export": "file:///var/lib/orchard/run/train.parquet",
        "windows": "C:\\Users\\ann\\table.csv",
        "home": "~/tables/visits.csv",
        "empty": None,
    }
    text = readable_provenance(prov, leave_out=("grounding",))
    assert text.splitlines() == [
        "Method: grounded_doc",
        "Seed id: abc123",
        "Teacher hosts: 127.0.0.1:8000, api.example.org",
        "Teacher model: qwen-7b",
        "Judge overall: 4.25",
        "Judge rationale: Cites notes.txt and https://example.org/a/b correctly",
        "Judge scores helpful: 5",
        "Filters rouge l max: 0.4123",
        "Document: guides/pruning.md",
        "Export: train.parquet",
        "Home: visits.csv",
        "Source file: seeds.jsonl",
        "Table gate: yes",
        "Windows: table.csv",
    ]


def test_long_provenance_is_cut():
    text = readable_provenance({"method": "x", "notes": ["word " * 100] * 30})
    assert len(text) <= 4000 and text.endswith("…")
    assert all(len(line) < 330 for line in text.splitlines())
