"""Every decision of the screen against a hand-worked expectation, with answers written in advance.

The members here use the scripted backend (``filters.backends.scripted``): a real backend that reads
the options back out of the real prompts and answers each one from a script, so every hit, rotation,
chance value and report figure below was worked out by hand from the script before the test ran.
Each test names, in a comment, the one-line bug it is there to catch.
"""

from __future__ import annotations

import json
import math

import polars as pl
import pytest

from curate.errors import UserError
from curate.schema import ITEM_SCHEMA, conform
from curate.workspace import Workspace
from filters.backends.scripted import HISTORY, ScriptedBackend, parse_options
from filters.competence import control_items
from filters.panel import load_panel, panel_from_dict
from filters.prompts import build_prompt, rotate
from filters.screen import screen_ledger, screen_with_report, screen_workspace

KNOWER = {"rules": [{"match": "capital of France", "text": "Paris", "p": 0.9},
                    {"match": "largest planet", "text": "Jupiter", "p": 0.9}], "default": {"uniform": True}}
LOVES_A = {"default": {"letter": "A", "p": 0.9}}

# two questions a text-only model can know, two that need the image
FOUR = [
    ("k1", "Which city is the capital of France?", ["Rome", "Paris", "Oslo", "Bern"], "B"),
    ("k2", "Which is the largest planet?", ["Mars", "Venus", "Jupiter", "Earth"], "C"),
    ("g1", "What colour is the car in the image?", ["red", "blue", "green", "white"], "A"),
    ("g2", "How many dogs are in the photo?", ["one", "two", "three", "four"], "D"),
]


@pytest.fixture(autouse=True)
def fresh_history():
    """Prompts asked are recorded per script for the whole process: each test counts its own."""
    HISTORY.clear()


def table(rows, **extra) -> pl.DataFrame:
    df = pl.DataFrame(rows, schema=["item_id", "question", "options", "answer"], orient="row")
    return df.with_columns(**{k: pl.Series(v) for k, v in extra.items()})


def panel(*members: tuple[str, dict], **head):
    head = {"control_size": 0, **head}
    return panel_from_dict({"panel": head, "member": [{"name": n, "backend": "scripted", "model": s} for n, s in members]})


def run(items, p, tmp_path, name="c.sqlite"):
    return screen_with_report(items, p, cache_path=tmp_path / name, progress=False, rules=False)


def col(df, name):
    return dict(zip(df["item_id"].to_list(), df[name].to_list()))


# -- the scripted backend itself --------------------------------------------------------------
def test_scripted_backend_mass_follows_text_letter_or_seeded_guess():
    member = panel(("m", {"seed": 3, "rules": [{"match": "France", "text": "Paris", "p": 0.7},
                                              {"match": "dogs", "random": True, "p": 0.9}],
                          "default": {"letter": "B", "p": 0.4}})).members[0]
    b = ScriptedBackend(member)
    opts = ["Rome", "Paris", "Oslo", "Bern"]
    for shift in range(4):  # the knower's mass moves with the text "Paris"
        ro, key = rotate(opts, "B", shift)
        dist = b.distribution(build_prompt("What is the capital of France?", ro))
        assert dist[ord(key) - 65] == pytest.approx(0.7) and sum(dist) == pytest.approx(1.0)
        assert parse_options(build_prompt("q", ro, shots=2)) == ro  # few-shot examples are not read as options
    biased = b.distribution(build_prompt("Anything else?", ["x", "y", "z"]))
    assert biased == pytest.approx([0.3, 0.4, 0.3])  # letter B whatever the question, the rest shared
    dogs = build_prompt("How many dogs?", ["1", "2", "3", "4"])
    assert b.distribution(dogs) == b.distribution(dogs) and max(b.distribution(dogs)) == pytest.approx(0.9)
    guesses = {b.distribution(build_prompt(f"How many dogs in photo {i}?", ["1", "2", "3", "4"])).index(0.9) for i in range(40)}
    assert guesses == {0, 1, 2, 3}  # seeded per prompt text, uniform over letters
    rows = b.letter_logprobs([dogs, build_prompt("France", opts)], 4)
    assert len(b.asked) == 2 and HISTORY[b.identity][-2:] == [dogs.text, build_prompt("France", opts).text]
    assert math.exp(rows[1][1]) == pytest.approx(0.7)
    assert b.generate([build_prompt("France", opts)], 4) == ["B"]


def test_scripted_identity_follows_the_script_and_bad_scripts_are_one_line(tmp_path):
    a = ScriptedBackend(panel(("m", LOVES_A)).members[0])
    assert a.identity == ScriptedBackend(panel(("other", LOVES_A)).members[0]).identity
    assert a.identity != ScriptedBackend(panel(("m", KNOWER)).members[0]).identity
    with pytest.raises(UserError, match="exactly one of"):
        ScriptedBackend(panel(("m", {"default": {"letter": "A", "text": "x"}})).members[0])
    with pytest.raises(UserError, match="unknown script key"):
        ScriptedBackend(panel(("m", {"rulez": []})).members[0])
    script = tmp_path / "s.json"
    script.write_text(json.dumps(LOVES_A))
    (tmp_path / "p.toml").write_text('[[member]]\nname = "m"\nbackend = "scripted"\nmodel = "s.json"\n')
    loaded = load_panel(tmp_path / "p.toml")
    assert loaded.members[0].model == str(script) and ScriptedBackend(loaded.members[0]).identity == a.identity


