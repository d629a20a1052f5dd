"""Fast tests of the review stage's pure parts on real items: config, tasks, verdicts, kappa."""

from __future__ import annotations

import base64
import json
import os
import xml.etree.ElementTree as ET

import polars as pl
import pytest

from annotation.config import (
    CONTROLS,
    MARKER,
    dimension_choices,
    hotkeys,
    is_ours,
    labeling_config,
)
from annotation.tasks import (
    ImagePlan,
    item_to_task,
    local_file_url,
    member_columns,
    needs_image_guess,
    options_html,
    options_text,
    plan_images,
    review_mask,
)
from annotation.verdicts import collect_verdicts, decide, fleiss_kappa
from curate.errors import UserError
from curate.taxonomy import default_taxonomy
from tests.ls_fixture import mmbench_workspace


@pytest.fixture(scope="module")
def mmbench(shared_data, tmp_path_factory) -> pl.DataFrame:
    ws = mmbench_workspace(shared_data, tmp_path_factory.mktemp("mmbench"))
    return pl.read_parquet(ws / "items.parquet")


# -- config ------------------------------------------------------------------------------
def test_config_lists_the_18_dimensions_grouped_by_capability_in_taxonomy_order():
    xml = labeling_config()
    tax = default_taxonomy()
    assert dimension_choices(xml) == [d.name for d in tax.dimensions]
    root = ET.fromstring(xml)
    dims = next(el for el in root.iter("Choices") if el.get("name") == "dimension")
    groups = [(g.find("Header").get("value"), [c.get("value") for c in g.iter("Choice")]) for g in dims.findall("View")]
    assert groups == [(f"{i}. {c.name}", [d.name for d in c.dimensions]) for i, c in enumerate(tax.capabilities, 1)]
    names = {el.get("name"): el for el in root.iter() if el.get("toName")}
    assert set(CONTROLS) == set(names)
    # the corrected key offers the item's own letters (dynamic choices), never a fixed A-J
    assert names["corrected_key"].get("value") == "$letter_choices" and not list(names["corrected_key"].iter("Choice"))
    assert [el.get("name") for el in root.iter("HyperText")][:1] == ["images"]  # images side by side, numbered
    assert is_ours(xml) and not is_ours('<View><Text name="t" value="$t"/></View>') and not is_ours("not xml <")
    # plain words only: no internal title, no bare "Hint" header
    headers = [el.get("value") for el in root.iter("Header")]
    assert not any(MARKER in h or h == "Hint" for h in headers)


def test_every_choice_has_its_own_hotkey_and_no_key_does_two_things():
    xml = labeling_config()
    root = ET.fromstring(xml)
    assert all(c.get("hotkey") for c in root.iter("Choice"))  # LS would assign one to any Choice without
    keys = hotkeys(xml)
    assert {k: v for k, v in keys.items() if len(v) > 1} == {}
    assert keys["y"] == ["needs_image/yes"] and keys["n"] == ["needs_image/no"]
    assert keys["k"] == ["key_correct/yes"] and keys["x"] == ["key_correct/no"]
    assert keys["1"] == ["dimension/image scene and topic"] and keys["shift+9"] == ["dimension/numeric commonsense and calculation"]
    # option letters (a-j, the corrected key's hotkeys) are free of any static control
    assert not set("abcdefghij") & set(keys)


# -- tasks -------------------------------------------------------------------------------
def test_task_carries_the_item_image_bytes_and_marks_the_key(mmbench):
    row = mmbench.row(0, named=True)
    task = item_to_task(row, ImagePlan("inline"))
    data = task["data"]
    assert data["item_id"] == row["item_id"]
    uri = data["images"][0]
    assert uri.startswith("data:image/jpeg;base64,")
    assert base64.b64decode(uri.split(",", 1)[1]) == row["images"][0]["bytes"]
    key_line = [line for line in data["options_text"].splitlines() if line.endswith("<-- KEY")]
    assert key_line == [f"{row['answer']}. {row['options']['ABCD'.index(row['answer'])]}   <-- KEY"]
    assert options_text(["x", "y"], "b") == "A. x\nB. y   <-- KEY"
    assert options_html(["x", "y"], "b") == '<ul class="mmc-opts"><li><b>A.</b> x</li><li class="mmc-key"><b>B.</b> y<span class="mmc-keytag">KEY</span></li></ul>'
    assert data["letter_choices"] == [{"value": L, "hotkey": L.lower()} for L in "ABCD"[: len(row["options"])]]
    assert data["hint_html"] == ("" if not row["hint"] else data["hint_html"])
    assert data["images_html"].count("<figure>") == 1 and 'background-image: url(&quot;data:image/jpeg;base64,' in data["images_html"]
    assert "predictions" not in task  # MMBench samples have no dimension and no screening: nothing to suggest


