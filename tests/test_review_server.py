"""Review against a real Label Studio server on 127.0.0.1 (no mock): push, annotate as three
reviewers, pull, check every decision; idempotent pushes; a server stopped mid-push; errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import polars as pl
import pytest
from label_studio_sdk.core.api_error import ApiError

from annotation.client import ReviewClient, push_workspace
from annotation.config import labeling_config
from annotation.server import start_server, state_dir
from annotation.verdicts import AGREEMENT_FILE, pull
from curate.errors import UserError
from curate.ingest import ingest
from curate.workspace import Workspace
from tests.ls_fixture import annotate, label_studio, mmbench_workspace, sdk, start_copy  # noqa: F401

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]


def _tasks(handle, project_id):
    return list(sdk(handle).tasks.list(project=project_id, fields="task_only", page_size=500))


def _cli(*args, env_token=None, cwd=REPO):
    env = {k: v for k, v in os.environ.items() if k != "LABEL_STUDIO_API_KEY"}
    if env_token is not None:
        env["LABEL_STUDIO_API_KEY"] = env_token
    return subprocess.run([sys.executable, "-m", "curate.cli", "review", *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=120)


def test_server_validates_our_generated_config_and_rejects_a_broken_one(label_studio):
    ls = sdk(label_studio)
    ok = ls.projects.create(title="config check", label_config=labeling_config())
    assert ls.projects.get(id=ok.id).label_config == labeling_config()
    with pytest.raises(ApiError) as err:
        ls.projects.create(title="broken config", label_config=labeling_config().replace('toName="question"', 'toName="nowhere"', 1))
    assert err.value.status_code == 400


SUSPECT = "2 of 3 models chose C, the key is A, and the best model (m1) chose C"


@pytest.fixture(scope="module")
def screened_ws(shared_data, tmp_path_factory) -> Path:
    """Real MMBench samples, screened by hand: 4 blind, 2 rule-dropped, hits and a member column."""
    ws = mmbench_workspace(shared_data, tmp_path_factory.mktemp("screened"))
    items = pl.read_parquet(ws / "items.parquet")
    n = items.height
    screened = items.with_columns(
        hits=pl.Series([7 if i < 4 else i % 3 for i in range(n)], dtype=pl.Int64),
        n_members=pl.lit(8, dtype=pl.Int64),
        blind=pl.Series([i < 4 for i in range(n)]),
        rule_drop=pl.Series([i in (4, 5) for i in range(n)]),
        answer__smollm2=pl.Series(["A"] * n),
        suggested_l2_category=pl.Series(["recognition" if i % 2 else "image scene and topic" for i in range(n)]),
        # item-stats (#18) doubted the keys of items 6 and 8
        suspect_key=pl.Series([i in (6, 8) for i in range(n)]),
        suspect_evidence=pl.Series([SUSPECT if i in (6, 8) else None for i in range(n)], dtype=pl.String),
    )
    Workspace(ws).write("screened", screened)
    return ws


def test_round_trip_three_reviewers_every_decision(label_studio, screened_ws):
    token = label_studio.token
    client = ReviewClient(label_studio.url, token)
    first = push_workspace(screened_ws, client, "round trip", batch_tasks=16)
    assert (first.total, first.already, first.pushed, first.batches) == (48, 0, 48, 3)
    again = push_workspace(screened_ws, client, "round trip")
    assert (again.already, again.pushed) == (48, 0)
    pid = first.project_id
    tasks = _tasks(label_studio, pid)
    by_item = {t.data["item_id"]: t for t in tasks}
    assert len(tasks) == len(by_item) == 48  # no duplicates after two pushes
    assert not any(f"MMBench_samples:{i}" in by_item for i in range(6))  # blind and rule-dropped stay out
    full = sdk(label_studio).tasks.get(id=by_item["MMBench_samples:7"].id)
    pred = {r["from_name"]: r["value"]["choices"][0] for r in full.predictions[0].result}
    assert pred == {"dimension": "recognition"}  # the central questions are never pre-answered
    assert by_item["MMBench_samples:6"].data["suspect_evidence"] == SUSPECT  # what the reviewer is shown, kept by the server
    assert SUSPECT in by_item["MMBench_samples:6"].data["options_html"] and "suspect_evidence" not in by_item["MMBench_samples:7"].data

    ls = sdk(label_studio)
    users = {name: ls.users.create(username=name, email=f"{name}@review.test").id for name in ("ann", "bob", "cy")}
    plan = {  # item index -> per reviewer (needs_image, key_correct, dimension, corrected key)
        6: {"ann": ("yes", "yes", "recognition", None), "bob": ("yes", "yes", "recognition", None), "cy": ("yes", "yes", "localization", None)},
        7: {"ann": ("yes", "yes", "image emotion", None), "bob": ("no", "yes", "image emotion", None), "cy": ("yes", "yes", "image emotion", None)},
        8: {"ann": ("yes", "no", "recognition", "C"), "bob": ("yes", "yes", "recognition", None), "cy": ("yes", "no", "recognition", "C")},
        9: {"ann": ("yes", "yes", "recognition", None), "bob": ("yes", "yes", "recognition", None)},
        10: {"ann": ("yes", "yes", "image style & quality", None), "bob": ("yes", "yes", "image emotion", None), "cy": ("yes", "yes", "localization", None)},
        11: {"ann": ("no", "no", "recognition", "A"), "bob": ("no", "yes", "recognition", None), "cy": ("yes", "yes", "recognition", None)},
    }
    for idx, verdicts in plan.items():
        for who, (needs, key, dim, fix) in verdicts.items():
            annotate(label_studio, by_item[f"MMBench_samples:{idx}"].id, users[who], needs_image=needs, key_correct=key, dimension=dim, corrected_key=fix, comment=f"{who} on {idx}")

    st = client.status(pid, "round trip")
    assert (st.tasks, st.annotated, st.annotations) == (48, 6, 17)
    assert st.per_annotator == {"ann@review.test": 6, "bob@review.test": 6, "cy@review.test": 5}
    assert len(st.short_items) == 48 - 5 and st.short_reviewers["MMBench_samples:9"] == ["ann@review.test", "bob@review.test"]
    assert st.remaining("cy@review.test") == 43

    result = pull(screened_ws, client, "round trip", min_reviewers=3)
    reviewed = pl.read_parquet(screened_ws / "reviewed.parquet")
    assert reviewed.height == 54 and {"hits", "blind", "images", "review_kept", "review_verdicts"} <= set(reviewed.columns)
    r = {row["item_id"].split(":")[1]: row for row in reviewed.iter_rows(named=True)}
    assert (r["6"]["review_status"], r["6"]["review_dimension"], r["6"]["review_capability"]) == ("kept", "recognition", "fine-grained perception")
    assert (r["7"]["review_status"], r["7"]["review_reason"]) == ("dropped", "reviewer_text_answerable")
    assert (r["8"]["review_reason"], r["8"]["review_corrected_key"], r["8"]["review_key_ok"]) == ("reviewer_key_wrong", "C", False)
    assert (r["9"]["review_status"], r["9"]["review_reason"], r["9"]["review_n"]) == ("quarantined", "awaiting_review", 2)
    # three-way tie on dimension: the suggestion (item 10 is even -> "image scene and topic") is not among them -> taxonomy order
    assert (r["10"]["review_status"], r["10"]["review_dimension"]) == ("kept", "image style & quality")
    assert (r["11"]["review_reason"]) == "reviewer_text_answerable+key_wrong"
    assert all(r[str(i)]["review_reason"] == "not_for_review" and r[str(i)]["review_kept"] is False for i in range(6))
    untouched = [r[str(i)] for i in range(12, 54)]
    assert all(x["review_status"] == "quarantined" and x["review_n"] == 0 for x in untouched)
    assert result.counts == {"kept": 2, "dropped": 3, "quarantined": 1 + 42, "not_for_review": 6}
    assert json.loads(r["11"]["review_verdicts"])[0] == {
        "reviewer": "ann@review.test", "needs_image": False, "dimension": "recognition", "key_correct": False,
        "corrected_key": "A", "comment": "ann on 11", "annotation_id": json.loads(r["11"]["review_verdicts"])[0]["annotation_id"],
        "sources": {"corrected_key": "reviewer", "dimension": "reviewer", "key_correct": "reviewer", "needs_image": "reviewer"},
        "suggested_dimension": None,
    }
    assert r["11"]["review_n_decided"] == 3 and r["11"]["review_suggestions_accepted"] == 0
    # suspect keys: 6 kept by all three (confirmed), 8 marked wrong (rejected), the rest not suspect
    assert (r["6"]["review_key_confirmed"], r["8"]["review_key_confirmed"], r["7"]["review_key_confirmed"]) == (True, False, None)

    ledger = Workspace(screened_ws).ledger().filter(pl.col("stage") == "review")
    assert ledger.height == 48
    det = {row["item_id"].split(":")[1]: row for row in ledger.iter_rows(named=True)}
    assert det["7"]["status"] == "dropped" and "bob@review.test says it is answerable without the image (bob on 7)" in det["7"]["detail"]
    assert "ann@review.test says key is wrong, should be C" in det["8"]["detail"] and "cy@review.test" in det["8"]["detail"]
    assert det["6"]["source_file"].endswith("MMBench_samples.tsv") and det["6"]["row"] == r["6"]["row"]

    agreement = json.loads((screened_ws / AGREEMENT_FILE).read_text())
    assert agreement["needs_image"]["n_items"] == 6 and agreement["needs_image"]["fleiss_kappa"] is not None
    assert agreement["needs_image"]["cohen_kappa_pairs"]["ann@review.test | bob@review.test"]["n_items"] == 6
    assert agreement["key_correct"]["all_agree_share"] == pytest.approx(4 / 6, abs=1e-3)
    assert agreement["suspect_key"] == {"suspect": 2, "confirmed": 1, "rejected": 1, "not_cleared": 0}

    # pulling again is stable and does not double the ledger
    pull(screened_ws, client, "round trip", min_reviewers=3)
    assert Workspace(screened_ws).ledger().filter(pl.col("stage") == "review").height == 48
    # the token never lands in a parquet file
    for path in screened_ws.glob("*.parquet"):
        assert token.encode() not in path.read_bytes()


def test_cli_push_status_pull_print_no_token_and_fail_in_one_line(label_studio, shared_data, tmp_path):
    ws = mmbench_workspace(shared_data, tmp_path / "cli")
    token = label_studio.token
    out = [_cli("push", str(ws), "--url", label_studio.url, "--project", "cli", env_token=token) for _ in range(2)]
    assert all(p.returncode == 0 for p in out), out[0].stderr
    assert "54 new tasks" in out[0].stdout and "0 new tasks, 54 already there" in " ".join(out[1].stdout.split())
    status = _cli("status", str(ws), "--url", label_studio.url, "--project", "cli", env_token=token)
    assert status.returncode == 0 and "54 tasks, 0 annotated" in status.stdout
    pulled = _cli("pull", str(ws), "--url", label_studio.url, "--project", "cli", env_token=token)
    assert pulled.returncode == 0 and "quarantined 54" in pulled.stdout
    for p in (*out, status, pulled):
        assert token not in p.stdout + p.stderr

    bad = _cli("status", str(ws), "--url", label_studio.url, "--project", "cli", env_token="0" * 40)
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.strip().splitlines() == [bad.stderr.strip()] and "rejected the API token (401" in bad.stderr
    gone = _cli("status", str(ws), "--url", "http://127.0.0.1:9", env_token=token)
    assert gone.returncode == 2 and "cannot reach Label Studio at http://127.0.0.1:9" in gone.stderr
    none = _cli("status", str(ws), "--url", label_studio.url, env_token=None)
    assert none.returncode == 2 and "no Label Studio API token" in none.stderr


def test_a_replacement_pick_is_pushed_alone_and_the_rest_is_not_pushed_again(label_studio, shared_data, tmp_path):
    """MMStar's loop: a reviewer rejects a balanced pick, `balance --replace` swaps in a same-cell item."""
    ws = mmbench_workspace(shared_data, tmp_path / "replace")
    items = Workspace(ws).read("items")
    Workspace(ws).write("balanced", items.head(10))
    client = ReviewClient(label_studio.url, label_studio.token)
    first = push_workspace(ws, client, "replace", stage="balanced")
    assert (first.pushed, first.already) == (10, 0)
    rejected = items["item_id"][3]
    Workspace(ws).write("balanced", pl.concat([items.head(10).filter(pl.col("item_id") != rejected), items.slice(20, 1)]))
    again = push_workspace(ws, client, "replace", stage="balanced")
    assert (again.pushed, again.already, again.total) == (1, 9, 10)
    assert len(_tasks(label_studio, first.project_id)) == 11  # the rejected task stays (with its verdicts); nothing duplicated
    with pytest.raises(UserError, match="--stage"):
        push_workspace(ws, client, "replace", stage="nonsense")


