"""Fast tests of the screening parts that need no model: panel files, prompts, extraction, cache, statistics."""

from __future__ import annotations

import dataclasses
import math
import os
import sqlite3
from pathlib import Path

import pytest

from curate.errors import UserError
from filters.cache import ResponseCache, request_key
from curate.stats import wilson_interval
from filters.competence import Competence, is_hit, summarise
from filters.panel import load_panel, panel_from_dict
from filters.prompts import build_prompt, chat_messages, fewshot_prefix, rotate
from filters.scoring import Response, extract_answer, plan_batches, softmax


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "panel.toml"
    p.write_text(text, encoding="utf-8")
    return p


MEMBER = '[[member]]\nname = "m"\nmodel = "package:smollm2-135m-instruct"\n'


# -- panel files ---------------------------------------------------------------------
def test_shipped_panels_load():
    default = load_panel()
    assert [m.name for m in default.members] == ["qwen2.5-coder-1.5b"]
    assert default.members[0].shots == 2 and default.max_hits == 0
    assert default.rotations == "adaptive" and default.adaptive_depth == 2 and default.members[0].margin == 0.136
    tiny = load_panel(Path(__file__).parents[1] / "data" / "panel_tiny.toml")
    assert tiny.members[0].model == "package:smollm2-135m-instruct"


def test_typo_in_member_field_names_file_field_and_fix(tmp_path):
    p = write(tmp_path, MEMBER + 'methd = "loglik"\n')
    with pytest.raises(UserError) as e:
        load_panel(p)
    msg = str(e.value)
    assert msg.startswith(f"{p}: unknown key 'methd' in member[1] (m) (did you mean 'method'?)"), msg
    assert "\n" not in msg


def test_typo_in_panel_field_and_bad_values(tmp_path):
    with pytest.raises(UserError, match=r"unknown key 'max_hit' in \[panel\] \(did you mean 'max_hits'\?\)"):
        load_panel(write(tmp_path, "[panel]\nmax_hit = 2\n" + MEMBER))
    with pytest.raises(UserError, match=r"member\[1\] \(m\)\.backend = 'vllm' is invalid; it must be one of 'auto', "):
        load_panel(write(tmp_path, MEMBER + 'backend = "vllm"\n'))
    with pytest.raises(UserError, match=r"shots = 5 is invalid; it must be one of 0, 2"):
        load_panel(write(tmp_path, MEMBER + "shots = 5\n"))
    with pytest.raises(UserError, match=r"panel\.max_hits = 'two' is invalid; it must be an integer >= 0"):
        load_panel(write(tmp_path, '[panel]\nmax_hits = "two"\n' + MEMBER))
    with pytest.raises(UserError, match="not valid TOML"):
        load_panel(write(tmp_path, "[panel\n"))
    with pytest.raises(UserError, match="no members"):
        load_panel(write(tmp_path, "[panel]\nmax_hits = 1\n"))


def test_rotations_adaptive_or_int_and_member_margin_and_rates(tmp_path):
    assert load_panel(write(tmp_path, MEMBER)).rotations == "adaptive"  # the default
    assert load_panel(write(tmp_path, "[panel]\nrotations = 4\n" + MEMBER)).rotations == 4
    with pytest.raises(UserError, match=r"panel\.rotations = 'adaptve' is invalid; it must be an integer >= 1 or 'adaptive' .*\(did you mean 'adaptive'\?\)"):
        load_panel(write(tmp_path, '[panel]\nrotations = "adaptve"\n' + MEMBER))
    with pytest.raises(UserError, match=r"panel\.rotations = 0 is out of range; it must be an integer >= 1 or 'adaptive' \(1 means no rotation\)"):
        load_panel(write(tmp_path, "[panel]\nrotations = 0\n" + MEMBER))
    with pytest.raises(UserError, match=r"rotations = 1.5 is invalid; it must be an integer >= 1 or 'adaptive'"):
        load_panel(write(tmp_path, "[panel]\nrotations = 1.5\n" + MEMBER))
    m = load_panel(write(tmp_path, MEMBER + "margin = 0.25\nfalse_hit_rate = 0.02\nrecall = 0.8\n")).members[0]
    assert (m.margin, m.false_hit_rate, m.recall) == (0.25, 0.02, 0.8)
    with pytest.raises(UserError, match=r"member\[1\] \(m\)\.margin = 1.5 is out of range; it must be a number in \[0, 1\)"):
        load_panel(write(tmp_path, MEMBER + "margin = 1.5\n"))
    with pytest.raises(UserError, match=r"member\[1\] \(m\)\.recall = 2 is out of range; it must be a number in \[0, 1\]"):
        load_panel(write(tmp_path, MEMBER + "recall = 2\n"))
    with pytest.raises(UserError, match=r"false_hit_rate = 'low' is invalid; it must be a number in \[0, 1\]"):
        load_panel(write(tmp_path, MEMBER + 'false_hit_rate = "low"\n'))