def test_predictions_suggest_only_the_dimension_with_its_real_probability(mmbench):
    rows = mmbench.head(3).with_columns(
        l2_category=pl.Series([None, "recognition", "no such dimension"]),
        suggested_l2_category=pl.Series(["image emotion", "localization", "geometry"]),
        suggested_l2_score=pl.Series([0.41, 0.9, None]),
        hits=pl.Series([0, 1, 5]),
        n_members=pl.Series([8, 8, 8]),
        answer__smollm2=pl.Series(["A", "B", "C"]),
        hit__smollm2=pl.Series([True, False, None]),
        n_solvers=pl.Series([2, None, None]),
        n_models=pl.Series([16, None, None]),
    )
    tasks = [item_to_task(r, ImagePlan("inline"), members=member_columns(rows.columns)) for r in rows.iter_rows(named=True)]
    got = [{r["from_name"]: r["value"]["choices"][0] for r in t["predictions"][0]["result"]} for t in tasks]
    # the central questions are never pre-answered, whatever the panel did
    assert got == [{"dimension": "image emotion"}, {"dimension": "recognition"}, {"dimension": "geometry"}]
    assert [t["predictions"][0].get("score") for t in tasks] == [0.41, None, None]  # no made-up 100 %
    assert "0 of 8 text-only panel members" in tasks[0]["data"]["evidence"]
    assert "smollm2: A (correct)" in tasks[0]["data"]["evidence"]
    assert "smollm2: B (wrong)" in tasks[1]["data"]["evidence"]
    ev = tasks[0]["data"]["evidence_html"]
    assert "Solved by 2 of 16 vision models" in ev and "probability 0.41" in ev and ">smollm2<" in ev
    assert "vision models" not in tasks[1]["data"]["evidence_html"]
    assert needs_image_guess({"hits": None, "n_members": None}) is None


def test_local_files_refuse_paths_outside_the_workspace(tmp_path):
    ws = tmp_path / "ws"
    (ws / "review_images").mkdir(parents=True)
    inside = ws / "review_images" / "a b.png"
    inside.write_bytes(b"\x89PNG\r\n\x1a\nxx")
    outside = tmp_path / "secret.png"
    outside.write_bytes(b"x")
    assert local_file_url(inside, ws) == "/data/local-files/?d=review_images/a%20b.png"
    with pytest.raises(UserError, match="outside the workspace"):
        local_file_url(outside, ws)
    with pytest.raises(UserError, match="outside the workspace"):
        local_file_url(ws / "review_images" / ".." / ".." / "secret.png", ws)
    os.symlink(outside, ws / "review_images" / "link.png")
    with pytest.raises(UserError, match="outside the workspace"):
        local_file_url(ws / "review_images" / "link.png", ws)
    row = {"item_id": "x:1", "images": [{"bytes": None, "path": str(outside)}], "options": ["a", "b"], "answer": "A"}
    with pytest.raises(UserError, match="outside the workspace"):
        item_to_task(row, ImagePlan("local", ws.resolve()))


def test_auto_image_mode_serves_workspace_files_when_our_server_reads_them(mmbench, tmp_path):
    assert plan_images(mmbench, "auto", None).mode == "inline"
    assert plan_images(mmbench, "auto", tmp_path).mode == "inline"  # no server of ours reads this workspace
    (tmp_path / ".label_studio").mkdir()
    (tmp_path / ".label_studio" / "server.json").write_text(json.dumps({"url": "http://127.0.0.1:1", "pid": os.getpid()}))
    plan = plan_images(mmbench, "auto", tmp_path)
    assert plan.mode == "local"  # HyperText drops data: URIs, so the reviewer's page needs files
    task = item_to_task(mmbench.row(0, named=True), plan)
    url = task["data"]["images"][0]
    rel = url.split("?d=", 1)[1]
    assert (tmp_path / rel).read_bytes() == mmbench.row(0, named=True)["images"][0]["bytes"]
    assert task["data"]["images_html"].count("<figure>") == 1 and "Image 1" in task["data"]["images_html"]