# -- rotation --------------------------------------------------------------------------------
def test_adaptive_rotation_catches_the_position_guesser_and_keeps_the_knower(tmp_path):
    out, rep = run(table(FOUR), panel(("knower", KNOWER), ("loves_a", LOVES_A)), tmp_path)
    # knower: k1, k2 known all the way round (4 asks each); g1, g2 flat: no option wins, 1 ask each
    assert col(out, "hit__knower") == {"k1": True, "k2": True, "g1": False, "g2": False}
    assert col(out, "asks__knower") == {"k1": 4, "k2": 4, "g1": 1, "g2": 1}
    # loves_a: "A" is g1's key on the first ask; rotated once, "A" is "blue": a miss, so 2 asks; the rest 1
    assert col(out, "hit__loves_a") == {"k1": False, "k2": False, "g1": False, "g2": False}  # bug: hit from the first ask only
    assert col(out, "asks__loves_a") == {"k1": 1, "k2": 1, "g1": 2, "g2": 1}
    assert col(out, "answer__loves_a") == {"k1": "A", "k2": "A", "g1": "A", "g2": "A"}  # the unrotated ask
    assert col(out, "hits") == {"k1": 1, "k2": 1, "g1": 0, "g2": 0}
    assert col(out, "blind") == {"k1": True, "k2": True, "g1": False, "g2": False}
    # the model was asked exactly what the rule needs: 10 + 5 prompts, <= items + hits-on-first-ask * 3
    knower, loves_a = rep.members
    assert (knower.asks, loves_a.asks, rep.n_prompts) == (10, 5, 15)
    assert len(HISTORY[knower.identity]) == 10 and knower.asked == 10
    assert rep.rotations == "adaptive"
    assert knower.expected_chance_hit_rate == 0.25**4  # a uniform guesser must survive all 4 asks
    assert col(out, "prob__knower")["k1"] == pytest.approx(0.9)  # lowest over the rotations asked
    assert col(out, "prob__loves_a")["g1"] == pytest.approx(0.1 / 3)  # rotation 1 put 0.9 on "blue"


def test_fixed_rotations_are_exact_circular_eval(tmp_path):
    items = table(FOUR)
    one, rep1 = run(items, panel(("knower", KNOWER), ("loves_a", LOVES_A), rotations=1), tmp_path)
    # one pass: the letter-A lover hits g1 (key A) by position
    assert col(one, "hit__loves_a") == {"k1": False, "k2": False, "g1": True, "g2": False}
    assert col(one, "asks__loves_a") == {"k1": 1, "k2": 1, "g1": 1, "g2": 1}
    assert rep1.members[1].expected_chance_hit_rate == 0.25
    four, rep4 = run(items, panel(("knower", KNOWER), ("loves_a", LOVES_A), rotations=4), tmp_path)
    # every rotation asked: on its last one (shift 3) "A" is g2's key "four": only "every rotation" rejects it
    assert col(four, "hit__loves_a") == {"k1": False, "k2": False, "g1": False, "g2": False}  # bug: last rotation only
    assert col(four, "hit__knower") == {"k1": True, "k2": True, "g1": False, "g2": False}
    assert col(four, "asks__loves_a") == {"k1": 4, "k2": 4, "g1": 4, "g2": 4} and rep4.n_prompts == 32
    assert rep4.members[1].expected_chance_hit_rate == 0.25**4  # bug: expected rate ignores rotations
    _, rep2 = run(items, panel(("loves_a", LOVES_A), rotations=2), tmp_path)
    assert rep2.members[0].expected_chance_hit_rate == 0.25**2 and rep2.n_prompts == 8
    # chance: each candidate key judged on every rotation asked
    assert col(one, "chance__loves_a") == {"k1": 0.25, "k2": 0.25, "g1": 0.25, "g2": 0.25}
    assert col(four, "chance__loves_a") == {"k1": 0.0, "k2": 0.0, "g1": 0.0, "g2": 0.0}  # bug: chance ignores rotations
    assert col(four, "chance__knower") == {"k1": 0.25, "k2": 0.25, "g1": 0.0, "g2": 0.0}


# -- chance under adaptive rotation, blind_chance -------------------------------------------------
M1 = {"rules": [{"match": "France", "text": "Paris", "p": 0.9}], "default": {"letter": "A", "p": 0.9}}
M2 = {"rules": [{"match": "France", "text": "Rome", "p": 0.9}, {"match": "largest planet", "text": "Jupiter", "p": 0.9},
                {"match": "#e", "letter": "A", "p": 0.9}], "default": {"letter": "B", "p": 0.9}}
FIVE = [
    ("a", "Which city is the capital of France?", ["Rome", "Paris", "Oslo", "Bern"], "B"),
    ("b", "What colour is the kite? #b", ["red", "blue", "green", "white"], "A"),
    ("c", "What colour is the boat? #c", ["red", "blue", "green", "white"], "B"),
    ("d", "Which is the largest planet?", ["Mars", "Venus", "Jupiter", "Earth"], "C"),
    ("e", "How many cats are there? #e", ["one", "two", "three", "four"], "C"),
]


