"""``mmcurate panel calibrate``: the margin is chosen by its false-hit rate on questions that need the image.

Fast tests run a scripted member (``filters.backends.scripted``) whose answers are written down here,
so every expected margin, rate and prompt count is worked out by hand from the shipped control data;
the slow test runs the real default member and asserts issue #17's control rates with Wilson intervals.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import sys
from pathlib import Path

import polars as pl
import pytest

from curate.assets import asset_path
from curate.errors import UserError
from curate.schema import LETTERS
from filters.calibrate import (
    Calibration, calibrate_panel, choose_margin, derive_vision_controls, hit_threshold, hits_at, vision_controls,
    write_calibration,
)
from curate.stats import wilson_interval
from filters.competence import control_items
from filters.panel import load_panel, panel_from_dict
from filters.scoring import Response

N_KNOWN = 60  # MMLU controls the scripted member knows


def key_text(item: dict) -> str:
    return item["options"][LETTERS.index(item["answer"])]


def script() -> dict:
    """A member that knows the first N_KNOWN MMLU controls (mass 0.9 on the key's text, which moves with
    the text when the options rotate), says "black" to every colour question (a text prior: false hits
    that survive rotation), picks "A" on "what shape does the image contain?" (a position bias:
    rotation removes it) and is flat on everything else."""
    rules = [{"match": it["question"].strip(), "text": key_text(it), "p": 0.9} for it in control_items()[:N_KNOWN]]
    rules += [{"match": "color", "text": "black", "p": 0.7},
              {"match": "what shape does the image contain?", "letter": "A", "p": 0.9}]
    return {"seed": 0, "rules": rules, "default": {"uniform": True}}


def scripted_panel(rotations="adaptive", **head) -> object:
    # control_size = 0: no letter prior, so calibrated probabilities are the scripted ones (hand-checkable)
    return panel_from_dict({"panel": {"rotations": rotations, "control_size": 0, **head},
                            "member": [{"name": "s", "backend": "scripted", "model": json.dumps(script()), "shots": 2}]})


def black_items() -> int:
    return sum(1 for v in vision_controls() if v["category"] == "color" and key_text(v) == "black")


def shape_a_items() -> int:
    return sum(1 for v in vision_controls() if v["question"] == "what shape does the image contain?" and v["answer"] == "A")


# --------------------------------------------------------------------------- the controls file


def test_vision_controls_are_the_documented_derivation_of_the_demo_pool():
    shipped = list(vision_controls())
    assert shipped == derive_vision_controls()
    cats = {v["category"] for v in shipped}
    assert cats == {"color", "shape", "bar chart", "counting", "map"}  # geometry left out: its key is the smallest number
    assert len({(v["question"], tuple(v["options"]), v["answer"]) for v in shipped}) == len(shipped) == 146
    assert all(v["answer"] in LETTERS[: len(v["options"])] for v in shipped)
    assert len({v["id"] for v in shipped}) == len(shipped)


def test_left_out_geometry_rows_really_leak_their_key():
    """Why geometry is not a vision-needed control: its key is always the smallest option."""
    rows = [json.loads(l) for l in asset_path("demo", "synthetic_charts.jsonl").read_text().splitlines() if l.strip()]
    geo = [r for r in rows if r["category"] == "geometry"]
    assert geo and all(key_text(r) == min(r["options"], key=int) for r in geo)


# --------------------------------------------------------------------------- the pure sweep


def test_choose_margin_on_hand_made_thresholds():
    thr = [None] * 90 + [0.05, 0.2, 0.3]  # 93 controls: 2 % allows floor(1.86) = 1 false hit
    assert choose_margin(thr, 0.02) == pytest.approx(0.201)  # the 2nd largest must go, the largest may stay
    assert hits_at(thr, 0.201) == 1 and hits_at(thr, 0.2) == 2
    assert choose_margin(thr, 0.022) == pytest.approx(0.051)  # floor(2.05) = 2 allowed: only the smallest goes
    assert choose_margin(thr, 0.04) == 0.0  # floor(3.72) = 3 allowed: all may stay
    assert choose_margin(thr, 0.0) == pytest.approx(0.301)  # none allowed: the margin passes the largest
    assert choose_margin([None] * 10, 0.0) == 0.0
    with pytest.raises(UserError, match="whatever the margin"):
        choose_margin([math.inf] * 5 + [None] * 5, 0.02)


def test_hit_threshold_reads_is_hit_backwards():
    a0 = Response("B", (0.1, 0.6, 0.2, 0.1), None)  # key B wins by 0.6 - 1/4
    a1 = Response("A", (0.5, 0.2, 0.2, 0.1), None)  # rotated by 1: the key B is now A, wins by 0.25
    assert hit_threshold([a0, a1], "B", 4, None, 2) == pytest.approx(0.25)
    assert hit_threshold([a0], "B", 4, None, 1) == pytest.approx(0.35)
    assert hit_threshold([a0, a1], "B", 4, None, 4) is None  # adaptive needs every rotation asked
    assert hit_threshold([a0, Response("B", (0.1, 0.6, 0.2, 0.1), None)], "B", 4, None, 2) is None  # 2nd ask misses
    assert hit_threshold([a0], "C", 4, None, 1) is None
    assert hit_threshold([Response("B", None, "B")], "B", 4, None, 1) == math.inf  # generated: any margin
    assert hit_threshold([Response("A", (0.5, 0.5), None)], "A", 2, None, 1, corrected=False) == math.inf


# --------------------------------------------------------------------------- a scripted member, end to end


def test_adaptive_calibration_on_a_scripted_member(tmp_path):
    from filters.backends.scripted import HISTORY

    r = calibrate_panel(scripted_panel(), cache_path=tmp_path / "c.sqlite")[0]
    assert black_items() == 10  # data facts the expectations below are worked from
    # every "black" colour control is a false hit at calibrated P 0.7 on every rotation (threshold 0.7 - 1/4);
    # 10 of 146 is far above 2 %, so the margin must pass 0.45: the first grid point above it
    assert r.margin == pytest.approx(0.451)
    assert (r.n_vision, r.false_hits) == (146, 0)
    assert r.false_hit_ci == pytest.approx(wilson_interval(0, 146))
    # the known MMLU controls win by 0.9 - 1/4 = 0.65 on every rotation: all still hit
    assert (r.n_mmlu, r.mmlu_hits, r.recall) == (200, N_KNOWN, N_KNOWN / 200)
    assert (r.single_pass_hits, r.kept) == (N_KNOWN, 1.0)
    # prompts at 0.451: known items 4 asks; shape-"A" items hit once (0.9 >= 1/3 + 0.451) and miss rotated; rest 1
    assert r.prompts == 346 + 3 * N_KNOWN + shape_a_items()
    assert r.single_pass_prompts == 346 and r.asked > 0
    # every adaptive_depth from the same asks: the black controls survive any number of rotations, so each
    # depth needs the same margin; a depth d costs d - 1 extra asks per known item (bug: depth ignored)
    assert [(d["adaptive_depth"], d["margin"], d["false_hits"], d["mmlu_hits"], d["kept"]) for d in r.depths] == [
        (d, pytest.approx(0.451), 0, N_KNOWN, 1.0) for d in (2, 3, 4)]
    assert [d["calls_ratio"] for d in r.depths] == [
        pytest.approx((346 + (d - 1) * N_KNOWN + shape_a_items()) / 346) for d in (2, 3, 4)]
    shallow = calibrate_panel(scripted_panel(adaptive_depth=2), cache_path=tmp_path / "c.sqlite")[0]
    assert shallow.adaptive_depth == 2 and shallow.prompts == 346 + N_KNOWN + shape_a_items() and shallow.asked == 0
    identity = next(k for k in HISTORY if HISTORY[k])
    before = {k: len(v) for k, v in HISTORY.items()}
    again = calibrate_panel(scripted_panel(), cache_path=tmp_path / "c.sqlite")[0]
    assert again.asked == 0 and again.cached == r.asked + r.cached  # second run: everything from the cache
    assert {k: len(v) for k, v in HISTORY.items()} == before and identity
    assert dataclasses.replace(again, asked=r.asked, cached=r.cached) == r


def test_one_pass_needs_a_larger_margin_than_adaptive_rotation(tmp_path):
    """Without rotation the position-biased "A" answers are false hits too (0.9 - 1/3 above chance)."""
    assert shape_a_items() >= 3  # more than the 2 allowed false hits, so they set the margin
    r = calibrate_panel(scripted_panel(rotations=1), cache_path=tmp_path / "c.sqlite")[0]
    assert r.margin == pytest.approx(math.floor((0.9 - 1 / 3) / 0.001 + 1) * 0.001)
    assert r.false_hits == 0 and r.mmlu_hits == N_KNOWN and r.prompts == 346


def test_chosen_margin_gives_the_stated_rate_in_the_screen(tmp_path):
    """The screen, with the written margin, hits exactly the vision controls calibrate counted."""
    from filters.screen import screen_with_report

    panel = scripted_panel()
    r = calibrate_panel(panel, cache_path=tmp_path / "c.sqlite", target_fpr=0.1)[0]
    assert r.margin == 0.0 and r.false_hits == black_items()  # 10 of 146 <= 10 %: no margin needed
    items = pl.DataFrame([{"item_id": v["id"], "question": v["question"], "options": v["options"], "answer": v["answer"]}
                          for v in vision_controls()])
    for margin, want in ((r.margin, r.false_hits), (0.451, 0)):
        member = dataclasses.replace(panel.members[0], margin=margin)
        out, _ = screen_with_report(items, dataclasses.replace(panel, members=(member,)), cache_path=tmp_path / "c.sqlite",
                                    progress=False, rules=False)
        assert int(out["hit__s"].sum()) == want


# --------------------------------------------------------------------------- the panel file and the CLI


def _result(name: str, margin: float | None = 0.123) -> Calibration:
    return Calibration(member=name, margin=margin, target_fpr=0.02, rotations="adaptive", n_vision=146, false_hits=2,
                       false_hit_rate=2 / 146, false_hit_ci=wilson_interval(2, 146), n_mmlu=200, mmlu_hits=80, recall=0.4,
                       recall_ci=wilson_interval(80, 200), single_pass_hits=90, kept=80 / 90, prompts=400, single_pass_prompts=346)


def test_write_keeps_comments_and_loads(tmp_path):
    copy = tmp_path / "panel.toml"
    shutil.copy(asset_path("panel.toml"), copy)
    before = copy.read_text()
    write_calibration(copy, [_result("qwen2.5-coder-1.5b")])
    after = copy.read_text()
    comments = [l for l in before.splitlines() if l.lstrip().startswith("#")]
    assert comments and all(c in after.splitlines() for c in comments)
    m = load_panel(copy).members[0]
    assert (m.margin, m.false_hit_rate, m.recall) == (0.123, round(2 / 146, 4), 0.4)
    assert load_panel(copy).config_hash != load_panel(asset_path("panel.toml")).config_hash  # the margin changes verdicts


def test_packaged_panel_is_never_rewritten(tmp_path):
    text = asset_path("panel.toml").read_text()
    with pytest.raises(UserError, match="--out"):
        write_calibration(asset_path("panel.toml"), [_result("qwen2.5-coder-1.5b")])
    assert asset_path("panel.toml").read_text() == text
    out = write_calibration(asset_path("panel.toml"), [_result("qwen2.5-coder-1.5b")], tmp_path / "mine.toml")
    assert load_panel(out).members[0].margin == 0.123 and asset_path("panel.toml").read_text() == text


def _cli(*args: str):
    from typer.testing import CliRunner

    from curate.cli import app

    return CliRunner().invoke(app, list(args))


def test_cli_calibrates_a_panel_file_and_asks_once(tmp_path):
    script_file = tmp_path / "script.json"
    script_file.write_text(json.dumps(script()))
    panel = tmp_path / "p.toml"
    panel.write_text(f'# my panel\n[panel]\nrotations = "adaptive"\ncontrol_size = 0  # no prior\n\n'
                     f'[[member]]\nname = "s"\nbackend = "scripted"\nmodel = "{script_file}"\nshots = 2\n')
    args = ["panel", "calibrate", "--panel", str(panel), "--cache", str(tmp_path / "c.sqlite"), "--json"]
    res = _cli(*args)
    assert res.exit_code == 0, res.output
    first = json.loads(res.stdout.strip().splitlines()[-1])["members"][0]
    assert first["margin"] == pytest.approx(0.451) and first["asked"] > 0
    text = panel.read_text()
    assert "# my panel" in text and "# no prior" in text and "margin = 0.451" in text
    second = json.loads(_cli(*args).stdout.strip().splitlines()[-1])["members"][0]
    assert second["asked"] == 0 and second["margin"] == first["margin"]
    table = _cli(*args[:-1], "--no-progress")
    assert table.exit_code == 0 and "0.451" in table.output and "0 / " in table.output


@pytest.mark.parametrize("args, message", [
    ([], "--out"),                                   # the packaged default panel
    (["--panel", "/nonexistent/p.toml", "--out", "x.toml"], "not found"),
    (["--target-fpr", "1.5", "--out", "x.toml"], "--target-fpr"),
])
def test_cli_user_errors_are_one_line_exit_2(tmp_path, args, message):
    import subprocess

    exe = Path(sys.executable).with_name("mmcurate")
    if not exe.exists():
        pytest.skip("mmcurate console script not installed")
    res = subprocess.run([str(exe), "panel", "calibrate", "--cache", str(tmp_path / "c.sqlite"), *args],
                         capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert res.returncode == 2 and message in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.stderr


# --------------------------------------------------------------------------- the real default member (slow)


@pytest.mark.slow
def test_shipped_default_panel_meets_the_control_targets(tmp_path):
    """Issue #17's targets, on the shipped controls with the shipped default panel at the margin its file
    states (what ``screen`` uses): false hits <= 2 % on questions that need the image, >= 75 % of the
    single-pass MMLU hits kept, <= 1.6x the calls of one pass -- each with its Wilson 95 % interval. The
    margin was chosen on these controls by ``mmcurate panel calibrate`` (in-sample: the intervals are the
    honest width), so this fails when a prompt, the model file, the prior or the hit rule changes what
    the panel file claims. ~300 prompts of the 1.5B model (~7 min on 2 cores)."""
    panel = load_panel()
    member = panel.members[0]
    assert panel.rotations == "adaptive" and member.margin is not None
    # the first 100 MMLU controls (they give the letter prior too); the panel file's recall is over all 200
    r = calibrate_panel(panel, cache_path=tmp_path / "c.sqlite", margin=member.margin, all_depths=False,
                        mmlu=control_items()[:100])[0]
    kept = round((r.kept or 0) * r.single_pass_hits)
    kept_lo, kept_hi = wilson_interval(kept, r.single_pass_hits)
    sp_lo, _ = wilson_interval(r.single_pass_hits, r.n_mmlu)
    print(f"{member.name}, adaptive_depth {panel.adaptive_depth}, margin {member.margin}: false hits {r.false_hits}/{r.n_vision} "
          f"[{r.false_hit_ci[0]:.3f}, {r.false_hit_ci[1]:.3f}]; single-pass MMLU hits {r.single_pass_hits}/{r.n_mmlu}, kept "
          f"{kept} [{kept_lo:.3f}, {kept_hi:.3f}]; recall {r.mmlu_hits}/{r.n_mmlu}; calls {r.calls_ratio:.3f}x; asked {r.asked}")
    assert (r.n_vision, r.n_mmlu) == (146, 100)
    # a guesser's single pass hits 25 %: the member knows MMLU, beyond the interval
    assert sp_lo > 0.25
    # false hits: at most the 2 % target, and the interval rules out the 8 % of the old single pass
    assert r.false_hit_rate <= 0.02 and r.false_hit_ci[1] < 0.08
    # kept: at least the 75 % target, and the interval rules out keeping only half
    assert (r.kept or 0) >= 0.75 and kept_lo > 0.5
    assert r.calls_ratio <= 1.6
    # the panel file states the false-hit rate measured here (written by the calibration that chose the margin)
    assert member.false_hit_rate == round(r.false_hit_rate, 4)