def test_a_foreign_project_with_our_title_is_refused(label_studio, shared_data, tmp_path):
    sdk(label_studio).projects.create(
        title="someone else's", label_config='<View><Text name="t" value="$t"/><Choices name="c" toName="t"><Choice value="x"/></Choices></View>'
    )
    client = ReviewClient(label_studio.url, label_studio.token)
    with pytest.raises(UserError, match="is not an mmcurate review project"):
        client.ensure_project("someone else's")
    from curate.taxonomy import load_taxonomy

    client.ensure_project("other taxonomy", labeling_config(load_taxonomy()).replace("Comment (optional)", "Remarks"))  # an older config of ours
    with pytest.raises(UserError, match="different taxonomy or config version"):
        client.ensure_project("other taxonomy")


def test_multi_image_items_and_local_file_images(label_studio, shared_data):
    # local files are served from the server's workspace, so ingest into it (as `review serve` users do)
    ws = label_studio.workdir
    ingest([shared_data / "vlmevalkit" / "MMMU_DEV.tsv"], out=ws)
    Workspace(ws).write("items", Workspace(ws).read("items").filter(pl.col("n_images") > 1))
    client = ReviewClient(label_studio.url, label_studio.token)
    res = push_workspace(ws, client, "local images", image_mode="local")
    assert (res.pushed, res.image_mode) == (4, "local")
    items = {r["item_id"]: r for r in Workspace(ws).read("items").iter_rows(named=True)}
    for task in _tasks(label_studio, res.project_id):
        item = items[task.data["item_id"]]
        assert len(task.data["images"]) == item["n_images"] > 1
        url = label_studio.url + task.data["images"][-1]
        got = httpx.get(url, headers={"Authorization": f"Token {label_studio.token}"}, timeout=30)
        assert got.status_code == 200 and got.content == item["images"][-1]["bytes"]
        assert httpx.get(url, timeout=30).content != item["images"][-1]["bytes"]  # no token, no image
    inline = push_workspace(ws, client, "inline multi", image_mode="inline")
    t = _tasks(label_studio, inline.project_id)[0]
    assert all(u.startswith("data:image/") for u in t.data["images"]) and len(t.data["images"]) > 1