def test_review_mask_keeps_unscreened_items_and_drops_blind_and_rule_dropped():
    df = pl.DataFrame({"item_id": list("abcd"), "blind": [False, True, None, False], "rule_drop": [None, False, False, True]})
    assert review_mask(df) == [True, False, False, False]  # null blind: screening failed, never reviewed
    assert review_mask(pl.DataFrame({"item_id": ["a", "b"]})) == [True, True]


# -- verdicts ----------------------------------------------------------------------------
def test_fleiss_kappa_matches_the_published_worked_example():
    # Fleiss (1971) style table from Wikipedia's "Fleiss' kappa" article: 10 items, 14 raters, 5 categories -> 0.210
    table = [
        [0, 0, 0, 0, 14], [0, 2, 6, 4, 2], [0, 0, 3, 5, 6], [0, 3, 9, 2, 0], [2, 2, 8, 1, 1],
        [7, 7, 0, 0, 0], [3, 2, 6, 3, 0], [2, 5, 3, 2, 2], [6, 5, 2, 1, 0], [0, 2, 2, 3, 7],
    ]
    ratings = [[cat for cat, n in enumerate(row) for _ in range(n)] for row in table]
    assert fleiss_kappa(ratings) == pytest.approx(0.2099, abs=5e-4)
    assert fleiss_kappa([["y", "y"], ["y", "y"]]) is None  # chance agreement 1: undefined
    assert fleiss_kappa([["y"]]) is None


def _ann(i, who, needs, key, dim, fix=None, cancelled=False, stamp="2026-01-01T00:00:00Z"):
    res = [
        {"from_name": "needs_image", "value": {"choices": [needs]}},
        {"from_name": "key_correct", "value": {"choices": [key]}},
        {"from_name": "dimension", "value": {"choices": [dim]}},
    ]
    if fix:
        res.append({"from_name": "corrected_key", "value": {"choices": [fix]}})
    return {"id": i, "completed_by": who, "result": res, "was_cancelled": cancelled, "updated_at": stamp}


def test_decision_rules_on_exported_annotations():
    stage = pl.DataFrame(
        {
            "item_id": ["k", "t", "w", "q", "b"],
            "source_file": ["f.tsv"] * 5,
            "row": [1, 2, 3, 4, 5],
            "blind": [False, False, False, False, True],
            "suggested_l2_category": ["geometry", None, None, None, None],
        }
    )
    emails = {1: "ann@x", 2: "bob@x", 3: "cy@x"}
    tasks = [
        {"data": {"item_id": "k"}, "annotations": [
            _ann(1, 1, "yes", "yes", "geometry"), _ann(2, 2, "yes", "yes", "recognition"), _ann(3, 3, "yes", "yes", "recognition"),
            _ann(4, 3, "no", "no", "recognition", cancelled=True),  # a skipped task is no verdict
        ]},
        {"data": {"item_id": "t"}, "annotations": [
            _ann(5, 1, "yes", "yes", "geometry"), _ann(6, 2, "no", "yes", "geometry"), _ann(7, 3, "yes", "yes", "geometry"),
        ]},
        {"data": {"item_id": "w"}, "annotations": [
            _ann(8, 1, "yes", "yes", "geometry"), _ann(9, 2, "yes", "no", "geometry", fix="C"), _ann(10, 3, "yes", "yes", "geometry"),
            _ann(11, 2, "yes", "yes", "geometry", stamp="2025-01-01T00:00:00Z"),  # older: bob's later verdict wins
        ]},
        {"data": {"item_id": "q"}, "annotations": [_ann(12, 1, "yes", "yes", "geometry")]},
    ]
    res = decide(stage, tasks, emails, min_reviewers=3)
    t = {r["item_id"]: r for r in res.table.iter_rows(named=True)}
    assert (t["k"]["review_status"], t["k"]["review_kept"], t["k"]["review_dimension"]) == ("kept", True, "recognition")
    assert t["k"]["review_capability"] == "fine-grained perception" and t["k"]["review_dimension_share"] == pytest.approx(2 / 3, abs=1e-3)
    assert (t["t"]["review_status"], t["t"]["review_reason"], t["t"]["review_needs_image"]) == ("dropped", "reviewer_text_answerable", False)
    assert (t["w"]["review_reason"], t["w"]["review_key_ok"], t["w"]["review_corrected_key"]) == ("reviewer_key_wrong", False, "C")
    assert (t["q"]["review_status"], t["q"]["review_reason"], t["q"]["review_n"]) == ("quarantined", "awaiting_review", 1)
    assert (t["b"]["review_status"], t["b"]["review_reason"], t["b"]["review_kept"]) == (None, "not_for_review", False)
    led = {r["item_id"]: r for r in res.ledger.iter_rows(named=True)}
    assert set(led) == {"k", "t", "w", "q"}
    assert "bob@x says it is answerable without the image" in led["t"]["detail"]
    assert "bob@x says key is wrong, should be C" in led["w"]["detail"]
    assert json.loads(t["k"]["review_verdicts"])[0]["reviewer"] == "ann@x"
    assert res.agreement["needs_image"]["n_items"] == 4 - 1  # q has one reviewer
    assert set(res.agreement["dimension"]["cohen_kappa_pairs"]) == {"ann@x | bob@x", "ann@x | cy@x", "bob@x | cy@x"}
    # with two reviewers required the single-reviewer item is still waiting; with one it is kept
    assert decide(stage, tasks, emails, min_reviewers=1).table.filter(pl.col("item_id") == "q")["review_kept"].item() is True
    with pytest.raises(UserError, match="min-reviewers"):
        decide(stage, tasks, emails, min_reviewers=0)