def test_missing_model_path_and_openai_without_url(tmp_path):
    with pytest.raises(UserError, match=r"model = 'nowhere/model.gguf': no such file or folder"):
        load_panel(write(tmp_path, '[[member]]\nname = "x"\nmodel = "nowhere/model.gguf"\n'))
    with pytest.raises(UserError, match="has no base_url"):
        load_panel(write(tmp_path, '[[member]]\nname = "x"\nbackend = "openai"\nmodel = "m"\n'))
    with pytest.raises(UserError, match="names no packaged model"):
        load_panel(write(tmp_path, '[[member]]\nname = "x"\nmodel = "package:gpt-9"\n'))


def test_relative_model_path_resolves_against_panel_file(tmp_path):
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    panel = load_panel(write(tmp_path, '[[member]]\nname = "x"\nmodel = "m.gguf"\n'))
    assert panel.members[0].model == str(tmp_path / "m.gguf")


def test_config_hash_ignores_plumbing_but_not_verdict_settings():
    base = panel_from_dict({"member": [{"name": "a", "model": "package:smollm2-135m-instruct"}]})
    faster = dataclasses.replace(base, members=(dataclasses.replace(base.members[0], batch_size=64, n_threads=8),))
    stricter = dataclasses.replace(base, margin=0.2)
    assert base.config_hash == faster.config_hash != stricter.config_hash
    # measured rates describe a member (written by `panel calibrate`); its own margin decides
    described = dataclasses.replace(base, members=(dataclasses.replace(base.members[0], false_hit_rate=0.02, recall=0.8),))
    own_margin = dataclasses.replace(base, members=(dataclasses.replace(base.members[0], margin=0.2),))
    assert described.config_hash == base.config_hash != own_margin.config_hash
    assert "margin" not in base.resolved()["members"][0]  # no per-member margin: the hash it had before they existed
    assert base.config_hash != dataclasses.replace(base, rotations=1).config_hash
    assert len(base.config_hash) == 16


def test_threshold_fraction_and_member_selection():
    d = {"panel": {"max_hit_fraction": 0.25}, "member": [{"name": n, "model": "package:smollm2-135m-instruct"} for n in "abcdefgh"]}
    panel = panel_from_dict(d)
    assert panel.threshold(8) == 2  # MMStar: drop when more than 2 of 8 hit
    assert [m.name for m in panel.select(["c", "a"]).members] == ["a", "c"]
    with pytest.raises(UserError, match="no panel member named 'z'"):
        panel.select(["z"])


# -- prompts -------------------------------------------------------------------------
def test_prompt_layout_and_fewshot_prefix():
    p = build_prompt("What colour is the sky?", ["red", "blue"], "Look up.", shots=2)
    assert p.body == (
        "Hint: Look up.\nQuestion: What colour is the sky?\nOptions:\nA. red\nB. blue\n"
        "Answer with the option's letter from the given choices directly.\nAnswer:"
    )
    assert p.prefix == fewshot_prefix(2) and p.prefix.count("Question:") == 2 and p.prefix.endswith("\n\n")
    assert build_prompt("q", ["x", "y"], shots=0).prefix == ""
    msgs = chat_messages(p)
    assert [m["role"] for m in msgs] == ["user", "assistant", "user", "assistant", "user"]
    assert msgs[1]["content"] == "B" and msgs[-1]["content"].endswith("directly.")


def test_rotation_moves_the_key():
    opts, key = rotate(["w", "x", "y", "z"], "C", 1)
    assert opts == ["x", "y", "z", "w"] and key == "B"
    assert rotate(["w", "x", "y", "z"], "A", 1)[1] == "D"
    assert rotate(["w", "x"], "B", 2) == (["w", "x"], "B")


# -- answer extraction ----------------------------------------------------------------
@pytest.mark.parametrize(
    "reply, expected",
    [
        ("B", "B"), ("b.", "B"), ("C) yellow", "C"), ("The answer is (D).", "D"), ("Option a is right", "A"),
        ("Answer: C", "C"), ("**B**", "B"), ("yellow", "C"), ("It is a yellow triangle.", "C"),
        ("a circle", None), ("I cannot see the image.", None), ("", None), ("(A) or (B)", None), ("E", None),
    ],
)
def test_extract_answer(reply, expected):
    assert extract_answer(reply, ["red", "blue", "yellow", "green"]) == expected


