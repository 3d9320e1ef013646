"""The review package against live Argilla 2.8 servers that this test session starts (SQL search engine, Redis,
worker), one on SQLite and one on PostgreSQL (a throwaway cluster, started through `orchard review serve
--database-url postgresql://…`): push, two reviewers annotating through the SDK, pull with agreement numbers
checked by hand, the search engine's filters/sort/paging/text/progress/similarity, an interrupted push repeated,
kill -9 while reviewers write and a restart, and the web UI in headless Chromium. Tests that take the `server`
fixture run on both databases.

Security: the server's folder and database files are private (checked as a real second local user), Redis
refuses clients without the password, and no secret reaches a log, a process listing or state.json."""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from orchard.dataio import content_hash, read_rows

pytestmark = pytest.mark.server

# Screenshots of the web UI land in an ignored folder (a test run must not modify tracked files);
# benchmarks/results/artifacts/ keeps one for the docs.
ARTIFACTS = Path(os.environ.get("ORCHARD_TEST_ARTIFACTS", Path(__file__).resolve().parent.parent / ".artifacts"))


BACKENDS = ["sqlite", "postgresql"]


def _shared_folder(prefix: str) -> Path:
    """A fresh folder that other local users may enter (pytest's own tmp folder is 700 and would hide what the
    server's modes do); removed by the caller."""
    parent = Path(tempfile.mkdtemp(prefix=prefix))
    os.chmod(parent, 0o755)
    return parent


@pytest.fixture(scope="session")
def sqlite_server():
    """One SQLite-backed server per test session, on free ports, in a folder other users could reach."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server); the Argilla server needs Redis")
    from orchard.review.local_server import free_port, start_server, stop_server
    from orchard.review.server_env import ensure_server_env

    ensure_server_env()
    parent = _shared_folder("orchard-review-")
    folder = parent / "argilla"
    info = start_server(folder, port=free_port(), redis_port=free_port())
    yield info
    stop_server(folder)
    shutil.rmtree(parent, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_cluster():
    from pg_cluster import PgCluster, pg_bin

    from orchard.review.local_server import free_port

    if pg_bin() is None:
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql)")
    cluster = PgCluster(free_port()).start()
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def pg_server(pg_cluster, tmp_path_factory):
    """A PostgreSQL-backed server, started the way a user does: `orchard review serve --database-url …`."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server); the Argilla server needs Redis")
    from orchard.review.local_server import credentials, free_port, start_server, stop_server
    from orchard.review.server_env import ensure_server_env

    ensure_server_env(postgres=True)
    folder = tmp_path_factory.mktemp("argilla-pg")
    cmd = [sys.executable, "-m", "orchard.cli", "review", "serve", "--dir", str(folder), "--port", str(free_port()),
           "--database-url", pg_cluster.url]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Argilla is up at" in proc.stdout
    info = start_server(folder)  # finds it running (and the database it was started with)
    creds = credentials(folder)
    assert not [s for s in (pg_cluster.password, creds["redis_password"], creds["api_key"], creds["password"])
                if s in proc.stdout + proc.stderr]
    yield info
    stop_server(folder)


@pytest.fixture(params=BACKENDS)
def server(request):
    """The server of one backend: tests taking it run on SQLite and on PostgreSQL."""
    return request.getfixturevalue(f"{'pg' if request.param == 'postgresql' else request.param}_server")


@pytest.fixture
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


def _modes(folder: Path) -> dict:
    """{path relative to folder: mode} for the folder and everything in it."""
    out = {".": stat.S_IMODE(folder.stat().st_mode)}
    for p in folder.rglob("*"):
        out[str(p.relative_to(folder))] = stat.S_IMODE(p.lstat().st_mode)
    return out


def test_server_folder_and_database_files_are_private(server):
    assert server.url.startswith("http://127.0.0.1:")
    assert server.api_key not in repr(server)
    modes = _modes(server.data_dir)
    folders = {p for p in modes if p == "." or (server.data_dir / p).is_dir()}
    assert {p: m for p, m in modes.items() if p in folders and m != 0o700} == {}
    assert {p: m for p, m in modes.items() if p not in folders and m != 0o600} == {}
    assert {"credentials.json", "logs/server.log", "logs/worker.log", "logs/redis.log"} <= set(modes)
    if server.data_dir.joinpath("argilla", "argilla.db").exists():  # SQLite: the database holds every API key
        # WAL mode keeps its -wal and -shm files while the server runs; they hold recent writes (keys included).
        assert {"argilla/argilla.db", "argilla/argilla.db-wal", "argilla/argilla.db-shm"} <= set(modes)