def test_tie_on_dimension_goes_to_the_suggestion_then_taxonomy_order():
    tasks = [{"data": {"item_id": "a"}, "annotations": [_ann(1, 1, "yes", "yes", "geometry"), _ann(2, 2, "yes", "yes", "recognition")]}]
    emails = {1: "a@x", 2: "b@x"}
    assert len(collect_verdicts(tasks, emails)["a"]) == 2
    with_hint = decide(pl.DataFrame({"item_id": ["a"], "l2_category": ["geometry"]}), tasks, emails, min_reviewers=2)
    assert with_hint.table["review_dimension"].item() == "geometry"
    no_hint = decide(pl.DataFrame({"item_id": ["a"]}), tasks, emails, min_reviewers=2)
    assert no_hint.table["review_dimension"].item() == "recognition"  # recognition comes before geometry in the taxonomy


def test_generated_secret_is_private_and_never_shown(tmp_path, monkeypatch):
    from annotation.server import load_or_create_secret, resolve_token, secret_path

    secret = load_or_create_secret(tmp_path)
    assert len(secret.token) == 40 and int(secret.token, 16) >= 0
    assert oct(os.stat(secret_path(tmp_path)).st_mode & 0o777) == "0o600"
    assert oct(os.stat(secret_path(tmp_path).parent).st_mode & 0o777) == "0o700"
    assert load_or_create_secret(tmp_path) == secret  # stable once made
    assert secret.token not in repr(secret) and secret.password not in repr(secret)
    monkeypatch.delenv("LABEL_STUDIO_API_KEY", raising=False)
    assert resolve_token(tmp_path) == secret.token
    with pytest.raises(UserError, match="no Label Studio API token"):
        resolve_token(tmp_path / "elsewhere")