def test_adaptive_chance_uses_the_members_measured_survival(tmp_path):
    out, rep = run(table(FIVE), panel(("m1", M1), ("m2", M2)), tmp_path)
    # m1: a known (4 asks); b: "A" is the key, rotation 1 misses (2 asks); c, d, e: "A" is wrong (1 ask)
    # m2: d known; c: "B" is the key, rotation 1 misses; a: "Rome" wrong; b: "B" wrong; e: "A" wrong
    assert col(out, "asks__m1") == {"a": 4, "b": 2, "c": 1, "d": 1, "e": 1}
    assert col(out, "asks__m2") == {"a": 1, "b": 1, "c": 2, "d": 4, "e": 1}
    assert col(out, "hits") == {"a": 1, "b": 0, "c": 0, "d": 1, "e": 0}
    # survival of first-ask key hits: m1 1 of 2 (a yes, b no), m2 1 of 2 (d yes, c no) -> 0.5 for a wrong
    # option the first ask accepted (never rotated); the key's own outcome is exact
    assert col(out, "chance__m1") == pytest.approx({"a": 0.25, "b": 0.0, "c": 0.125, "d": 0.125, "e": 0.125})
    assert col(out, "chance__m2") == pytest.approx({"a": 0.125, "b": 0.125, "c": 0.0, "d": 0.25, "e": 0.125})
    # blind_chance, threshold 0, one random key for both: a = (A: 0.5, B: 1) / 4; e = (A: 1 - 0.5 * 0.5) / 4
    assert col(out, "blind_chance") == pytest.approx({"a": 0.375, "b": 0.125, "c": 0.125, "d": 0.375, "e": 0.1875})
    strict, _ = run(table(FIVE), panel(("m1", M1), ("m2", M2), max_hits=1), tmp_path)
    # threshold 1: both must hit the same random key; only e's "A" (0.5 * 0.5) can
    assert col(strict, "blind_chance") == pytest.approx({"a": 0.0, "b": 0.0, "c": 0.0, "d": 0.0, "e": 0.0625})
    # blind_score: mean over members of the key's (here uncalibrated) first-ask probability
    assert col(out, "blind_score")["a"] == pytest.approx((0.9 + 0.1 / 3) / 2)
    assert col(out, "probs__m2")["a"] == pytest.approx([0.9, 0.1 / 3, 0.1 / 3, 0.1 / 3])
    assert rep.n_prompts == 18


def test_adaptive_depth_stops_a_hit_after_that_many_asks(tmp_path):
    out, rep = run(table(FIVE), panel(("m1", M1), ("m2", M2), adaptive_depth=2), tmp_path)
    # the same answers as above, but a hit needs only the first two asks: a and d stop after 2, not 4
    assert col(out, "asks__m1") == {"a": 2, "b": 2, "c": 1, "d": 1, "e": 1}  # bug: depth ignored (a: 4)
    assert col(out, "asks__m2") == {"a": 1, "b": 1, "c": 2, "d": 2, "e": 1}
    assert col(out, "hits") == {"a": 1, "b": 0, "c": 0, "d": 1, "e": 0}
    assert rep.n_prompts == 14 and rep.adaptive_depth == 2 and rep.as_dict()["adaptive_depth"] == 2
    # a uniform guesser must survive 2 asks, not 4 (bug: the expected rate still raised to n_options)
    assert rep.members[0].expected_chance_hit_rate == 0.25**2
    # survival at depth 2: m1's first-ask key hits a (survives both asks) and b (misses rotation 1) -> 0.5
    assert col(out, "chance__m1") == pytest.approx({"a": 0.25, "b": 0.0, "c": 0.125, "d": 0.125, "e": 0.125})
    full, rep_full = run(table(FIVE), panel(("m1", M1), ("m2", M2), adaptive_depth=9), tmp_path)
    # a depth beyond the option count is every rotation: the same table as no depth
    assert col(full, "asks__m1") == {"a": 4, "b": 2, "c": 1, "d": 1, "e": 1} and rep_full.n_prompts == 18
    assert "adaptive_depth" not in run(table(FIVE), panel(("m1", M1)), tmp_path)[1].as_dict()


def test_adaptive_depth_is_checked_and_only_changes_the_hash_when_set():
    with pytest.raises(UserError, match=r"panel.adaptive_depth = 2 is invalid; it applies only to rotations = \"adaptive\""):
        panel(("m1", M1), rotations=4, adaptive_depth=2)
    with pytest.raises(UserError, match=r"panel.adaptive_depth = 1 is out of range"):
        panel(("m1", M1), adaptive_depth=1)
    assert panel(("m1", M1)).config_hash != panel(("m1", M1), adaptive_depth=2).config_hash
    assert "adaptive_depth" not in panel(("m1", M1)).resolved()


# -- thresholds --------------------------------------------------------------------------------
def test_blind_needs_more_than_max_hits(tmp_path):
    items = table(FOUR)
    p = panel(("knower", KNOWER), ("loves_a", LOVES_A), rotations=1, max_hits=1)
    out, rep = run(items, p, tmp_path)
    assert col(out, "hits") == {"k1": 1, "k2": 1, "g1": 1, "g2": 0}
    assert rep.threshold == 1 and not out["blind"].any()  # hits == threshold is kept (bug: >=)
    both = {"rules": KNOWER["rules"], "default": {"letter": "A", "p": 0.9}}  # knows k1, k2 and loves A
    out2, rep2 = run(items, panel(("knower", both), ("loves_a", LOVES_A), rotations=1, max_hits=1), tmp_path)
    assert col(out2, "hits") == {"k1": 1, "k2": 1, "g1": 2, "g2": 0} and col(out2, "blind")["g1"] is True
    assert rep2.n_blind == 1 and rep.n_blind == 0
    assert col(out, "blind_chance") == {"k1": 0.0, "k2": 0.0, "g1": 0.0, "g2": 0.0}
    assert col(out2, "blind_chance")["g1"] == 0.25  # both accept "A" whatever the key: 1 key in 4


def test_max_hit_fraction_counts_only_counted_members(tmp_path):
    p = panel(("knower", KNOWER), ("loves_a", LOVES_A), ("copy", LOVES_A), rotations=1, max_hit_fraction=0.5)
    out, rep = run(table(FOUR), p, tmp_path)
    assert rep.threshold == 1 and col(out, "hits") == {"k1": 1, "k2": 1, "g1": 2, "g2": 0}
    assert col(out, "blind") == {"k1": False, "k2": False, "g1": True, "g2": False}