def test_extract_prefers_the_longer_option_when_one_contains_the_other():
    assert extract_answer("dark red", ["red", "dark red", "blue"]) == "B"


# -- cache ---------------------------------------------------------------------------
def test_cache_key_holds_model_identity_and_template():
    k = request_key("llamacpp|sha256:aa", "loglik", "mmstar-v1", "Q", n_letters=4)
    assert k != request_key("llamacpp|sha256:bb", "loglik", "mmstar-v1", "Q", n_letters=4)
    assert k != request_key("llamacpp|sha256:aa", "loglik", "mmstar-v2", "Q", n_letters=4)
    assert k == request_key("llamacpp|sha256:aa", "loglik", "mmstar-v1", "Q", n_letters=4)


def test_cache_writes_once_and_survives_reopen(tmp_path):
    path = tmp_path / "c.sqlite"
    with ResponseCache(path) as c:
        c.put_many("m", {"k1": {"logprobs": [-0.1, -2.5]}})
        c.put_many("m", {"k1": {"logprobs": [9.9, 9.9]}, "k2": {"text": "B"}})  # k1 is not overwritten
    with ResponseCache(path) as c:
        assert c.get_many(["k1", "k2", "k3"]) == {"k1": {"logprobs": [-0.1, -2.5]}, "k2": {"text": "B"}}
        assert c.count("m") == 2
    rows = sqlite3.connect(path).execute("SELECT COUNT(*), COUNT(DISTINCT key) FROM responses").fetchone()
    assert rows == (2, 2)


def test_file_hash_is_memoised(tmp_path):
    f = tmp_path / "w.gguf"
    f.write_bytes(b"x" * 1000)
    with ResponseCache(tmp_path / "c.sqlite") as c:
        h = c.file_sha256(f)
        assert h == c.file_sha256(f) and len(h) == 64
        f.write_bytes(b"y" * 1001)
        assert c.file_sha256(f) != h


# -- batching and statistics -----------------------------------------------------------
def test_batches_are_fixed_by_the_whole_request_list():
    prompts = [build_prompt("q" * n, ["a", "b"]) for n in (5, 50, 20, 50, 1)]
    keys = [f"k{n}" for n in (5, 50, 20, 50, 1)]  # two identical requests share a key
    batches = plan_batches(keys, prompts, 2)
    assert batches == [[1, 2], [0, 4]]  # longest first, duplicate asked once
    assert plan_batches(keys, prompts, 2) == batches


def test_prefix_order_puts_shared_question_stems_next_to_each_other():
    questions = ["What is the main color of the car?", "How many dogs are there?", "What is the main color of the sky?",
                 "How many cats are there?", "Where is the cat?"]
    prompts = [build_prompt(q, ["a", "b"], shots=2) for q in questions]
    keys = [f"k{i}" for i in range(len(prompts))]
    ranked = [i for batch in plan_batches(keys, prompts, 2, order="prefix") for i in batch]
    assert ranked == [3, 1, 0, 2, 4]  # "How many ..." twice, "What is the main color of ..." twice
    by_length = [i for batch in plan_batches(keys, prompts, 2) for i in batch]

    def shared(order):  # characters each prompt shares with the one before it: what a KV-reusing backend skips
        return sum(len(os.path.commonprefix([prompts[a].text, prompts[b].text])) for a, b in zip(order, order[1:]))

    assert shared(ranked) > shared(by_length)
    with pytest.raises(ValueError, match="order"):
        plan_batches(keys, prompts, 2, order="random")


def test_wilson_interval_matches_known_values():
    lo, hi = wilson_interval(10, 40)
    assert math.isclose(lo, 0.1419, abs_tol=1e-3) and math.isclose(hi, 0.4019, abs_tol=1e-3)
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_chance_corrected_hit_needs_margin_over_calibrated_prior():
    biased = Competence("m", 100, 30, 0.25, 0.2, 0.4, {"A": 0.9, "B": 0.1}, (0.7, 0.1, 0.1, 0.1))
    sure_a = Response("A", softmax([math.log(0.75), math.log(0.1), math.log(0.1), math.log(0.05)]), None)
    assert not is_hit(sure_a, "A", 4, biased, margin=0.1, corrected=True)  # calibrated: ~flat, A at 0.29
    assert is_hit(sure_a, "A", 4, biased, margin=0.1, corrected=False)
    sure_b = Response("B", (0.3, 0.6, 0.05, 0.05), None)
    assert is_hit(sure_b, "B", 4, biased, margin=0.1, corrected=True)
    assert not is_hit(sure_b, "A", 4, biased, margin=0.1, corrected=True)
    # raw argmax A, but after removing the member's love of A, C wins: a hit for key C
    leaning_c = Response("A", (0.5, 0.05, 0.4, 0.05), None)
    assert is_hit(leaning_c, "C", 4, biased, margin=0.1, corrected=True)
    assert is_hit(Response("B", None, "B"), "B", 4, biased, margin=0.1, corrected=True)  # generate: letter only
    assert is_hit(Response("B", (0.3, 0.7), None), "B", 2, biased, margin=0.1, corrected=True)  # 2 options: prior n/a


