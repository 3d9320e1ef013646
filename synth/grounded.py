"""Grounded generation: question/answer pairs that can be answered from a document chunk or a table record.

Documents (a folder of .txt/.md files, or one file) are cut into word windows with overlap so that a fact near a
boundary appears whole in some chunk; each chunk is a lineage root (its hash is the rows' ``seed_id``) and
provenance records the document and chunk. Table records come from a tabular records folder (the SDV stage's
output) and are refused unless its manifest says the privacy gate passed on exactly those records (content hash).
"""

from __future__ import annotations

from pathlib import Path

from orchard.dataio import content_hash
from orchard.errors import InputError

from .dedup import NearDupIndex
from .filters import response_reason
from .fill import Method
from .ledger import Ledger
from .methods_config import FilterConfig, SynthConfig
from .parsing import parse_qa_pairs
from .self_instruct import request_seed, user
from .templates import load_template

DOC_SUFFIXES = (".txt", ".md", ".markdown", ".rst")


def chunk_words(text: str, size: int, overlap: int) -> list[tuple[int, str]]:
    """(first word index, chunk text) windows of ``size`` words stepping by ``size - overlap``."""
    w = text.split()
    if not w:
        return []
    step = size - overlap
    out = []
    for start in range(0, len(w), step):
        out.append((start, " ".join(w[start : start + size])))
        if start + size >= len(w):
            break
    return out


def load_documents(path: Path) -> list[tuple[str, str]]:
    path = Path(path)
    if not path.exists():
        raise InputError("documents path not found", path=path, field="grounded.documents")
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.suffix.lower() in DOC_SUFFIXES)
    if not files:
        raise InputError(f"no {'/'.join(DOC_SUFFIXES)} files", path=path, field="grounded.documents")
    docs = []
    for f in files:
        try:
            docs.append((f.name if path.is_file() else f.relative_to(path).as_posix(), f.read_text(encoding="utf-8")))
        except UnicodeDecodeError as e:
            raise InputError(f"not UTF-8 text ({e.reason})", path=f) from None
    return docs


def check_table_folder(folder: Path) -> tuple[dict, list[dict]]:
    """The table folder's gate and its records, through the tabular gate's one check (InputError otherwise).

    The gate must have passed and ``train.parquet`` must still hold the records it passed (content hash): a
    folder whose records were swapped after the gate ran never reaches a teacher.
    """
    from .tabular.gate import read_gated_records

    folder = Path(folder)
    if not (folder / "train.parquet").exists():
        raise InputError("not a tabular records folder (no train.parquet)", path=folder, field="grounded.table")
    return read_gated_records(folder)


def _qa_filter(q: str, a: str, cfg: FilterConfig) -> str | None:
    n = len(q.split())
    if n < cfg.min_instruction_words:
        return "filter:too_short"
    if n > cfg.max_instruction_words:
        return "filter:too_long"
    return response_reason(a, cfg)