def test_accepted_suggestions_are_recorded_and_never_count_as_a_reviewers_decision():
    """Label Studio marks an answer submitted straight from a pre-annotation with origin "prediction"."""
    stage = pl.DataFrame({"item_id": ["s", "m"], "source_file": ["f.tsv"] * 2, "row": [1, 2], "suggested_l2_category": ["geometry", "geometry"]})
    emails = {1: "ann@x", 2: "bob@x", 3: "cy@x"}

    def ann(i, who, *, needs_origin="manual", dim="geometry", dim_origin="prediction"):
        return {"id": i, "completed_by": who, "updated_at": "2026-01-01T00:00:00Z", "result": [
            {"from_name": "needs_image", "origin": needs_origin, "value": {"choices": ["yes"]}},
            {"from_name": "key_correct", "origin": "manual", "value": {"choices": ["yes"]}},
            {"from_name": "dimension", "origin": dim_origin, "value": {"choices": [dim]}},
        ]}

    tasks = [
        # s: everyone accepted the suggested dimension; cy's "needs the image" was a pre-filled answer
        {"data": {"item_id": "s"}, "annotations": [ann(1, 1), ann(2, 2), ann(3, 3, needs_origin="prediction")]},
        # m: bob changed the dimension himself; his pick is the only decided one and wins
        {"data": {"item_id": "m"}, "annotations": [ann(4, 1), ann(5, 2, dim="recognition", dim_origin="prediction-changed"), ann(6, 3)]},
    ]
    res = decide(stage, tasks, emails, min_reviewers=3)
    t = {r["item_id"]: r for r in res.table.iter_rows(named=True)}
    assert (t["s"]["review_status"], t["s"]["review_reason"], t["s"]["review_n_decided"]) == ("quarantined", "incomplete_verdict", 2)
    assert t["s"]["review_needs_image"] is False  # cy did not decide it
    assert (t["s"]["review_dimension"], t["s"]["review_dimension_source"], t["s"]["review_suggestions_accepted"]) == ("geometry", "suggestion", 4)
    assert (t["m"]["review_status"], t["m"]["review_dimension"], t["m"]["review_dimension_source"]) == ("kept", "recognition", "reviewer")
    cy = json.loads(t["s"]["review_verdicts"])[2]
    assert cy["sources"] == {"dimension": "suggestion", "key_correct": "reviewer", "needs_image": "suggestion"} and cy["needs_image"] is None
    assert res.agreement["provenance"]["needs_image"] == {"reviewer": 5, "suggestion": 1, "unanswered": 0}
    assert res.agreement["provenance"]["dimension"] == {"reviewer": 1, "suggestion": 5, "unanswered": 0}


def test_reviewer_logins_are_private_and_stable(tmp_path):
    from annotation.server import save_reviewer_logins

    path = save_reviewer_logins(tmp_path, ["ann@x", "bob@x"])
    first = json.loads(path.read_text())
    assert oct(path.stat().st_mode & 0o777) == "0o600" and set(first) == {"ann@x", "bob@x"} and first["ann@x"] != first["bob@x"]
    again = json.loads(save_reviewer_logins(tmp_path, ["bob@x", "cy@x"]).read_text())
    assert again["ann@x"] == first["ann@x"] and again["bob@x"] == first["bob@x"] and "cy@x" in again


# -- suspect keys (#18): evidence beside the key, review_key_confirmed from the "key correct" answer ----
SUSPECT = "2 of 3 models chose C, the key is B, and the best model (llava_next_yi_34b) chose C"


def test_suspect_key_evidence_sits_beside_the_key_and_the_config_is_unchanged(mmbench):
    row = mmbench.row(0, named=True)
    plain = item_to_task(row, ImagePlan("inline"))
    flagged = item_to_task({**row, "suspect_key": True, "suspect_evidence": SUSPECT}, ImagePlan("inline"))
    cleared = item_to_task({**row, "suspect_key": False, "suspect_evidence": None}, ImagePlan("inline"))
    assert "suspect_evidence" not in plain["data"] and cleared["data"] == plain["data"]  # unflagged: the same task
    html = flagged["data"]["options_html"]
    key_line = next(li for li in html.split("<li") if "mmc-key" in li)
    assert "KEY</span>" in key_line and "DOUBTED" in key_line  # on the key's own line
    listing, box = html.split("</ul>")
    tag = key_line[key_line.index("KEY</span>") + len("KEY</span>"):key_line.index("</li>")]
    assert listing.replace(tag, "") + "</ul>" == plain["data"]["options_html"]  # only the tag added; the evidence follows the list
    assert box.startswith('<div class="mmc-hint mmc-suspect"')
    assert "2 of 3 models chose C, the key is B" in html and "k keeps the key, x marks it wrong" in html
    assert flagged["data"]["suspect_evidence"] == SUSPECT and "Suspect key: 2 of 3" in flagged["data"]["evidence"]
    assert "predictions" not in flagged  # "is the key right?" is still never pre-answered
    # no new control, no new data field the config reads: config v2 stays, hotkeys too
    assert "$suspect_evidence" not in labeling_config() and MARKER == "mmcurate-review-v2"
    bare = item_to_task({**row, "suspect_key": True, "suspect_evidence": None}, ImagePlan("inline"))
    assert "disagree with this key" in bare["data"]["options_html"]  # flagged without text: still warned
    assert "&lt;b&gt;" in options_html(["x", "y"], "A", "<b>sneaky</b>")  # evidence is escaped