def _as_user(user: str, *cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(["runuser", "-u", user, "--", *cmd], capture_output=True, text=True, timeout=30)


@pytest.mark.skipif(os.geteuid() != 0, reason="creating a second local user and switching to it needs root")
def test_a_local_non_owner_cannot_read_the_keys(sqlite_server):
    """As a real unprivileged local user: the owner's key (credentials.json, the database and its WAL) cannot be
    read, while a world-readable file beside the server's folder can (so the denial comes from orchard's modes)."""
    from pg_cluster import ensure_system_user

    server, probe = sqlite_server, "orchard-probe"
    ensure_system_user(probe)
    control = server.data_dir.parent / "control.txt"
    control.write_text("readable\n")
    os.chmod(control, 0o644)
    assert _as_user(probe, "cat", str(control)).stdout == "readable\n"
    db = server.data_dir / "argilla" / "argilla.db"
    secrets = [server.credentials_path, db, db.with_name("argilla.db-wal"), db.with_name("argilla.db-shm")]
    assert server.api_key.encode() in db.read_bytes() + db.with_name("argilla.db-wal").read_bytes()
    for path in secrets:
        r = _as_user(probe, "cat", str(path))
        assert r.returncode != 0 and "Permission denied" in r.stderr, (path, r.stdout[:200], r.stderr)
    # Even with the folders opened up (an older orchard made them 755), the files themselves stay closed.
    try:
        os.chmod(server.data_dir, 0o755)
        os.chmod(db.parent, 0o755)
        for path in secrets:
            r = _as_user(probe, "cat", str(path))
            assert r.returncode != 0 and "Permission denied" in r.stderr, (path, r.stderr)
        assert _as_user(probe, "ls", str(db.parent)).returncode == 0  # the folder was open: the file mode held
    finally:
        os.chmod(db.parent, 0o700)
        os.chmod(server.data_dir, 0o700)


def test_redis_refuses_clients_without_the_password_and_secrets_stay_hidden(server):
    from orchard.review.local_server import credentials, read_state, redis_call

    creds = credentials(server.data_dir)
    port = read_state(server.data_dir)["redis_port"]
    assert redis_call(port, "PING").startswith(b"-NOAUTH")
    assert redis_call(port, "KEYS", "*").startswith(b"-NOAUTH")
    assert redis_call(port, "PING", password="wrong").startswith(b"-WRONGPASS")
    assert redis_call(port, "PING", password=creds["redis_password"]) == b"+PONG\r\n"
    # No secret on any command line, in a log or in state.json.
    secrets = [creds[k] for k in ("redis_password", "api_key", "password", "auth_secret_key")]
    if creds.get("database_url"):
        from sqlalchemy.engine import make_url

        secrets.append(make_url(creds["database_url"]).password)
    listing = subprocess.run(["ps", "-eww", "-o", "args"], capture_output=True, text=True).stdout
    assert "launch.py serve" in listing and "redis-server" in listing
    texts = {"ps": listing, "state.json": (server.data_dir / "state.json").read_text()}
    texts.update({p.name: p.read_text(errors="replace") for p in (server.data_dir / "logs").glob("*.log")})
    leaks = [(name, i) for name, text in texts.items() for i, s in enumerate(secrets) if s in text]
    assert leaks == []


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
    rows[6]["messages"][0]["content"] = "Poaching pears for a Crème brûlée tart"
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
    assert res["total"] == 6
    # Accented words, in every field and in one (the database stores JSON with escaped non-ASCII characters)
    assert ids(_search(client, ds, {"query": {"text": {"q": "BRÛLÉE pear*"}}})) == [rows[6]["id"]]
    assert ids(_search(client, ds, {"query": {"text": {"q": "crème", "field": "instruction"}}})) == [rows[6]["id"]]
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


def test_pull_waits_for_the_pushed_overlap_and_provenance_reads_plainly(server, client, tmp_path, monkeypatch):
    """`pull` without --min-submitted decides only what the overlap recorded at push allows (the server's
    "completed"); reviewers see provenance as labelled lines without the paths of the machine that made it."""
    from typer.testing import CliRunner

    from orchard.dataio import with_provenance, write_split
    from orchard.review.cli import app

    monkeypatch.setenv("ORCHARD_TEST_KEY", server.api_key)
    monkeypatch.chdir(tmp_path)  # new reviewers' passwords land in ./argilla-reviewers.json
    common = ["--url", server.url, "--api-key-env", "ORCHARD_TEST_KEY", "--workspace", "team", "--dataset", "overlap"]
    rows = [_sft_row(600 + i, 4) for i in range(3)]
    rows[0] = with_provenance(rows[0], method="grounded_table", table="/root/private/tables/clinic-visits",
                              source_file="/home/ann/seeds/seeds.jsonl", table_gate=True,
                              teacher={"model": "qwen-7b", "hosts": ["127.0.0.1:8000"]},
                              grounding="age: 41\nvisits: 3")
    write_split(tmp_path / "d", "train", rows)
    r = CliRunner().invoke(app, ["push", str(tmp_path / "d"), "--min-submitted", "2", "--reviewer", "carol",
                                 "--reviewer", "dave", *common])
    assert r.exit_code == 0, r.output
    assert (json.loads(r.stdout.split("\nreviewer passwords")[0])["pushed"],
            json.loads(r.stdout.split("\nreviewer passwords")[0])["min_submitted"]) == (3, 2)

    ds = client.datasets(name="overlap", workspace=client.workspaces(name="team"))
    shown = {r.id: r for r in ds.records()}[rows[0]["id"]].fields
    assert shown["context"] == "age: 41\nvisits: 3"
    prov = shown["provenance"].splitlines()
    assert prov[:2] == ["Method: grounded_table", "Seed id: s0"]
    assert {"Teacher model: qwen-7b", "Teacher hosts: 127.0.0.1:8000", "Judge overall: 4", "Table: clinic-visits",
            "Source file: seeds.jsonl", "Table gate: yes"} <= set(prov)
    assert not any(s in shown["provenance"] for s in ("/root", "/home", "{", "grounding", "age: 41"))

    ids = _server_ids(client, ds)
    carol, dave = _reviewer_client(server, client, "carol"), _reviewer_client(server, client, "dave")
    for row in rows:
        _respond(carol, ids[row["id"]], {"decision": "accept"})
    _respond(dave, ids[rows[0]["id"]], {"decision": "accept"})
    assert (ds.progress()["completed"], ds.progress()["pending"]) == (1, 2)  # the server's own view

    r = CliRunner().invoke(app, ["pull", str(tmp_path / "d"), "--out", str(tmp_path / "out"), *common])
    assert r.exit_code == 0, r.output
    got = json.loads(r.stdout.split("\nreport:")[0])
    assert (got["counts"]["accepted"], got["counts"]["pending"]) == (1, 2)
    assert got["min_submitted"] == {"used": 2, "pushed_with": 2, "source": "dataset"}
    assert "once 2 reviewer(s) submitted it (the overlap the dataset was pushed with)" in \
        (tmp_path / "out" / "report.md").read_text()
    r = CliRunner().invoke(app, ["pull", str(tmp_path / "d"), "--out", str(tmp_path / "out1"),
                                 "--min-submitted", "1", *common])
    got = json.loads(r.stdout.split("\nreport:")[0])
    assert (got["counts"]["accepted"], got["counts"]["pending"]) == (3, 0)
    assert got["min_submitted"] == {"used": 1, "pushed_with": 2, "source": "option"}


def test_web_ui_signs_in_and_shows_the_queue(sqlite_server):
    from orchard.review.client import connect

    server = sqlite_server
    client = connect(server.url, api_key=server.api_key)
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


def _kill9(data_dir: Path) -> list:
    """SIGKILL every process of the server at once (no shutdown code runs), as a crash or the OOM killer would."""
    from pg_cluster import wait_gone

    from orchard.process import reap
    from orchard.review.local_server import read_state

    pids = list(read_state(data_dir)["pids"].values())
    for pid in pids:
        os.killpg(pid, signal.SIGKILL)
    for pid in pids:
        reap(pid)  # our own children (the SQLite server was started by this process) must not linger as zombies
    wait_gone(pids)
    return pids


def _sql(server, request, statement: str) -> None:
    """One statement on the server's database, written directly (the server is down)."""
    from orchard.review.local_server import credentials

    if credentials(server.data_dir).get("database_url"):
        request.getfixturevalue("pg_cluster").sql(statement)
        return
    import sqlite3

    with sqlite3.connect(server.data_dir / "argilla" / "argilla.db") as db:
        db.execute(statement)


def _write_responses(server, ids: list, acked: list, errors: list) -> None:
    """Submit an answer to each record, one by one as reviewers do; stop at the first failure."""
    import httpx

    with httpx.Client(base_url=server.url, headers={"X-Argilla-Api-Key": server.api_key}, timeout=10) as http:
        for rid in ids:
            try:
                r = http.post(f"/api/v1/records/{rid}/responses",
                              json={"values": {"decision": {"value": "accept"}, "quality": {"value": 4}},
                                    "status": "submitted"})
            except httpx.HTTPError as e:  # the server died under us
                errors.append(type(e).__name__)
                return
            if r.status_code != 201:
                errors.append(r.status_code)
                return
            acked.append(rid)


def test_kill9_while_reviewers_write_then_restart_loses_nothing(server, client, request):
    """Responses are written one by one while every server process gets SIGKILL (on PostgreSQL the database also
    stops as in a crash: no flush, crash recovery at the next start). After a restart on the same folder each
    acknowledged response is there with its values, progress counts them, the text index answers, the folder is
    private again (loosened as older orchard versions left it), and reviewers carry on."""
    from orchard.review.client import iter_records
    from orchard.review.local_server import read_state, start_server
    from orchard.review.push import push_rows

    rows = [_sft_row(700 + i, 1 + i % 5) for i in range(60)]
    push_rows(client, rows, "durable", "team")
    ds = client.datasets(name="durable", workspace=client.workspaces(name="team"))
    by_ext = _server_ids(client, ds)
    record_ids = [by_ext[r["id"]] for r in rows]
    acked, errors = [], []
    writer = threading.Thread(target=_write_responses, args=(server, record_ids, acked, errors))
    writer.start()
    deadline = time.monotonic() + 60
    while len(acked) < 20 and writer.is_alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    postgres = read_state(server.data_dir)["database"] == "postgresql"
    _kill9(server.data_dir)
    if postgres:
        request.getfixturevalue("pg_cluster").crash()
    writer.join(30)
    killed_at = len(acked)
    assert 20 <= killed_at < len(rows) and errors, (killed_at, errors)
    if postgres:
        request.getfixturevalue("pg_cluster").restart()

    # What a crash between argilla-server's two commits (the response, then its record's status) leaves: an
    # answered record still "pending". The next start repairs it from the responses.
    _sql(server, request, f"UPDATE records SET status = 'pending' WHERE external_id = '{rows[0]['id']}'")
    # A folder as older orchard versions left it (755 folders, 644 database and logs) is tightened at start.
    for p in [server.data_dir, *server.data_dir.rglob("*")]:
        os.chmod(p, 0o755 if p.is_dir() else 0o644)
    info = start_server(server.data_dir, port=int(server.url.rsplit(":", 1)[1]))
    assert info.api_key == server.api_key and info.url == server.url
    assert set(_modes(server.data_dir).values()) == {0o700, 0o600}
    assert "orchard: repaired the status of" in (server.data_dir / "logs" / "server.log").read_text()

    records = {r["id"]: r for r in iter_records(client, ds.id, include=("responses",))}
    stored = {rid for rid, r in records.items() if r.get("responses")}
    lost = set(acked) - stored
    print(f"durability[{'postgresql' if postgres else 'sqlite'}]: {killed_at} acknowledged before kill -9, "
          f"{len(stored)} stored after restart, {len(lost)} lost")
    # Every acknowledged response survived; at most the one in flight at the kill was stored unacknowledged.
    assert lost == set() and len(stored) - len(acked) <= 1
    assert {(v["decision"]["value"], v["quality"]["value"]) for rid in stored
            for v in [records[rid]["responses"][0]["values"]]} == {("accept", 4)}
    assert ds.progress() == {"total": 60, "completed": len(stored), "pending": 60 - len(stored)}
    assert _search(client, ds, {"query": {"text": {"q": "orchard 759"}}})["total"] == 1  # text index intact

    errors.clear()
    _write_responses(server, [i for i in record_ids if i not in stored], acked, errors)  # reviewers carry on
    assert errors == [] and ds.progress()["completed"] == len(rows)