class Grounded(Method):
    def __init__(self, cfg: SynthConfig, teacher, ledger: Ledger, teacher_prov: dict):
        self.cfg, self.teacher, self.ledger, self.teacher_prov = cfg, teacher, ledger, teacher_prov

    def sources(self) -> list[dict]:
        g = self.cfg.grounded
        srcs = []
        if g.documents is not None:
            for name, text in load_documents(g.documents):
                for i, (start, chunk) in enumerate(chunk_words(text, g.chunk_words, g.overlap_words)):
                    srcs.append({"id": content_hash({"document": name, "chunk": chunk}), "kind": "doc", "text": chunk,
                                 "prov": {"method": "grounded_doc", "document": name, "chunk_index": i,
                                          "chunk_start_word": start}})
            if g.max_chunks:
                srcs = srcs[: g.max_chunks]
        if g.table is not None:
            gate, rows = check_table_folder(g.table)
            rows = rows[: g.max_rows or None]
            name = Path(g.table).name
            for i, r in enumerate(rows):
                rec = "\n".join(f"{k}: {v}" for k, v in r.items() if k not in ("id", "seed_id", "provenance"))
                # A record's own id is its lineage root (the tabular stage gives every row one).
                rid = r.get("id") or content_hash({"table": name, "record": rec})
                srcs.append({"id": rid, "kind": "table", "text": rec,
                             "prov": {"method": "grounded_table", "table": name, "row_index": i,
                                      "table_gate": bool(gate["passed"])}})
        return srcs

    # -- fill: a unit is one source (a chunk or a record), its candidates the question/answer pairs it gives --
    def start(self, _seeds: list[dict] | None = None) -> None:
        self.t_doc = load_template("grounded_doc", self.cfg.templates)
        self.t_tab = load_template("grounded_table", self.cfg.templates)
        self.srcs = self.sources()  # refuses a table whose gate did not pass before any call
        self.per_unit = self.cfg.grounded.questions_per_chunk
        self.cap = f"every source used ({len(self.srcs)} chunks or records)"

    def units(self):
        return (dict(s, i=i) for i, s in enumerate(self.srcs))

    async def fetch(self, pool, s: dict):
        from .teacher import ChatRequest

        g = self.cfg.grounded
        if s["kind"] == "doc":
            text = self.t_doc.render(document=s["prov"]["document"], chunk=s["text"], count=g.questions_per_chunk)
        else:
            text = self.t_tab.render(table=s["prov"]["table"], record=s["text"], count=g.questions_per_chunk)
        return await pool.submit(ChatRequest(
            messages=user(text), params={"temperature": g.temperature, "max_tokens": g.max_tokens},
            seed=request_seed(self.cfg.seed, 20, s["i"]), json=True, tag=f"grounded:{s['id']}"))

    def accept(self, s: dict, res) -> list[dict]:
        cfg, ledger = self.cfg, self.ledger
        # Duplicates are judged per source: "What is the age?" asked of two different records is two
        # examples, while two phrasings of one question about the same record are one.
        index = NearDupIndex(cfg.filters.near_dup)
        common = dict(seed_id=s["id"], parent_id=s["id"])
        if not res.ok:
            ledger.count("generated")
            ledger.lose("", res, "grounded", **common)
            return []
        pairs, bad = parse_qa_pairs(res.text)
        for frag, reason in bad:
            ledger.count("generated")
            ledger.reject(frag, reason, "grounded", **common)
        tpl = self.t_doc if s["kind"] == "doc" else self.t_tab
        out = []
        for q, a in pairs:
            ledger.count("generated")
            reason = _qa_filter(q, a, cfg.filters)
            hit = None
            if reason is None and cfg.filters.near_dup.enabled:
                hit, _, mh = index.check(q)
                reason = "near_dup" if hit else None
            if reason:
                ledger.reject(q, reason, "grounded", **common, detail={"dup_of": hit.dup_of} if hit else None)
                continue
            index.add(content_hash(q), q)
            ledger.count("instructions_kept")
            # The grounding travels with the example: a question about "the record" is unanswerable
            # without it, in training and in review (where it is shown as the context field).
            msgs = [{"role": "system", "content": grounding_prompt(s)},
                    {"role": "user", "content": q}, {"role": "assistant", "content": a}]
            prov = {**s["prov"], "seed_id": s["id"], "parent_id": s["id"], "teacher": self.teacher_prov,
                    **tpl.provenance(), "filters": {}, "grounding": s["text"]}
            out.append({"id": content_hash({"messages": msgs}), "seed_id": s["id"], "messages": msgs,
                        "provenance": prov})
        return out

    async def finish(self, pool, row: dict):
        return row  # the answer came with the question: nothing more to ask

    def conclude(self, row: dict, _result) -> dict:
        return row

    def candidate_text(self, row: dict) -> str:
        return row["messages"][1]["content"]


def grounding_prompt(source: dict) -> str:
    """The system turn that carries a grounded example's source (a document chunk or a table record)."""
    what = "this excerpt" if source["kind"] == "doc" else "this record"
    return f"Answer using only {what}:\n\n{source['text']}"