def test_server_stopped_mid_push_then_push_again_loses_and_duplicates_nothing(shared_data, tmp_path):
    ws = mmbench_workspace(shared_data, tmp_path / "items")
    handle = start_copy(tmp_path / "server")
    try:
        client = ReviewClient(handle.url, handle.token)

        def stop_after_first(done: int, todo: int) -> None:
            if done == 10:
                handle.server.stop()

        with pytest.raises(UserError, match=r"push stopped after 10 of 54 new tasks: cannot reach Label Studio"):
            push_workspace(ws, client, "interrupted", batch_tasks=10, on_batch=stop_after_first)
        assert not handle.server.alive()
        server = start_server(handle.workdir, handle.server.port)  # same data dir, restarted
        try:
            again = push_workspace(ws, client, "interrupted", batch_tasks=10)
            assert (again.already, again.pushed) == (10, 44)
            ids = [t.data["item_id"] for t in list(sdk(handle).tasks.list(project=again.project_id, page_size=500))]
            assert len(ids) == len(set(ids)) == 54
        finally:
            server.stop()
    finally:
        handle.server.stop()
    log = (state_dir(handle.workdir) / "server.log").read_text()
    assert handle.token not in log
    assert oct(os.stat(state_dir(handle.workdir) / "secret.json").st_mode & 0o777) == "0o600"