# -- chance correction with a known prior, at_chance --------------------------------------------
LEANS_A = {"rules": [{"match": "#i1", "probs": [0.7, 0.1, 0.1, 0.1]}, {"match": "#i2", "probs": [0.5, 0.05, 0.4, 0.05]}],
           "default": {"probs": [0.7, 0.1, 0.1, 0.1]}}
TWO = [("i1", "Which shape is drawn? #i1", ["circle", "square", "star", "line"], "A"),
       ("i2", "Which animal is shown? #i2", ["cat", "dog", "cow", "fox"], "C")]


def test_chance_correction_divides_out_the_measured_prior(tmp_path):
    controls = control_items()[:20]
    p = panel(("leans_a", LEANS_A), rotations=1, control_size=20, at_chance="count")
    out, rep = run(table(TWO), p, tmp_path)
    comp = rep.members[0].competence
    # every control gets (0.7, 0.1, 0.1, 0.1): that is the prior, and it answers "A" to all 20
    assert comp["prior"] == pytest.approx([0.7, 0.1, 0.1, 0.1]) and comp["letter_bias"] == {"A": 1.0}
    assert comp["correct"] == sum(c["answer"] == "A" for c in controls) and comp["at_chance"]
    # i1: raw "A" at 0.7, calibrated flat -> no hit; i2: raw "A", calibrated C = 0.4/0.1 / (0.5/0.7 + 0.5 + 4 + 0.5) = 0.7
    assert col(out, "hit__leans_a") == {"i1": False, "i2": True}  # bug: corrected=False gives the opposite
    assert col(out, "answer__leans_a") == {"i1": "A", "i2": "A"}
    cal = col(out, "calprobs__leans_a")["i2"]
    assert cal == pytest.approx([0.5 / 0.7 / (40 / 7), 0.5 / (40 / 7), 0.7, 0.5 / (40 / 7)])
    assert col(out, "calprobs__leans_a")["i1"] == pytest.approx([0.25] * 4)
    assert col(out, "blind_score") == pytest.approx({"i1": 0.25, "i2": 0.7})
    assert col(out, "chance__leans_a") == {"i1": 0.0, "i2": 0.25}
    assert rep.chance_corrected and col(out, "blind") == {"i1": False, "i2": True}
    assert rep.members[0].expected_biased_hit_rate == pytest.approx(0.5)  # always "A": keys A, C -> 1 of 2
    raw, _ = run(table(TWO), panel(("leans_a", LEANS_A), rotations=1, control_size=20, chance_corrected=False), tmp_path)
    assert col(raw, "hit__leans_a") == {"i1": True, "i2": False}


def test_at_chance_member_is_excluded_or_counted(tmp_path):
    exclude, rep = run(table(TWO), panel(("leans_a", LEANS_A), rotations=1, control_size=20, at_chance="exclude"), tmp_path)
    assert not rep.members[0].counted and exclude["n_members"].to_list() == [0, 0]
    assert exclude["hits"].to_list() == [0, 0] and not exclude["blind"].any()
    assert col(exclude, "hit__leans_a")["i2"] is True  # its answers stay in the table
    assert exclude["blind_chance"].to_list() == [0.0, 0.0] and exclude["blind_score"].to_list() == [None, None]
    assert any("at chance" in w and "not counted" in w for w in rep.warnings)
    assert any("no member's hits count" in w for w in rep.warnings)
    count, rep2 = run(table(TWO), panel(("leans_a", LEANS_A), rotations=1, control_size=20, at_chance="count"), tmp_path)
    assert rep2.members[0].counted and count["blind"].to_list() == [False, True]


# -- copies ----------------------------------------------------------------------------------------
def test_a_copy_takes_its_representatives_answers_in_its_own_letters(tmp_path):
    rows = [("c0", "Which city is the capital of France?", ["Rome", "Paris", "Oslo", "Bern"], "B"),
            ("c1", "Which city is the capital of France?", ["Paris", "Oslo", "Bern", "Rome"], "A"),
            ("x", "What colour is the car in the image?", ["red", "blue", "green", "white"], "A")]
    items = table(rows, group_id=["c0", "c0", None])
    out, rep = run(items, panel(("knower", KNOWER), ("loves_a", LOVES_A)), tmp_path)
    knower = rep.members[0]
    assert rep.n_questions == 2 and rep.n_items == 3
    assert knower.asks == 4 + 1 and len(HISTORY[knower.identity]) == 5  # the copy is never asked
    assert col(out, "screened_as") == {"c0": "c0", "c1": "c0", "x": "x"}
    assert col(out, "answer__knower") == {"c0": "B", "c1": "A", "x": "A"}
    assert col(out, "answer__loves_a") == {"c0": "A", "c1": "D", "x": "A"}  # "Rome" is the copy's D
    third = 0.1 / 3
    assert col(out, "probs__knower")["c1"] == pytest.approx([0.9, third, third, third])
    assert col(out, "probs__loves_a")["c1"] == pytest.approx([third, third, third, 0.9])
    assert col(out, "hit__knower") == {"c0": True, "c1": True, "x": False}
    assert col(out, "asks__knower") == {"c0": 4, "c1": 4, "x": 1}
    assert col(out, "chance__knower")["c1"] == col(out, "chance__knower")["c0"] == 0.25
    assert col(out, "blind_chance")["c1"] == col(out, "blind_chance")["c0"]
    assert col(out, "blind") == {"c0": True, "c1": True, "x": False}