def test_competence_flags_a_member_that_always_says_a():
    items = [{"options": ["w", "x", "y", "z"], "answer": "ABCD"[i % 4]} for i in range(40)]
    always_a = [Response("A", (0.9, 0.04, 0.03, 0.03), None)] * 40
    c = summarise("m", items, always_a)
    assert c.accuracy == 0.25 and c.at_chance and c.letter_bias == {"A": 1.0}
    assert c.prior is not None and math.isclose(c.prior[0], 0.9)
    knows = [Response(it["answer"], None, it["answer"]) for it in items]
    assert not summarise("m", items, knows).at_chance


# -- competence, worked by hand (issue #15: every decision against a known answer) ------------------
def _wilson_by_quadratic(k: int, n: int, z: float) -> tuple[float, float]:
    """Wilson's interval as the two roots p of (k/n - p)^2 = z^2 p (1 - p) / n: an independent rule."""
    a, b, c = 1 + z * z / n, -(2 * k / n + z * z / n), (k / n) ** 2
    root = math.sqrt(b * b - 4 * a * c)
    return (-b - root) / (2 * a), (-b + root) / (2 * a)


@pytest.mark.parametrize(("k", "n"), [(10, 40), (3, 7), (1, 100), (0, 12), (12, 12)])
def test_wilson_interval_is_the_roots_of_the_score_equation(k, n):
    # bug caught: any slip in the centre or half-width (z^2/2n, z^2/4n^2, the denominator)
    want = _wilson_by_quadratic(k, n, 1.959964)
    got = wilson_interval(k, n)
    assert math.isclose(got[0], max(0.0, want[0]), abs_tol=1e-12) and math.isclose(got[1], min(1.0, want[1]), abs_tol=1e-12)
    assert got[0] >= 0.0 and got[1] <= 1.0
    assert (got[0] == 0.0) == (k == 0) and (got[1] == 1.0) == (k == n)
    z1 = wilson_interval(k, n, z=1.0)  # z is used, not a constant: a narrower interval at 68 %
    assert z1[0] >= got[0] and z1[1] <= got[1] and z1 != got


def test_summarise_counts_bias_prior_and_chance_by_hand():
    items = [{"options": ["a", "b", "c", "d"], "answer": "B"}, {"options": ["a", "b", "c", "d"], "answer": "A"},
             {"options": ["a", "b"], "answer": "A"}, {"options": ["a", "b", "c"], "answer": "C"}]
    responses = [Response("B", (0.1, 0.6, 0.2, 0.1), None),  # right
                 Response("B", (0.3, 0.5, 0.1, 0.1), None),  # wrong
                 Response("A", (0.8, 0.2), None),  # right, 2 options: not in the 4-option prior
                 Response(None, None, "no idea")]  # a generated reply matching no option: wrong, "none"
    c = summarise("m", items, responses)
    assert (c.member, c.n, c.correct, c.accuracy) == ("m", 4, 2, 0.5)
    assert c.letter_bias == {"A": 0.25, "B": 0.5, "none": 0.25} and list(c.letter_bias) == ["A", "B", "none"]
    assert c.prior is not None and all(math.isclose(x, y) for x, y in zip(c.prior, (0.2, 0.55, 0.15, 0.1), strict=True))
    assert math.isclose(c.chance, (1 / 4 + 1 / 4 + 1 / 2 + 1 / 3) / 4)
    assert (c.ci_low, c.ci_high) == wilson_interval(2, 4)
    assert summarise("m", items, [Response("A", None, "A")] * 4).prior is None  # generate members: no prior
    empty = summarise("m", [], [])
    assert (empty.n, empty.chance, empty.letter_bias, empty.prior, empty.at_chance) == (0, 0.25, {}, None, True)
    assert math.isnan(empty.accuracy)