def test_an_import_the_client_gave_up_on_but_the_server_committed_is_not_duplicated(label_studio, shared_data, tmp_path):
    """The client times out (sees an error) while the server goes on and commits the batch: the
    SDK must not retry it, and the next push must find those tasks instead of importing them again."""
    ws = mmbench_workspace(shared_data, tmp_path / "items")
    impatient = ReviewClient(label_studio.url, label_studio.token, import_timeout=0.05)
    with pytest.raises(UserError, match=r"push stopped after 0 of 54 new tasks: .*timed out"):
        push_workspace(ws, impatient, "gave up", batch_tasks=54)
    client = ReviewClient(label_studio.url, label_studio.token)
    pid = client.project_id("gave up")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(_tasks(label_studio, pid)) < 54:  # the server finishes on its own
        time.sleep(0.5)
    again = push_workspace(ws, client, "gave up", batch_tasks=54)
    # normally the server committed all 54 (already == 54); had the body been cut short it
    # committed none (pushed == 54) -- never a mix, never a duplicate
    assert (again.already, again.pushed) in ((54, 0), (0, 54))
    ids = [t.data["item_id"] for t in _tasks(label_studio, pid)]
    assert len(ids) == len(set(ids)) == 54


PUSH_SCRIPT = """
import sys, time
from annotation.client import ReviewClient, push_workspace
client = ReviewClient(sys.argv[2], sys.argv[3])
# small batches, each acknowledged: the kill lands between or inside imports
push_workspace(sys.argv[1], client, "killed", batch_tasks=4, on_batch=lambda done, todo: (print(done, flush=True), time.sleep(0.2)))
"""