# -- the workspace: ledger and report --------------------------------------------------------------
def test_screen_workspace_ledger_accounts_for_every_item(tmp_path):
    rows = FOUR + [("k3", "Which city is the capital of France, again?", ["Paris", "Lyon"], "A"),
                   ("bad", "Which letter is shown?", ["x", "x", "y"], "A")]
    items = table(rows, source=["t"] * 6, source_file=["t.tsv"] * 6, row=list(range(1, 7)))
    ws = Workspace(tmp_path / "ws", create=True)
    ws.write("items", conform(items, ITEM_SCHEMA))
    (tmp_path / "knower.json").write_text(json.dumps(KNOWER))
    (tmp_path / "panel.toml").write_text('[panel]\nname = "scripted"\ncontrol_size = 0\n'
                                         '[[member]]\nname = "knower"\nbackend = "scripted"\nmodel = "knower.json"\n'
                                         '[rules]\nenabled = ["malformed"]\ndrop = ["malformed"]\n')
    df, rep = screen_workspace(ws.root, tmp_path / "panel.toml", cache_path=tmp_path / "c.sqlite", progress=False)
    ledger = Workspace(ws.root).ledger().filter(pl.col("stage") == "screen").sort("row")
    assert ledger.height == 6 and ledger["item_id"].to_list() == [r[0] for r in rows]  # bug: blind rows dropped
    status = dict(zip(ledger["item_id"], ledger["status"]))
    reason = dict(zip(ledger["item_id"], ledger["reason"]))
    assert status == {"k1": "dropped", "k2": "dropped", "g1": "kept", "g2": "kept", "k3": "dropped", "bad": "dropped"}
    assert reason["k1"] == "blind_answerable" and reason["g1"] is None and reason["bad"] == "rules:malformed"
    assert ledger["detail"].str.contains(rep.panel_hash).all()
    assert screen_ledger(df).height == df.height == 6
    written = pl.read_parquet(ws.root / "screened.parquet")
    assert written["blind"].to_list() == [True, True, False, False, True, False]
    assert written.schema["probs__knower"] == pl.List(pl.Float64) and written.schema["asks__knower"] == pl.Int32
    saved = json.loads((ws.root / "screen_report.json").read_text())
    # k1, k2: 4 asks; g1, g2, bad: 1 (flat: nothing wins); k3 has 2 options: 2 asks
    assert saved["n_prompts"] == 13 and saved["members"][0]["asks"] == 13 and saved["n_blind"] == 3
    assert saved["rotations"] == "adaptive" and saved["members"][0]["false_hit_rate"] is None
    assert saved["members"][0]["hit_rate"] == pytest.approx(3 / 6)
    assert saved["members"][0]["expected_chance_hit_rate"] == pytest.approx((4 * 0.25**4 + 0.5**2 + (1 / 3) ** 3) / 6)


def test_member_margin_overrides_the_panels(tmp_path):
    modest = {"rules": [{"match": "capital of France", "text": "Paris", "p": 0.4}], "default": {"uniform": True}}
    # 0.4 >= 1/4 + 0.1 (panel margin) is a hit; a member margin of 0.2 needs 0.45
    loose = panel_from_dict({"panel": {"control_size": 0, "rotations": 1},
                             "member": [{"name": "m", "backend": "scripted", "model": modest}]})
    strict = panel_from_dict({"panel": {"control_size": 0, "rotations": 1},
                              "member": [{"name": "m", "backend": "scripted", "model": modest, "margin": 0.2,
                                          "false_hit_rate": 0.01, "recall": 0.8}]})
    a, _ = run(table(FOUR[:1]), loose, tmp_path)
    b, rep = run(table(FOUR[:1]), strict, tmp_path)
    assert a["hits"].to_list() == [1] and b["hits"].to_list() == [0]
    assert (rep.members[0].margin, rep.members[0].false_hit_rate, rep.members[0].recall) == (0.2, 0.01, 0.8)
    assert loose.config_hash != strict.config_hash


# -- a guesser, many items: the chance estimate, the cost, determinism and resume ---------------------
GUESSER = {"seed": 5, "default": {"random": True, "p": 0.9}}


def guessed_items(n: int) -> pl.DataFrame:
    return table([(f"q{i}", f"What is in picture {i}?", ["cat", "dog", "cow", "fox"], "ABCD"[i % 4]) for i in range(n)])


def test_a_random_guesser_costs_little_and_its_chance_matches_the_survival_rule(tmp_path):
    out, rep = run(guessed_items(60), panel(("guess", GUESSER)), tmp_path)
    answer, key = out["answer__guess"].to_list(), out["answer"].to_list()
    asks, hit, chance = out["asks__guess"].to_list(), out["hit__guess"].to_list(), out["chance__guess"].to_list()
    first_hits = sum(a == k for a, k in zip(answer, key))
    assert 0 < first_hits < 60
    # a first-ask miss is asked once; a first-ask hit at least twice; a hit needed all four asks
    assert all((n == 1) == (a != k) for n, a, k in zip(asks, answer, key))
    assert all(n == 4 for n, h in zip(asks, hit) if h)
    assert rep.n_prompts == sum(asks) == len(HISTORY[rep.members[0].identity]) < 2 * 60
    # chance worked from the table alone: the key's own outcome, or the survival of first-ask key hits
    survival = sum(hit) / first_hits
    assert chance == pytest.approx([(h if a == k else survival) / 4 for a, k, h in zip(answer, key, hit)])
    assert out["blind_chance"].to_list() == pytest.approx(chance)  # one member, threshold 0