def test_at_chance_is_an_interval_that_reaches_chance_inclusive():
    # bug caught: `<` for `<=` (an interval that touches chance is no evidence of knowledge)
    def comp(lo: float, n: int = 40) -> Competence:
        return Competence("m", n, 20, 0.25, lo, 0.9)

    assert comp(0.25).at_chance and comp(0.2).at_chance and not comp(0.2500001).at_chance
    assert comp(0.5, n=0).at_chance
    d = Competence("m", 40, 20, 0.25, 0.3, 0.7, {"A": 1.0}, (0.4, 0.2, 0.2, 0.2)).as_dict()
    assert d == {"member": "m", "n": 40, "correct": 20, "accuracy": 0.5, "ci_low": 0.3, "ci_high": 0.7, "chance": 0.25,
                 "at_chance": False, "letter_bias": {"A": 1.0}, "prior": [0.4, 0.2, 0.2, 0.2]}
    assert Competence("m", 0, 0, 0.25, 0.0, 1.0).as_dict()["prior"] is None


def test_calibration_divides_by_the_prior_and_renormalises():
    from filters.competence import calibrated

    prior = Competence("m", 40, 20, 0.25, 0.3, 0.7, {}, (0.4, 0.2, 0.2, 0.2))
    # (0.4/0.4, 0.3/0.2, 0.2/0.2, 0.1/0.2) = (1, 1.5, 1, 0.5), sum 4
    got = calibrated((0.4, 0.3, 0.2, 0.1), prior)
    assert len(got) == 4 and all(math.isclose(x, y) for x, y in zip(got, (0.25, 0.375, 0.25, 0.125)))
    assert calibrated((0.5, 0.5), prior) == (0.5, 0.5)  # another option count: left as it is
    assert calibrated((0.4, 0.3, 0.2, 0.1), None) == (0.4, 0.3, 0.2, 0.1)
    assert calibrated((0.4, 0.3, 0.2, 0.1), Competence("m", 40, 20, 0.25, 0.3, 0.7)) == (0.4, 0.3, 0.2, 0.1)
    # a position the member never chose on the controls (prior 0) is not a division by zero
    zero = Competence("m", 40, 20, 0.25, 0.3, 0.7, {}, (0.5, 0.5, 0.0, 0.0))
    assert calibrated((0.5, 0.5, 0.0, 0.0), zero) == (0.5, 0.5, 0.0, 0.0)


def test_accepted_takes_the_calibrated_winner_at_margin_inclusive():
    from filters.competence import accepted

    # 1/4 + 0.25 = 0.5 exactly: a winner at exactly the bar is accepted, just under it is not
    at_bar = Response("A", (0.5, 0.25, 0.125, 0.125), None)
    assert accepted(at_bar, 4, None, margin=0.25, corrected=True) == 0
    assert accepted(at_bar, 4, None, margin=0.2500001, corrected=True) is None
    assert accepted(Response("C", (0.125, 0.125, 0.5, 0.25), None), 4, None, margin=0.25, corrected=True) == 2
    # a tie goes to the earlier option, whose letter the raw answer also names
    assert accepted(Response("A", (0.4, 0.4, 0.1, 0.1), None), 4, None, margin=0.0, corrected=True) == 0
    assert accepted(Response("B", (0.1, 0.4, 0.4, 0.1), None), 4, None, margin=0.0, corrected=True) == 1
    # 3 options: the bar is 1/3 + margin
    assert accepted(Response("B", (0.2, 0.45, 0.35), None), 3, None, margin=0.1, corrected=True) == 1
    assert accepted(Response("B", (0.2, 0.43, 0.37), None), 3, None, margin=0.1, corrected=True) is None
    # uncorrected, or no probabilities: the letter, if it names one of the item's options
    assert accepted(at_bar, 4, None, margin=0.9, corrected=False) == 0
    assert accepted(Response("D", None, "D"), 4, None, margin=0.9, corrected=True) == 3
    assert accepted(Response("E", None, "E"), 4, None, margin=0.0, corrected=False) is None
    assert accepted(Response(None, None, "?"), 4, None, margin=0.0, corrected=True) is None


def test_is_hit_needs_the_key_among_the_items_letters():
    # letter "E" on a 4-option item with key "E" (a corrupt key) is no hit
    assert not is_hit(Response("E", None, "E"), "E", 4, None, margin=0.0, corrected=False)
    assert is_hit(Response("E", None, "E"), "E", 5, None, margin=0.0, corrected=False)
    assert not is_hit(Response("A", (0.6, 0.2, 0.1, 0.1), None), "B", 4, None, margin=0.1, corrected=True)