def test_review_push_killed_with_sigkill_then_pushed_again_loses_and_duplicates_nothing(label_studio, shared_data, tmp_path):
    """kill -9 of the pushing process at several moments: the next push completes the project, every item
    exactly once, and the workspace is untouched (its manifest verifies; its lock is free again)."""
    ws = mmbench_workspace(shared_data, tmp_path / "ws")
    before = (ws / "items.parquet").read_bytes()
    env = {k: v for k, v in os.environ.items() if k != "LABEL_STUDIO_API_KEY"}
    seen = []
    for acked in (1, 3, 5):  # kill once this many batches (of 4 tasks) were acknowledged, inside the next one
        proc = subprocess.Popen([sys.executable, "-c", PUSH_SCRIPT, str(ws), label_studio.url, label_studio.token],
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env, cwd=REPO)
        for _ in range(acked):  # bounded: the process prints one line per batch and ends after 54 tasks
            if not proc.stdout.readline():
                break
        time.sleep(0.25)
        proc.kill()
        proc.wait(timeout=30)
        proc.stdout.close()
        project = ReviewClient(label_studio.url, label_studio.token).find_project("killed")
        seen.append(len(_tasks(label_studio, project.id)) if project is not None else 0)
    client = ReviewClient(label_studio.url, label_studio.token)
    final = push_workspace(ws, client, "killed")
    ids = [t.data["item_id"] for t in _tasks(label_studio, final.project_id)]
    assert len(ids) == len(set(ids)) == 54 and final.already + final.pushed == 54
    assert 0 < seen[0] < seen[1] < seen[2] < 54, seen  # each killed run added to what the one before left, never duplicated it
    assert (ws / "items.parquet").read_bytes() == before and Workspace(ws).verify() == []
