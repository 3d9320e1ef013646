"""The review package against a live Argilla 2.8 server that this test session starts (SQL search engine, Redis,
worker): push, two reviewers annotating through the SDK, pull with agreement numbers checked by hand, the search
engine's filters/sort/paging/text/progress/similarity, an interrupted push repeated, a restart, and the web UI
in headless Chromium."""

from __future__ import annotations

import base64
import json
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from orchard.dataio import content_hash, read_rows

pytestmark = pytest.mark.server

# Screenshots of the web UI land in an ignored folder (a test run must not modify tracked files);
# benchmarks/results/artifacts/ keeps one for the docs.
ARTIFACTS = Path(os.environ.get("ORCHARD_TEST_ARTIFACTS", Path(__file__).resolve().parent.parent / ".artifacts"))


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    """One server per test session, on free ports, in a temporary folder."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server); the Argilla server needs Redis")
    from orchard.review.local_server import free_port, start_server, stop_server
    from orchard.review.server_env import ensure_server_env

    ensure_server_env()
    folder = tmp_path_factory.mktemp("argilla")
    info = start_server(folder, port=free_port(), redis_port=free_port())
    yield info
    stop_server(folder)


@pytest.fixture(scope="session")
def client(server):
    from orchard.review.client import connect

    return connect(server.url, api_key=server.api_key)


def _sft_row(i: int, score: float | None, method: str = "self_instruct") -> dict:
    msgs = [{"role": "user", "content": f"Question {i}: how do apples grow in orchard {i}?"},
            {"role": "assistant", "content": f"Answer {i}: apples grow on trees."}]
    prov = {"method": method, "seed_id": "s0"}
    if score is not None:
        prov["judge"] = {"overall": score, "scores": {}, "rationale": "", "model": "tiny"}
    return {"id": content_hash(msgs), "seed_id": "s0", "messages": msgs, "provenance": json.dumps(prov)}


def _reviewer_client(server, client, username):
    import argilla as rg

    user = client.users(username=username)
    key = client.http_client.get(f"/api/v1/users/{user.id}").json()["api_key"]
    return rg.Argilla(api_url=server.url, api_key=key)


def _respond(rclient, record_id, values: dict):
    from argilla._models import UserResponseModel

    rclient.api.records.create_record_response(
        record_id, UserResponseModel(values={k: {"value": v} for k, v in values.items()}, status="submitted",
                                     user_id=rclient.me.id))


def _server_ids(client, ds) -> dict:
    from orchard.review.client import iter_records

    return {r["external_id"]: r["id"] for r in iter_records(client, ds.id, include=())}


def test_credentials_file_is_private_and_server_local(server):
    mode = stat.S_IMODE(os.stat(server.credentials_path).st_mode)
    assert mode == 0o600
    assert server.url.startswith("http://127.0.0.1:")
    assert server.api_key not in repr(server)


def test_push_annotate_pull_agreement(server, client, tmp_path):
    from orchard.review.config import ArgillaReview
    from orchard.review.workflow import pull, push, status

    scores = [5, 4, 2, 1, 4, 5]
    rows = [_sft_row(i, s) for i, s in enumerate(scores)]
    cfg = ArgillaReview(url=server.url, dataset="sft-agree", workspace="team", min_submitted=2,
                        reviewers=["alice", "bob"], guidelines="Be strict.")
    os.environ["ORCHARD_TEST_KEY"] = server.api_key
    cfg = cfg.model_copy(update={"api_key_env": "ORCHARD_TEST_KEY"})
    out = push(rows, cfg, secrets_path=tmp_path / "reviewers.json")
    assert out["pushed"] == 6 and out["kind"] == "sft"
    assert stat.S_IMODE(os.stat(tmp_path / "reviewers.json").st_mode) == 0o600
    ds = client.datasets(name="sft-agree", workspace=client.workspaces(name="team"))
    assert ds.settings.guidelines == "Be strict." and ds.settings.distribution.min_submitted == 2
    # The judge's verdict arrives as suggestions; the uncertainty as the queue's priority.
    recs = {r.id: r for r in ds.records(with_suggestions=True)}
    r0 = recs[rows[0]["id"]]
    assert r0.suggestions["decision"].value == "accept" and r0.suggestions["quality"].value == 5
    assert recs[rows[3]["id"]].suggestions["decision"].value == "reject"
    assert r0.metadata["review_priority"] == 0.0 and recs[rows[1]["id"]].metadata["review_priority"] == 0.5

    ids = _server_ids(client, ds)
    alice, bob = _reviewer_client(server, client, "alice"), _reviewer_client(server, client, "bob")
    a_dec = ["accept", "accept", "accept", "reject", "reject", "accept"]
    b_dec = ["accept", "accept", "reject", "reject", "reject", "accept"]
    for i, row in enumerate(rows):
        va = {"decision": a_dec[i], "quality": [5, 4, 3, 1, 2, 5][i]}
        if i == 0:
            va["edited_response"] = "Answer 0: apples grow on apple trees, from blossoms."
        _respond(alice, ids[row["id"]], va)
        _respond(bob, ids[row["id"]], {"decision": b_dec[i], "quality": [5, 4, 2, 1, 1, 4][i]})

    prog = status(cfg)
    assert prog["total"] == 6 and prog["completed"] == 6
    assert prog["users"]["alice"]["completed"]["submitted"] == 6

    summary = pull(rows, tmp_path / "out", cfg)
    c = summary["counts"]
    assert (c["accepted"], c["rejected"], c["ties"], c["pending"], c["edited"]) == (3, 2, 1, 0, 1)
    acc = {r["id"]: r for r in read_rows(tmp_path / "out", "train")}
    edited = acc[rows[0]["id"]]
    assert edited["messages"][-1]["content"].startswith("Answer 0: apples grow on apple trees")
    review = json.loads(edited["provenance"])["review"]
    assert review["edited"] and review["original_response"] == "Answer 0: apples grow on trees."
    assert review["reviewers"] == ["alice", "bob"] and review["rating"] == 5
    assert json.loads(edited["provenance"])["judge"]["overall"] == 5  # earlier provenance kept
    pairs = read_rows(tmp_path / "out", "preferences")
    assert len(pairs) == 1 and pairs[0]["rejected"][0]["content"] == "Answer 0: apples grow on trees."
    assert summary["ties"][0]["id"] == rows[2]["id"]

    # Hand-computed: 5/6 observed agreement; Cohen pe = 4/6*3/6 + 2/6*3/6 = 1/2 -> kappa 2/3.
    ag = summary["agreement"]["decision"]
    assert ag["cohen_kappa"]["alice~bob"]["kappa"] == pytest.approx(2 / 3)
    # Fleiss: p(accept) = 7/12, Pe = (49 + 25)/144, P = 5/6 -> 46/70.
    assert ag["fleiss_kappa"] == pytest.approx(46 / 70)
    # Krippendorff nominal: 1 - (n - 1) * D/(n_a * n_r * 2) with n=12, 2 disagreeing pairs -> 1 - 22/70.
    assert ag["krippendorff_alpha"] == pytest.approx(48 / 70)
    # Judge (accept when score >= 3) vs majority on the 5 untied items: 4/5 agree; kappa (0.8-0.56)/0.44.
    ja = summary["judge_agreement"]
    assert ja["n"] == 5 and ja["accuracy"] == pytest.approx(0.8) and ja["cohen_kappa"] == pytest.approx(0.24 / 0.44)
    cal = summary["calibration"]
    assert cal["threshold"] == 4 and cal["accuracy"] == pytest.approx(0.8)
    assert cal["precision"] == pytest.approx(0.75) and cal["recall"] == pytest.approx(1.0)
    assert "Cohen's kappa alice~bob: 0.666667 (n=6)" in (tmp_path / "out" / "report.md").read_text()
    assert (tmp_path / "out" / "judge_vs_reviewers.png").stat().st_size > 1000

    # Pull again: same result; push again: nothing new, and no response is touched.
    again = pull(rows, tmp_path / "out2", cfg)
    assert again["counts"] == summary["counts"]
    assert read_rows(tmp_path / "out2", "train") == read_rows(tmp_path / "out", "train")
    out2 = push(rows + [_sft_row(99, 3)], cfg)
    assert (out2["pushed"], out2["already_there"]) == (1, 6)
    assert status(cfg)["users"]["bob"]["completed"]["submitted"] == 6


def test_interrupted_push_is_completed_without_duplicates(server, client, monkeypatch):
    from argilla.records._dataset_records import DatasetRecords

    from orchard.review.push import push_rows

    rows = [_sft_row(100 + i, 1 + i % 5) for i in range(8)]
    real_log = DatasetRecords.log
    calls = {"n": 0}

    def flaky_log(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise ConnectionError("network dropped mid-push")
        return real_log(self, *a, **k)

    monkeypatch.setattr(DatasetRecords, "log", flaky_log)
    with pytest.raises(ConnectionError):
        push_rows(client, rows, "interrupted", "team", batch_size=3)
    monkeypatch.setattr(DatasetRecords, "log", real_log)
    out = push_rows(client, rows, "interrupted", "team", batch_size=3)
    assert (out["pushed"], out["already_there"]) == (5, 3)
    ds = client.datasets(name="interrupted", workspace=client.workspaces(name="team"))
    ext = list(_server_ids(client, ds))
    assert len(ext) == 8 and set(ext) == {r["id"] for r in rows}


def _search(client, ds, body, offset=0, limit=50, me=False):
    path = f"/api/v1/{'me/' if me else ''}datasets/{ds.id}/records/search"
    r = client.http_client.post(path, json=body, params={"offset": offset, "limit": limit})
    assert r.status_code == 200, r.text
    return r.json()


def test_search_engine_filters_sort_paging_text_progress_similarity(server, client):
    from orchard.review.push import push_rows

    rows = [_sft_row(200 + i, [1, 2, 3, 4, 5, 3, 2, 4][i], method="evol" if i % 2 else "self_instruct")
            for i in range(8)]
    rows[5]["messages"][0]["content"] = "Pruning pear trees in winter"
    push_rows(client, rows, "search", "team", with_vectors=True)
    ds = client.datasets(name="search", workspace=client.workspaces(name="team"))
    ext = {v: k for k, v in _server_ids(client, ds).items()}

    def ids(res):
        return [ext[i["record"]["id"]] for i in res["items"]]

    # Metadata terms filter
    res = _search(client, ds, {"filters": {"and": [{"type": "terms", "scope": {"entity": "metadata",
                                                    "metadata_property": "method"}, "values": ["evol"]}]}})
    assert res["total"] == 4
    # Metadata range filter + sort by score desc, then inserted order
    body = {"filters": {"and": [{"type": "range", "scope": {"entity": "metadata", "metadata_property": "judge_score"},
                                 "ge": 3, "le": 4}]},
            "sort": [{"scope": {"entity": "metadata", "metadata_property": "judge_score"}, "order": "desc"}]}
    res = _search(client, ds, body)
    assert res["total"] == 4
    scores = [json.loads(next(r for r in rows if r["id"] == i)["provenance"])["judge"]["overall"] for i in ids(res)]
    assert scores == [4, 4, 3, 3]
    # Paging: two pages of 3 and a remainder, no overlaps, same total
    pages = [_search(client, ds, {"sort": [{"scope": {"entity": "record", "property": "inserted_at"},
                                            "order": "asc"}]}, offset=o, limit=3) for o in (0, 3, 6)]
    seen = [i for p in pages for i in ids(p)]
    assert [len(ids(p)) for p in pages] == [3, 3, 2] and len(set(seen)) == 8 and pages[2]["total"] == 8
    # Text query (AND of words, prefix with *)
    res = _search(client, ds, {"query": {"text": {"q": "pear wint*"}}})
    assert ids(res) == [rows[5]["id"]]
    res = _search(client, ds, {"query": {"text": {"q": "apples", "field": "instruction"}}})
    assert res["total"] == 7
    # Suggestion filter: the judge suggested "reject" for scores below the middle of the 1-5 scale
    res = _search(client, ds, {"filters": {"and": [{"type": "terms", "scope": {"entity": "suggestion",
                                                    "question": "decision", "property": "value"},
                                                    "values": ["reject"]}]}})
    assert res["total"] == 3
    # The UI's queue (pending for me), with no sort: hardest first (review_priority = judge uncertainty)
    queue = _search(client, ds, {"filters": {"and": [{"type": "terms", "scope": {"entity": "response",
                                                      "property": "status"}, "values": ["pending"]}]}}, me=True)
    prio = [json.loads(next(r for r in rows if r["id"] == i)["provenance"])["judge"]["overall"] for i in ids(queue)]
    assert prio[:2] == [3, 3] and sorted(prio[-2:]) == [1, 5]
    # Progress and metadata metrics
    assert ds.progress() == {"total": 8, "completed": 0, "pending": 8}
    mp = {p["name"]: p["id"] for p in client.http_client.get(f"/api/v1/me/datasets/{ds.id}/metadata-properties")
          .json()["items"]}
    metrics = client.http_client.get(f"/api/v1/metadata-properties/{mp['judge_score']}/metrics").json()
    assert (metrics["min"], metrics["max"]) == (1, 5)
    terms = client.http_client.get(f"/api/v1/metadata-properties/{mp['method']}/metrics").json()
    assert {v["term"]: v["count"] for v in terms["values"]} == {"evol": 4, "self_instruct": 4}
    # Similarity: the record itself aside, the nearest neighbours come back scored in order
    res = _search(client, ds, {"query": {"vector": {"name": "instruction_vec", "record_id":
                                                    _server_ids(client, ds)[rows[5]["id"]]}}}, limit=3)
    sims = [i["query_score"] for i in res["items"]]
    assert len(sims) == 3 and sims == sorted(sims, reverse=True) and rows[5]["id"] not in ids(res)


def test_review_stage_pending_then_done(server, client, tmp_path, monkeypatch):
    from orchard.dataio import write_split
    from orchard.review.api import review_stage
    from orchard.review.config import ReviewConfig

    monkeypatch.setenv("ORCHARD_TEST_KEY", server.api_key)
    rows = [_sft_row(300 + i, s) for i, s in enumerate([5, 2, 4])]
    write_split(tmp_path / "sft", "train", rows)
    cfg = ReviewConfig.model_validate({"mode": "argilla", "argilla": {
        "url": server.url, "api_key_env": "ORCHARD_TEST_KEY", "dataset": "stage", "workspace": "team"}})
    first = review_stage(tmp_path / "sft", tmp_path / "out1", tmp_path / "work", cfg)
    assert first["status"] == "pending" and first["counts"]["pending"] == 3 and "--from review" in first["message"]
    assert first["push"]["pushed"] == 3
    json.dumps(first)  # the runner writes it as the manifest
    ds = client.datasets(name="stage", workspace=client.workspaces(name="team"))
    ids = _server_ids(client, ds)
    for row, decision in zip(rows, ["accept", "reject", "accept"]):
        _respond(client, ids[row["id"]], {"decision": decision})
    cfg.argilla.wait, cfg.argilla.wait_timeout_s = True, 30
    second = review_stage(tmp_path / "sft", tmp_path / "out2", tmp_path / "work", cfg)
    assert second["status"] == "done" and second["push"]["pushed"] == 0
    assert (second["counts"]["accepted"], second["counts"]["rejected"]) == (2, 1)
    assert {r["id"] for r in read_rows(tmp_path / "out2", "train")} == {rows[0]["id"], rows[2]["id"]}


def _pref_row(i: int, orders_agree: bool = True) -> dict:
    prompt = [{"role": "user", "content": f"Name a good apple for baking, variant {i}."}]
    chosen = [{"role": "assistant", "content": f"Bramley {i}: tart and holds its shape."}]
    rejected = [{"role": "assistant", "content": f"Anything {i}."}]
    prov = {"method": "policy_sample", "pairwise": {"winner": "a", "orders_agree": orders_agree, "margin": 0.8}}
    return {"id": content_hash([prompt, chosen, rejected]), "seed_id": "s", "prompt": prompt, "chosen": chosen,
            "rejected": rejected, "provenance": json.dumps(prov)}


def test_preference_push_and_pull(server, client, tmp_path):
    from orchard.review.config import ArgillaReview
    from orchard.review.push import push_rows
    from orchard.review.workflow import pull

    rows = [_pref_row(i, orders_agree=i != 3) for i in range(4)]
    out = push_rows(client, rows, "prefs", "team")
    assert out["kind"] == "preference" and out["pushed"] == 4
    ds = client.datasets(name="prefs", workspace=client.workspaces(name="team"))
    recs = {r.id: r for r in ds.records(with_suggestions=True)}
    sides = {}
    for row in rows:
        rec = recs[row["id"]]
        sides[row["id"]] = "a" if rec.fields["response_a"] == row["chosen"][0]["content"] else "b"
        assert rec.suggestions["preference"].value == sides[row["id"]]  # the judge's winner, on screen
        assert rec.metadata["review_priority"] == (1.0 if row is rows[3] else pytest.approx(0.2))
    ids = _server_ids(client, ds)
    flip = {"a": "b", "b": "a"}
    picks = [sides[rows[0]["id"]], sides[rows[1]["id"]], flip[sides[rows[2]["id"]]], "tie"]
    for row, pick in zip(rows, picks):
        _respond(client, ids[row["id"]], {"preference": pick})
    summary = pull(rows, tmp_path / "out", ArgillaReview(url=server.url, dataset="prefs", workspace="team",
                                                          api_key_env="ORCHARD_TEST_KEY"), client=client)
    assert (summary["counts"]["accepted"], summary["counts"]["ties"]) == (3, 1)
    got = {r["id"]: r for r in read_rows(tmp_path / "out", "train")}
    assert got[rows[2]["id"]]["chosen"] == rows[2]["rejected"]  # reviewers overturned the judge
    assert got[rows[0]["id"]]["chosen"] == rows[0]["chosen"]
    assert summary["judge_agreement"]["accuracy"] == pytest.approx(2 / 3)
    from orchard.errors import InputError

    with pytest.raises(InputError, match="made for other rows"):
        push_rows(client, [_sft_row(1, 3)], "prefs", "team")


def test_cli_status_and_push(server, client, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from orchard.dataio import write_split
    from orchard.review.cli import app

    monkeypatch.setenv("ORCHARD_TEST_KEY", server.api_key)
    common = ["--url", server.url, "--api-key-env", "ORCHARD_TEST_KEY", "--workspace", "team"]
    write_split(tmp_path / "d", "train", [_sft_row(400, 4), _sft_row(401, 2)])
    r = CliRunner().invoke(app, ["push", str(tmp_path / "d"), "--dataset", "cli", *common])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["pushed"] == 2
    ds = client.datasets(name="cli", workspace=client.workspaces(name="team"))
    _respond(client, _server_ids(client, ds)[_sft_row(400, 4)["id"]], {"decision": "accept"})
    r = CliRunner().invoke(app, ["status", "--dataset", "cli", *common])
    assert r.exit_code == 0 and "cli: 1/2 completed, 1 pending" in r.stdout, r.output
    assert "argilla: submitted 1" in r.stdout
    r = CliRunner().invoke(app, ["health", "--dir", str(server.data_dir)])
    assert r.exit_code == 0 and r.stdout.startswith(f"up: {server.url}") and "worker=ok" in r.stdout
    r = CliRunner().invoke(app, ["status", "--dataset", "nope", *common])
    assert r.exit_code == 2 and "no dataset 'nope'" in r.output


def test_web_ui_signs_in_and_shows_the_queue(server, client):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium is not installed")
    ds = client.datasets(name="sft-agree", workspace=client.workspaces(name="team"))
    auth = base64.b64encode(f"{server.username}:{server.password}".encode()).decode()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "review_queue.png"
    shot.unlink(missing_ok=True)
    profile = shot.parent / ".chromium-profile"
    shutil.rmtree(profile, ignore_errors=True)
    base = [chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            "--window-size=1400,900", "--virtual-time-budget=15000", f"--user-data-dir={profile}"]

    def browse(*args):
        return subprocess.run(base + list(args), capture_output=True, text=True, timeout=120).stdout

    # The sign-in page signs in with ?auth=base64(user:password); the session lives on in the browser profile.
    browse("--dump-dom", f"{server.url}/sign-in?auth={auth}")
    queue = f"{server.url}/dataset/{ds.id}/annotation-mode"
    dom = browse("--dump-dom", queue)
    browse(f"--screenshot={shot}", queue)
    shutil.rmtree(profile, ignore_errors=True)
    assert "Keep this example?" in dom, dom[-2000:]  # the question of the record on screen
    assert shot.exists() and shot.stat().st_size > 10_000


def test_restart_keeps_everything(server, client):
    from orchard.review.local_server import server_health, start_server, stop_server

    from orchard.review.push import push_rows

    rows = [_sft_row(500, 4), _sft_row(501, 2)]
    push_rows(client, rows, "restart", "team")
    ds = client.datasets(name="restart", workspace=client.workspaces(name="team"))
    _respond(client, _server_ids(client, ds)[rows[0]["id"]], {"decision": "accept", "quality": 4})
    before = ds.progress(with_users_distribution=True)
    assert before["completed"] == 1
    assert stop_server(server.data_dir)
    assert not server_health(server.data_dir)["running"]
    port = int(server.url.rsplit(":", 1)[1])
    info = start_server(server.data_dir, port=port)
    assert info.api_key == server.api_key
    ds = client.datasets(name="restart", workspace=client.workspaces(name="team"))
    assert ds.progress(with_users_distribution=True) == before
    recs = list(ds.records(with_responses=True))
    answered = {r.id: r for r in recs}[rows[0]["id"]]
    assert len(recs) == 2 and answered.responses["decision"][0].value == "accept"
    assert answered.responses["quality"][0].value == 4
    assert _search(client, ds, {"query": {"text": {"q": "orchard 501"}}})["total"] == 1  # text index intact