def test_results_do_not_depend_on_what_the_cache_already_held(tmp_path):
    items = guessed_items(40)
    p = panel(("guess", GUESSER), ("loves_a", LOVES_A))
    fresh, _ = run(items, p, tmp_path, "fresh.sqlite")
    run(items.head(15), p, tmp_path, "partial.sqlite")  # a run stopped after 15 items
    HISTORY.clear()
    resumed, rep = run(items, p, tmp_path, "partial.sqlite")
    assert resumed.equals(fresh)
    asked_again = set(HISTORY[rep.members[0].identity])
    assert not any(f"picture {i}?" in t for t in asked_again for i in range(15))  # nothing asked twice
    assert rep.members[0].cached > 0 and rep.members[0].asked + rep.members[0].cached == rep.members[0].asks


# -- the verdict arithmetic on its own, worked by hand -----------------------------------------------
def test_poisson_binomial_tail_by_hand():
    from filters.screen import _above

    assert _above([0.5, 0.5], 0) == 0.75  # P(at least one of two fair coins)
    assert _above([0.5, 0.5], 1) == 0.25  # P(both)
    assert _above([0.5, 0.5], 2) == 0.0
    assert _above([0.2, 0.5, 1.0], 1) == pytest.approx(1 - 0.8 * 0.5)  # the sure one plus at least one more
    assert _above([0.2, 0.5, 1.0], 0) == 1.0
    assert _above([0.3], 0) == pytest.approx(0.3) and _above([], 0) == 0.0


def test_blind_chance_averages_the_tail_over_candidate_keys_by_hand():
    from filters.screen import _blind_chance

    m1 = [[1.0, 0.0, 0.0, 0.0], None, [0.5, 0.0], []]
    m2 = [[0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0], [0.0, 0.0], []]
    # item 0, threshold 0: keys A and B each make one member hit -> 2 of 4 keys; threshold 1: no key makes both hit
    # item 1: m1 has no answer -> unknown; item 2: key A with m1's survival 0.5 -> (0.5 + 0) / 2; item 3: no options
    assert _blind_chance([m1, m2], 4, 0) == [0.5, None, 0.25, None]
    assert _blind_chance([m1, m2], 4, 1) == [0.0, None, 0.0, None]
    assert _blind_chance([], 2, 0) == [0.0, 0.0]  # no member counts: nothing is ever dropped


def test_blind_score_is_the_mean_calibrated_key_probability_by_hand():
    from filters.screen import _blind_score

    answers = ["B", "Z", None, "A", "C"]
    m1 = [[0.1, 0.6, 0.2, 0.1], [0.25] * 4, [0.5, 0.5], None, [0.5, 0.5]]
    m2 = [[0.2, 0.4, 0.2, 0.2], None, None, None, [0.1, 0.2, 0.7]]
    # item 0: (0.6 + 0.4) / 2; "Z" and None are no keys; item 3: nobody has probabilities;
    # item 4: key C is not among m1's two options, so only m2 counts
    assert _blind_score(answers, [m1, m2]) == [pytest.approx(0.5), None, None, None, pytest.approx(0.7)]


def test_asks_per_item_under_each_rotation_rule():
    from filters.screen import _max_asks, _shifts

    assert [_max_asks(n, "adaptive") for n in (0, 2, 4)] == [0, 2, 4]
    assert [_max_asks(n, 3) for n in (0, 2, 4)] == [0, 2, 3]
    assert _max_asks(4, 1) == 1 and _shifts(4, 3) == [0, 1, 2] and _shifts(2, "adaptive") == [0, 1]
    assert _max_asks(1, "adaptive") == _max_asks(1, 3) == 1  # a one-option item is still asked once
    assert [_max_asks(n, "adaptive", 2) for n in (0, 1, 2, 4)] == [0, 1, 2, 2]  # adaptive_depth caps the asks
    assert _max_asks(4, "adaptive", 3) == 3 and _shifts(4, "adaptive", 2) == [0, 1]
    assert _max_asks(4, 3, 2) == 3  # a depth means nothing to fixed rotations


# -- score_prompts: cache, batches, answers in input order ---------------------------------------------
SCORE_SCRIPT = {"rules": [{"match": "capital of France", "text": "Paris", "p": 0.7},
                          {"match": "Tell me", "reply": "The answer is (B)."}],
                "default": {"letter": "A", "p": 0.4}}


class PaddedScripted(ScriptedBackend):
    """The same scripted answers from a backend that pads its batches (like transformers): a batch that
    is not wholly cached is run whole, so its neighbours -- and every number -- never depend on the cache."""

    batch_independent = False


def _prompts(rows):
    return [build_prompt(q, opts) for q, opts in rows], [opts for _, opts in rows]