def test_review_key_confirmed_from_the_recorded_key_correct_answers():
    """``review_key_confirmed``: true = evidence shown and every reviewer kept the key; false = a
    reviewer marked it wrong; null = not suspect, nobody answered, or the task never showed the evidence."""
    ids = ["ok", "bad", "old", "plain", "open", "late"]
    stage = pl.DataFrame({
        "item_id": ids, "source_file": ["f.tsv"] * 6, "row": list(range(1, 7)),
        "suspect_key": [True, True, True, False, True, None],
        "suspect_evidence": [SUSPECT, SUSPECT, SUSPECT, None, SUSPECT, None],
    })
    emails = {1: "ann@x", 2: "bob@x", 3: "cy@x"}
    shown = {"suspect_evidence": SUSPECT}

    def task(item_id, anns, data=shown):
        return {"data": {"item_id": item_id, **data}, "annotations": anns}

    tasks = [
        task("ok", [_ann(1, 1, "yes", "yes", "geometry"), _ann(2, 2, "yes", "yes", "geometry"), _ann(3, 3, "yes", "yes", "geometry")]),
        task("bad", [_ann(4, 1, "yes", "yes", "geometry"), _ann(5, 2, "yes", "no", "geometry", fix="C"), _ann(6, 3, "yes", "yes", "geometry")]),
        # pushed before item-stats: the task data has no evidence, so nobody was asked about it
        task("old", [_ann(7, 1, "yes", "yes", "geometry"), _ann(8, 2, "yes", "yes", "geometry"), _ann(9, 3, "yes", "yes", "geometry")], data={}),
        task("plain", [_ann(10, 1, "yes", "yes", "geometry")], data={}),
        task("open", []),
        task("late", [_ann(11, 1, "yes", "yes", "geometry")]),  # flagged at push, cleared by a later item-stats run
    ]
    res = decide(stage, tasks, emails, min_reviewers=3)
    t = {r["item_id"]: r for r in res.table.iter_rows(named=True)}
    assert {i: t[i]["review_key_confirmed"] for i in ids} == {"ok": True, "bad": False, "old": None, "plain": None, "open": None, "late": None}
    assert res.table.schema["review_key_confirmed"] == pl.Boolean
    assert (t["ok"]["review_kept"], t["bad"]["review_reason"]) == (True, "reviewer_key_wrong")  # the usual rule still decides
    led = {r["item_id"]: r["detail"] for r in res.ledger.iter_rows(named=True)}
    assert "all 3 reviewers kept the key" in led["ok"] and "a reviewer marked the key wrong" in led["bad"]
    assert "did not show the evidence" in led["old"] and "suspect" not in led["plain"]
    assert res.agreement["suspect_key"] == {"suspect": 4, "confirmed": 1, "rejected": 1, "not_cleared": 2}
    # A pre-filled "key correct" (origin prediction) is no decision: not a confirmation either.
    pre = {"id": 20, "completed_by": 1, "updated_at": "2026-01-01T00:00:00Z", "result": [
        {"from_name": "needs_image", "origin": "manual", "value": {"choices": ["yes"]}},
        {"from_name": "key_correct", "origin": "prediction", "value": {"choices": ["yes"]}},
        {"from_name": "dimension", "origin": "manual", "value": {"choices": ["geometry"]}}]}
    one = decide(stage.head(1), [task("ok", [pre])], emails, min_reviewers=1)
    assert one.table["review_key_confirmed"].item() is None
    # Without item-stats columns the column is there and null, and the agreement file says nothing new.
    none = decide(stage.drop("suspect_key", "suspect_evidence"), tasks, emails, min_reviewers=3)
    assert none.table["review_key_confirmed"].null_count() == len(ids) and "suspect_key" not in none.agreement