def test_score_prompts_answers_in_input_order_and_counts_its_work(tmp_path):
    from filters.cache import ResponseCache
    from filters.scoring import score_prompts

    member = panel_from_dict({"panel": {"control_size": 0}, "member": [
        {"name": "m", "backend": "scripted", "model": SCORE_SCRIPT, "batch_size": 2}]}).members[0]
    france = ("Which city is the capital of France?", ["Rome", "Paris", "Oslo", "Bern"])
    yesno = ("Is the sky green in the image?", ["yes", "no"])
    car = ("What colour is the car in the image?", ["red", "blue", "green", "white"])
    prompts, opts = _prompts([france, yesno, france, car])  # one request twice
    backend = ScriptedBackend(member)
    stats, advanced = {}, []
    with ResponseCache(tmp_path / "c.sqlite") as cache:
        got = score_prompts(backend, prompts, opts, cache, advance=advanced.append, stats=stats)
        # France: 0.7 on Paris (B), 0.1 each elsewhere; the rest: 0.4 on A, the remainder shared
        assert [r.letter for r in got] == ["B", "B", "B", "A"] and all(r.raw is None for r in got)
        assert got[0].probs == pytest.approx((0.1, 0.7, 0.1, 0.1)) and got[2] == got[0]
        assert got[1].probs == pytest.approx((0.4, 0.6))  # 2 options: 0.4 on A leaves 0.6 to B, which wins
        assert got[3].probs == pytest.approx((0.4, 0.2, 0.2, 0.2))
        assert (stats["asked"], stats["cached"]) == (3, 0) and stats["seconds"] >= 0 and sum(advanced) == 3
        assert len(backend.asked) == 3  # the repeated request asked once
        # again, with one new request: only that one is asked (an independent backend)
        more, more_opts = _prompts([france, yesno, car, ("Which city is the capital of France? Really?", france[1])])
        stats2 = {}
        again = score_prompts(backend, more, more_opts, cache, stats=stats2)
        assert [r.letter for r in again] == ["B", "B", "A", "B"] and (stats2["asked"], stats2["cached"]) == (1, 3)
        assert len(backend.asked) == 4
    # a padding backend runs a batch that is not wholly cached whole: 2 asked, though 1 was cached
    padded = PaddedScripted(member)
    with ResponseCache(tmp_path / "p.sqlite") as cache:
        score_prompts(padded, *_prompts([car]), cache)
        stats3, advanced3 = {}, []
        two = score_prompts(padded, *_prompts([car, france]), cache, stats=stats3, advance=advanced3.append)
        assert [r.letter for r in two] == ["A", "B"] and (stats3["asked"], stats3["cached"]) == (2, 1)
        assert len(padded.asked) == 3 and sum(advanced3) == 2
        stats4, advanced4 = {}, []
        score_prompts(padded, *_prompts([car, france]), cache, stats=stats4, advance=advanced4.append)
        assert (stats4["asked"], stats4["cached"]) == (0, 2) and sum(advanced4) == 2 and len(padded.asked) == 3


def test_score_prompts_generate_extracts_the_letter_from_the_reply(tmp_path):
    from filters.cache import ResponseCache
    from filters.scoring import score_prompts

    member = panel_from_dict({"panel": {"control_size": 0}, "member": [
        {"name": "g", "backend": "scripted", "model": SCORE_SCRIPT, "method": "generate"}]}).members[0]
    prompts, opts = _prompts([("Tell me which fruit is in the image", ["apple", "pear", "plum"]),
                              ("What colour is the car in the image?", ["red", "blue", "green", "white"])])
    with ResponseCache(tmp_path / "g.sqlite") as cache:
        got = score_prompts(ScriptedBackend(member), prompts, opts, cache)
    assert [(r.letter, r.probs, r.raw) for r in got] == [("B", None, "The answer is (B)."), ("A", None, "A")]


def test_softmax_by_hand_and_far_from_zero():
    from filters.scoring import softmax

    assert softmax([math.log(0.2), math.log(0.3), math.log(0.5)]) == pytest.approx((0.2, 0.3, 0.5))
    # log-probabilities far from 0 either way: subtracting the maximum keeps exp() finite and the sum non-zero
    assert softmax([1000.0, 1000.0 + math.log(3)]) == pytest.approx((0.25, 0.75))
    assert softmax([-1000.0, -1000.0 - math.log(3)]) == pytest.approx((0.75, 0.25))


def test_screen_ledger_reason_codes_by_hand():
    screened = pl.DataFrame({
        "source_file": ["t.tsv"] * 5, "row": [1, 2, 3, 4, 5], "item_id": ["a", "b", "c", "d", "e"],
        "blind": [False, True, True, False, False], "rule_drop": [False, False, True, True, None],
        "rule_reason": [None, None, "answer_leak: key in the question; malformed: two options equal", "malformed: x", None],
        "screen_error": [None, None, None, None, "ValueError: too long"],
        "screen_reason": [None, "blind: 2 of 2", "blind: 1 of 2", None, None], "panel_hash": ["h1"] * 5,
        "screened_as": ["a", "b", "c", "a", "e"], "group_reason": [None, None, None, "circular copy", None],
    })
    led = screen_ledger(screened)
    assert led.columns == ["source_file", "row", "item_id", "status", "reason", "detail"]
    assert led["row"].to_list() == [1, 2, 3, 4, 5]
    assert led["status"].to_list() == ["kept", "dropped", "dropped", "dropped", "dropped"]
    assert led["reason"].to_list() == [None, "blind_answerable", "blind_answerable+rules:answer_leak,malformed",
                                       "rules:malformed", "unaskable"]  # an unaskable item is never "kept"
    assert led["detail"].to_list() == ["kept by every filter [panel h1]", "blind: 2 of 2 [panel h1]",
                                       "blind: 1 of 2 [panel h1]",
                                       "kept by every filter [panel h1] (answers of a: circular copy)",
                                       "kept by every filter [panel h1]"]
    # without the optional columns: no rule codes, no provenance columns; a copy without a group reason is a "copy"
    bare = screened.select("item_id", "blind", "screen_reason", "panel_hash", "screened_as")
    led2 = screen_ledger(bare)
    assert led2.columns == ["item_id", "status", "reason", "detail"]
    assert led2["reason"].to_list() == [None, "blind_answerable", "blind_answerable", None, None]
    assert led2["detail"][3] == "kept by every filter [panel h1] (answers of a: copy)"


def test_request_keys_hold_everything_that_decides_the_answer():
    """A cached answer is reused only for the same model, method, template, prompt and answer settings;
    the key is also a file format (every user's response cache), so it is pinned to its documented fields."""
    from filters.cache import request_key
    from filters.prompts import TEMPLATE_VERSION, Prompt
    from filters.scoring import request_keys

    def member(**extra):
        return panel_from_dict({"panel": {"control_size": 0}, "member": [
            {"name": "m", "backend": "scripted", "model": LOVES_A, **extra}]}).members[0]

    four, three = Prompt("", "Question: q\nAnswer:", 4), Prompt("", "Question: q\nAnswer:", 3)  # same text
    loglik = ScriptedBackend(member())
    keys = request_keys(loglik, [four, three])
    assert keys == [request_key(loglik.identity, "loglik", TEMPLATE_VERSION, four.text, n_letters=4),
                    request_key(loglik.identity, "loglik", TEMPLATE_VERSION, four.text, n_letters=3)]
    assert keys[0] != keys[1]  # the letters scored are part of the request
    other_model = ScriptedBackend(member(model=KNOWER))
    assert request_keys(other_model, [four]) != keys[:1]
    gen = ScriptedBackend(member(method="generate", max_new_tokens=8, chat=False))
    gkeys = request_keys(gen, [four, three])
    assert gkeys[0] == gkeys[1] == request_key(gen.identity, "generate", TEMPLATE_VERSION, four.text, max_new_tokens=8, chat=False)
    assert gkeys[0] not in keys
    assert request_keys(ScriptedBackend(member(method="generate", max_new_tokens=9, chat=False)), [four]) != gkeys[:1]
    assert request_keys(ScriptedBackend(member(method="generate", max_new_tokens=8, chat=True)), [four]) != gkeys[:1]


class _NoBatchFlag:
    """A backend that does not say whether its answers depend on the batch: it must be treated as padding
    (the safe reading), so its batches run whole and longest first."""

    def __init__(self, member):
        self._inner = ScriptedBackend(member)
        self.member, self.identity = member, self._inner.identity

    def letter_logprobs(self, prompts, n_letters):
        return self._inner.letter_logprobs(prompts, n_letters)

    @property
    def asked(self):
        return self._inner.asked


def test_score_prompts_batch_order_follows_the_backend_and_stats_accumulate(tmp_path):
    from filters.cache import ResponseCache
    from filters.prompts import Prompt
    from filters.scoring import score_prompts

    member = panel(("m", LOVES_A)).members[0]  # batch size 8: one batch
    short, longest, middle = (Prompt("", f"Question: {q}?\nAnswer:", 2) for q in ("a", "b b b b b b", "c c c"))
    prompts, opts = [short, longest, middle], [["x", "y"]] * 3
    by_text, by_length = [short.text, longest.text, middle.text], [longest.text, middle.text, short.text]
    for backend, order in ((ScriptedBackend(member), by_text), (PaddedScripted(member), by_length),
                           (_NoBatchFlag(member), by_length)):
        with ResponseCache(tmp_path / f"{type(backend).__name__}.sqlite") as cache:
            score_prompts(backend, prompts, opts, cache)
            assert backend.asked == order, type(backend).__name__
            # stats add up over calls (the screen asks in rounds); an all-cached call adds no model time
            stats = {"asked": 2, "cached": 5, "seconds": 0.0}
            score_prompts(backend, prompts, opts, cache, stats=stats)
            assert stats == {"asked": 2, "cached": 8, "seconds": 0.0}
            fresh = {}
            score_prompts(backend, prompts, opts, cache, stats=fresh)
            assert fresh == {"asked": 0, "cached": 3, "seconds": 0.0}


class _CutReplies(ScriptedBackend):
    """Scripted replies cut to ``max_new_tokens`` characters, as a model stops after that many tokens."""

    def generate(self, prompts, max_new_tokens):
        return [t[:max_new_tokens] for t in super().generate(prompts, max_new_tokens)]


def test_score_prompts_passes_the_members_token_limit_and_times_only_the_model(tmp_path):
    import time

    from filters.cache import ResponseCache
    from filters.scoring import score_prompts

    def member(n):
        return panel_from_dict({"panel": {"control_size": 0}, "member": [
            {"name": "g", "backend": "scripted", "model": SCORE_SCRIPT, "method": "generate", "max_new_tokens": n}]}).members[0]

    prompts, opts = _prompts([("Tell me which fruit is in the image", ["apple", "pear", "plum"])])
    with ResponseCache(tmp_path / "g.sqlite") as cache:
        # "The answer is (B)." cut to 9 characters names no option: a miss, with the reply kept
        assert [(r.letter, r.raw) for r in score_prompts(_CutReplies(member(9)), prompts, opts, cache)] == [(None, "The answe")]
        stats = {"asked": 0, "cached": 0, "seconds": 100.0}
        t0 = time.perf_counter()
        got = score_prompts(_CutReplies(member(40)), prompts, opts, cache, stats=stats)
        elapsed = time.perf_counter() - t0
    assert [(r.letter, r.raw) for r in got] == [("B", "The answer is (B).")]
    assert stats["asked"] == 1 and 100.0 <= stats["seconds"] <= 100.0 + elapsed  # model time is added, never more


def test_score_prompts_breaks_a_tie_to_the_first_letter(tmp_path):
    from filters.cache import ResponseCache
    from filters.scoring import score_prompts

    # a flat distribution: every letter at 1/4 (or 1/3); the answer is the first, as MMStar's argmax reads it
    flat = panel(("flat", {"default": {"uniform": True}})).members[0]
    prompts, opts = _prompts([("What colour is the car in the image?", ["red", "blue", "green", "white"]),
                              ("How many dogs?", ["one", "two", "three"])])
    with ResponseCache(tmp_path / "f.sqlite") as cache:
        got = score_prompts(ScriptedBackend(flat), prompts, opts, cache)
    assert [r.letter for r in got] == ["A", "A"] and got[0].probs == pytest.approx((0.25,) * 4)
