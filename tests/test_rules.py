"""Rule filters (filters/rules.py and its checks) on hand-made items and on real benchmark files."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import polars as pl
import pytest
from PIL import Image

from curate.errors import UserError
from curate.schema import ITEM_SCHEMA, conform
from filters import rules
from filters.duplicates import check_duplicate_image, check_near_duplicate
from filters.leak import check_answer_leak
from filters.malformed import check_malformed
from filters.rules import RuleConfig, run_rules

CFG = RuleConfig()


# ---------------------------------------------------------------------------------------------
# building items


def _image(data: bytes) -> dict:
    return {"bytes": data, "path": None, "width": None, "height": None, "sha256": hashlib.sha256(data).hexdigest()}


def _png(color: tuple[int, int, int], pattern: int = 0) -> bytes:
    """A small picture with structure (pHash of a flat colour is degenerate)."""
    img = Image.new("RGB", (64, 64), color)
    for x in range(64):
        for y in range(64):
            if ((x // (8 + pattern)) + (y // (5 + pattern))) % 2:
                img.putpixel((x, y), (255 - color[0], 255 - color[1], 255 - color[2]))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def make_items(rows: list[dict]) -> pl.DataFrame:
    """Items from short dicts: question, options, answer, optional hint/images/item_id."""
    out = []
    for i, r in enumerate(rows):
        imgs = [_image(b) for b in r.get("images", [])]
        out.append(
            {
                "item_id": r.get("item_id", f"t:{i}"),
                "source": r.get("source", "t"),
                "row": i + 1,
                "question": r.get("question"),
                "hint": r.get("hint"),
                "options": r.get("options", []),
                "answer": r.get("answer"),
                "images": imgs,
                "n_images": len(imgs),
            }
        )
    df = pl.DataFrame(out, schema_overrides={"images": ITEM_SCHEMA["images"], "options": pl.List(pl.String)})
    return conform(df, ITEM_SCHEMA)


def load_items(path: Path) -> pl.DataFrame:
    """A real benchmark file as items, through the project's own ingest."""
    from curate.ingest import ingest

    return ingest([path])


@pytest.fixture(scope="module")
def real(shared_data: Path):
    cache: dict[str, pl.DataFrame] = {}

    def get(rel: str) -> pl.DataFrame:
        if rel not in cache:
            cache[rel] = load_items(shared_data / rel)
        return cache[rel]

    return get


# ---------------------------------------------------------------------------------------------
# RuleConfig


def test_config_defaults_and_from_dict_whole_file_or_table():
    whole = {"panel": {"members": []}, "rules": {"near_duplicate_threshold": 0.85, "enabled": ["malformed"], "drop": []}}
    cfg = RuleConfig.from_dict(whole, source="panel.toml")
    assert cfg.near_duplicate_threshold == 0.85
    assert cfg.enabled == ("malformed",) and cfg.drop == ()
    assert RuleConfig.from_dict({"phash_max_distance": 6}).phash_max_distance == 6
    assert RuleConfig().drop == ("answer_leak", "near_duplicate", "malformed")
    assert RuleConfig().digest() != cfg.digest()


def test_config_unknown_key_names_file_key_and_suggestion():
    with pytest.raises(UserError) as err:
        RuleConfig.from_dict({"rules": {"near_dup_threshold": 0.8}}, source="panel.toml")
    msg = str(err.value)
    assert msg.startswith("panel.toml: unknown key 'near_dup_threshold' in [rules]"), msg
    assert "(did you mean 'near_duplicate_threshold'?)" in msg and "valid keys: enabled, drop" in msg


@pytest.mark.parametrize(
    "table, key, fix",
    [
        ({"near_duplicate_threshold": 1.5}, "near_duplicate_threshold", "(0, 1]"),
        ({"phash_max_distance": -1}, "phash_max_distance", "an integer in [0, 32]"),
        ({"enabled": ["answer_leek"]}, "enabled", "did you mean 'answer_leak'"),
        ({"enabled": ["malformed"], "drop": ["answer_leak"]}, "drop", "add it to enabled or remove it from drop"),
        ({"drop_trap_options": "yes"}, "drop_trap_options", "a boolean (true/false)"),
        ({"near_duplicate_ngram": [5, 3]}, "near_duplicate_ngram", "[3, 5]"),
        ({"near_duplicate_question_threshold": 0}, "near_duplicate_question_threshold", "(0, 1]"),
        ({"leak_fields": ["answer"]}, "leak_fields", "values from 'question', 'hint'; 'answer' is not one of them"),
        ({"leak_fields": []}, "leak_fields", "a non-empty list of values from 'question', 'hint'"),
        ({"leak_min_answer_chars": True}, "leak_min_answer_chars", "an integer >= 1, e.g. 2"),
    ],
)
def test_config_bad_values_name_key_value_and_fix(table, key, fix):
    with pytest.raises(UserError) as err:
        RuleConfig.from_dict({"rules": table}, source="panel.toml")
    msg = str(err.value)
    assert msg.startswith(f"panel.toml: rules.{key} = "), msg  # file, parameter, value ...
    assert fix in msg


def test_config_from_toml(tmp_path: Path):
    path = tmp_path / "panel.toml"
    path.write_text('[panel]\nname = "x"\n\n[rules]\nphash_max_distance = 2\ndrop = ["malformed"]\n')
    cfg = RuleConfig.from_toml(path)
    assert cfg.phash_max_distance == 2 and cfg.drop == ("malformed",)
    path.write_text("[rules]\nphash_max_distance = \n")
    with pytest.raises(UserError, match="not valid TOML"):
        RuleConfig.from_toml(path)


# ---------------------------------------------------------------------------------------------
# answer_leak


def _leak(rows: list[dict]) -> list[tuple[bool, str | None]]:
    out = check_answer_leak(make_items(rows), CFG)
    assert out.columns == ["item_id", "answer_leak_flag", "answer_leak_score", "answer_leak_reason"]
    return list(zip(out["answer_leak_flag"].to_list(), out["answer_leak_reason"].to_list()))


def test_leak_mmstar_example_and_derived_forms():
    got = _leak(
        [
            {"question": "What shape is this circular ring?", "options": ["square", "circle", "triangle"], "answer": "B"},
            {"question": "What shape is the triangular sign?", "options": ["Circle", "Triangle"], "answer": "B"},
            {"question": "What are the dogs doing?", "options": ["Dog", "Cat"], "answer": "A"},
            {"question": "There are three apples. How many apples?", "options": ["2", "3", "4"], "answer": "B"},
            {"question": "Twelve eggs are in the box. How many?", "options": ["12", "2"], "answer": "A"},
            {"question": "Which city?", "hint": "The photo was taken in Paris.", "options": ["Rome", "Paris"], "answer": "B"},
        ]
    )
    assert [f for f, _ in got] == [True] * 6
    assert got[0][1] == 'answer "circle" appears in the question as "circular"'
    assert got[5][1] == 'answer "Paris" appears in the hint'


def test_leak_false_positive_guards():
    got = _leak(
        [
            # several options named: the text does not single out the answer
            {"question": "Is the light red or green?", "options": ["red", "green"], "answer": "A"},
            # trivial answers
            {"question": "Is there a dog? yes or no", "options": ["yes", "no"], "answer": "A"},
            {"question": "Which label marks a leaf?", "options": ["A", "B", "C"], "answer": "A"},
            # "which one" is a pronoun; "Question 1." is a label, not a count
            {"question": "Which one is taller? Count the people.", "options": ["One", "Two"], "answer": "A"},
            {"question": "Question 1. How many people are there?", "options": ["One", "Two"], "answer": "A"},
            # digits in the text are givens or labels, not leaks (MathVista: "AC = 6 ... AB?")
            {"question": "In the figure, AC = 6. What is the length of AB?", "options": ["3", "6"], "answer": "B"},
            # answer is part of another option (MMBench "same" / "Not the same")
            {"question": "Are the two jars the same shape?", "options": ["same", "Not the same"], "answer": "A"},
            {"question": "How many windows are visible?", "options": ["Many", "One"], "answer": "A"},
            # whole words only
            {"question": "Which category fits?", "options": ["cat", "dog"], "answer": "A"},
        ]
    )
    assert [f for f, _ in got] == [False] * 9, got


def test_leak_cjk_substring():
    got = _leak([{"question": "图中天坛的建筑名称为？", "options": ["天坛", "故宫"], "answer": "A"},
                 {"question": "图中所示建筑名称为？", "options": ["天坛", "故宫"], "answer": "A"}])
    assert [f for f, _ in got] == [True, False]


def test_leak_real_data_counts_and_known_cases(real):
    sqa = real("text_pools/ScienceQA_TEST_vila13b.xlsx")
    out = sqa.join(check_answer_leak(sqa, CFG), on="item_id")
    flagged = out.filter("answer_leak_flag")
    # 48 of 2,017, 41 of them "same species as X" where the hint names X's scientific name
    assert (sqa.height, flagged.height) == (2017, 48)
    species = flagged.filter(pl.col("question").str.contains("same (species|genus) as"))
    assert species.height == 41
    assert all("appears in the hint" in r for r in species["answer_leak_reason"])

    mmb = real("text_pools/MMBench_DEV_llava13b.xlsx")
    out = mmb.join(check_answer_leak(mmb, CFG), on="item_id")
    same = out.filter(pl.col("question").str.contains("the same (shape|color|size)"))
    assert same.height == 101 and same["answer_leak_flag"].sum() == 0  # "same" vs "Not the same"
    assert (mmb.height, out["answer_leak_flag"].sum()) == (4377, 2)

    seed = real("text_pools/SEEDBench_IMG_vila13b.xlsx")
    flags = check_answer_leak(seed, CFG)["answer_leak_flag"]
    assert (seed.height, flags.sum()) == (14232, 31)


# ---------------------------------------------------------------------------------------------
# near_duplicate


def test_near_duplicate_groups_first_kept_and_image_aware():
    red, blue = _png((200, 30, 30)), _png((30, 30, 200), pattern=5)
    q = {"question": "How many people are in the image?", "options": ["One", "Two", "Three"], "answer": "A"}
    rows = [
        {**q, "images": [red]},
        {"question": "What is the capital of France?", "options": ["Paris", "Rome"], "answer": "A"},
        {**q, "question": "how many  people are in the image", "options": ["Three", "One", "Two"], "images": [red]},
        {**q, "images": [blue]},  # same template, different picture: not a duplicate
        {"question": "What is the capital of France ?", "options": ["Rome", "Paris"], "answer": "B", "source": "other"},
    ]
    out = check_near_duplicate(make_items(rows), CFG)
    assert out["near_duplicate_flag"].to_list() == [False, False, True, False, True]
    assert out["near_duplicate_group"].to_list() == ["t:0", "t:1", "t:0", None, "t:1"]
    assert "from source t" in out["near_duplicate_reason"][4]
    assert out["near_duplicate_score"][2] > 0.9 and out["near_duplicate_score"][3] == 0.0

    ignore = RuleConfig(near_duplicate_ignore_images=True)
    out = check_near_duplicate(make_items(rows), ignore)
    assert out["near_duplicate_flag"].to_list() == [False, False, True, True, True]


def test_near_duplicate_finds_every_circular_copy_in_mmbench_dev(real):
    """MMBench's file holds CircularEval copies (index + k*1e6, options rotated): a positive control."""
    mmb = real("text_pools/MMBench_DEV_llava13b.xlsx")
    out = mmb.join(check_near_duplicate(mmb, CFG), on="item_id").with_columns(i=pl.col("orig_index").cast(pl.Int64))
    bases = out.filter(pl.col("i") < 1_000_000)["i"]
    copies = out.filter((pl.col("i") >= 1_000_000) & (pl.col("i") % 1_000_000).is_in(bases.implode()))
    assert copies.height == 3201  # every CircularEval copy whose original is in the file
    assert copies["near_duplicate_flag"].all()
    originals = out.filter(pl.col("i").is_in(bases.implode()))
    # each original is in a group, and copies point to an earlier (kept) item
    assert originals["near_duplicate_group"].null_count() == 0


def test_near_duplicate_real_ai2d_labels_and_paraphrase(real):
    """AI2D asks several questions per diagram with the same options: only true paraphrases pair."""
    ai2d = real("vlmevalkit/AI2D_TEST_sub309.tsv")
    out = ai2d.join(check_near_duplicate(ai2d, CFG), on="item_id")
    group = dict(zip(out["item_id"], out["near_duplicate_group"]))
    # "...consumes deer for a food energy source" / "...as a food energy source": a duplicate
    assert group["AI2D_TEST_sub309:205"] == "AI2D_TEST_sub309:204"
    # "What is B in the diagram?" / "What is E ...", "highest" / "lowest in the food chain": not
    for a, b in [("133", "134"), ("181", "182"), ("104", "105"), ("199", "200"), ("33", "34")]:
        ga, gb = group[f"AI2D_TEST_sub309:{a}"], group[f"AI2D_TEST_sub309:{b}"]
        assert ga is None or ga != gb, (a, b)
    assert out["near_duplicate_flag"].sum() == 1  # the deer pair above, of 309
    loose = check_near_duplicate(ai2d, RuleConfig(near_duplicate_question_threshold=0.5))
    assert loose["near_duplicate_flag"].sum() == 4


def test_near_duplicate_across_chunks_on_real_data(real, monkeypatch):
    """Pairs whose rows fall in different chunks of the sparse product are still found."""
    sqa = real("text_pools/ScienceQA_TEST_vila13b.xlsx")
    full = check_near_duplicate(sqa, CFG)
    import filters.duplicates as dup

    monkeypatch.setattr(dup, "CHUNK", 37)
    small = check_near_duplicate(sqa, CFG)
    assert full.equals(small)
    # 93 groups, 473 later copies (ScienceQA reuses question templates; no images here)
    groups = full["near_duplicate_group"].drop_nulls().n_unique()
    assert (groups, full["near_duplicate_flag"].sum()) == (93, 473)
    kept = full.filter(pl.col("near_duplicate_group") == pl.col("item_id"))
    assert kept.height == groups and not kept["near_duplicate_flag"].any()


# ---------------------------------------------------------------------------------------------
# duplicate_image


def test_duplicate_image_mmbench_english_chinese_control(real):
    mmb = real("vlmevalkit/MMBench_samples.tsv")
    out = mmb.join(check_duplicate_image(mmb, CFG), on="item_id")
    meta = [json.loads(m) for m in out["meta"]]
    out = out.with_columns(
        lang=pl.Series([m["lang"] for m in meta]), bench=pl.Series([m["source"] for m in meta])
    )
    flagged = out.filter("duplicate_image_flag")
    # the 20 Chinese MMBench rows reuse the images of the 20 English rows: all found, nothing else
    assert flagged.height == 20
    assert (flagged["lang"] == "cn").all() and (flagged["bench"] == "MMBench").all()
    kept_ids = set(flagged["duplicate_image_group"])
    kept = out.filter(pl.col("item_id").is_in(kept_ids))
    assert kept.height == 20 and (kept["lang"] == "en").all()
    assert not out.filter(pl.col("bench") == "CCBench")["duplicate_image_flag"].any()


def test_duplicate_image_reencoded_copy_and_no_image_items(real):
    ai2d = real("vlmevalkit/AI2D_TEST_sub309.tsv").head(3)
    original = ai2d["images"][0][0]["bytes"]
    img = Image.open(io.BytesIO(original)).convert("RGB")
    img = img.resize((int(img.width * 0.8), int(img.height * 0.8)))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=55)
    rows = [
        {"question": "q1", "options": ["a", "b"], "answer": "A", "images": [original]},
        {"question": "q2", "options": ["a", "b"], "answer": "A"},
        {"question": "q3", "options": ["a", "b"], "answer": "A"},
        {"question": "q4", "options": ["a", "b"], "answer": "A", "images": [buf.getvalue()]},
        {"question": "q5", "options": ["a", "b"], "answer": "A", "images": [_png((10, 200, 10))]},
    ]
    out = check_duplicate_image(make_items(rows), CFG)
    assert out["duplicate_image_flag"].to_list() == [False, False, False, True, False]
    assert out["duplicate_image_group"].to_list() == ["t:0", None, None, "t:0", None]
    assert "pHash distance" in out["duplicate_image_reason"][3]


def test_duplicate_image_real_ai2d_groups(real):
    ai2d = real("vlmevalkit/AI2D_TEST_sub309.tsv")
    out = check_duplicate_image(ai2d, CFG)
    # AI2D asks several questions per diagram: 61 groups, 240 later items
    assert out["duplicate_image_group"].drop_nulls().n_unique() == 61
    assert out["duplicate_image_flag"].sum() == 240


def test_undecodable_image_is_a_user_error_naming_the_item():
    items = make_items([{"question": "q", "options": ["a", "b"], "answer": "A", "images": [b"not an image"]}])
    with pytest.raises(UserError, match="item t:0: its first image cannot be decoded"):
        check_duplicate_image(items, CFG)


# ---------------------------------------------------------------------------------------------
# malformed


def test_malformed_findings_drop_vs_flag():
    rows = [
        {"question": "ok?", "options": ["a", "b"], "answer": "A"},
        {"question": "one option", "options": ["a"], "answer": "A"},
        {"question": "", "options": ["a", "b"], "answer": "A"},
        {"question": "beyond", "options": ["a", "b"], "answer": "C"},
        {"question": "dup answer", "options": ["Red ", "red", "blue"], "answer": "B"},
        {"question": "dup distractor", "options": ["cat", "Dog.", "dog"], "answer": "A"},
        {"question": "trap", "options": ["cat", "dog", "All of the above"], "answer": "C"},
        {"question": "trap2", "options": ["cat", "dog", "Both A and B"], "answer": "A"},
        {"question": "signs differ", "options": ["-$1,890.98", "$1,890.98"], "answer": "A"},
        {"question": "empty option", "options": ["cat", " ", "dog"], "answer": "A"},
    ]
    out = check_malformed(make_items(rows), CFG)
    assert out["malformed_flag"].to_list() == [False, True, True, True, True, True, True, True, False, True]
    assert out["malformed_drop"].to_list() == [False, True, True, True, True, False, False, False, False, True]
    assert out["malformed_score"].to_list() == [0.0, 1.0, 1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.0, 1.0]
    reasons = out["malformed_reason"].to_list()
    assert "not among the options (A-B)" in reasons[3]
    assert "correct answer" in reasons[4]
    assert "trap (flag only)" in reasons[6] and "trap (flag only)" in reasons[7]

    strict = check_malformed(make_items(rows), RuleConfig(drop_trap_options=True))
    assert strict["malformed_drop"].to_list()[5:8] == [False, True, True]


# ---------------------------------------------------------------------------------------------
# run_rules


def test_run_rules_merges_drops_and_keeps_order():
    png = _png((120, 10, 90))
    rows = [
        {"question": "What shape is this circular ring?", "options": ["circle", "circle", "square"], "answer": "A"},
        {"question": "What colour is the car?", "options": ["red", "blue"], "answer": "B", "images": [png]},
        {"question": "What colour is the car?", "options": ["blue", "red"], "answer": "A", "images": [png]},
        {"question": "Which one?", "options": ["x", "y", "None of the above"], "answer": "A"},
    ]
    items = make_items(rows)
    out = run_rules(items)
    assert out.height == 4 and out["item_id"].equals(items["item_id"])
    assert out.columns[: len(items.columns)] == items.columns
    assert out.columns[-2:] == ["rule_drop", "rule_reason"]
    assert out["rule_drop"].to_list() == [True, False, True, False]
    r0 = out["rule_reason"][0]
    assert r0.startswith('answer_leak: answer "circle" appears in the question as "circular"; malformed: ')
    assert out["rule_reason"][1] is None and out["rule_reason"][3] is None
    assert out["rule_reason"][2].startswith("near_duplicate: ")
    assert out["duplicate_image_flag"].to_list() == [False, False, True, False]  # flag only by default
    assert out["malformed_flag"][3] and not out["malformed_drop"][3]

    with_img = run_rules(items, RuleConfig(drop=("duplicate_image",)))
    assert with_img["rule_drop"].to_list() == [False, False, True, False]
    assert with_img["rule_reason"][2].startswith("duplicate_image: first image is the same image as")


def test_run_rules_refuses_to_overwrite_and_disabled_checks_add_nothing():
    items = make_items([{"question": "q?", "options": ["a", "b"], "answer": "A"}])
    once = run_rules(items)
    with pytest.raises(UserError, match="already has column"):
        run_rules(once)
    only = run_rules(items, RuleConfig(enabled=("malformed",), drop=("malformed",)))
    assert [c for c in only.columns if c not in items.columns] == [
        "malformed_flag", "malformed_score", "malformed_reason", "malformed_drop", "rule_drop", "rule_reason"]
    with pytest.raises(UserError, match=r"lacks column\(s\) \['images'\]"):
        run_rules(items.drop("images"))


def test_run_rules_never_swallows_a_crashing_check(monkeypatch):
    def broken(items, config):
        raise ZeroDivisionError("boom")

    monkeypatch.setitem(rules.CHECKS, "near_duplicate", broken)
    items = make_items([{"question": "q?", "options": ["a", "b"], "answer": "A"}])
    with pytest.raises(ZeroDivisionError, match="boom"):
        run_rules(items)


def test_run_rules_on_real_tsv(real):
    mmmu = real("vlmevalkit/MMMU_DEV.tsv")
    out = run_rules(mmmu)
    assert out.height == mmmu.height and out["item_id"].equals(mmmu["item_id"])
    dropped = out.filter("rule_drop")
    assert dropped["rule_reason"].null_count() == 0
    assert out.filter(~pl.col("rule_drop"))["rule_reason"].null_count() == out.height - dropped.height
    # MMMU has "All of the above"-style options: flagged, kept
    traps = out.filter(pl.col("malformed_reason").str.contains("trap"))
    assert traps.height == 6 and not traps["malformed_drop"].any()
    # options that differ only by a sign ("-$1,890.98" vs "$1,890.98") are not duplicates
    signs = out.filter(pl.col("options").list.join("|").str.contains("1,890.98"))
    assert signs.height == 1 and not signs["malformed_flag"][0]


def test_near_duplicate_pruned_search_equals_brute_force(real):
    """The pruning bound in _similar_pairs is exact: same pairs as the full cosine matrix."""
    import numpy as np
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.metrics.pairwise import cosine_similarity

    from filters.duplicates import _question_text, _similar_pairs

    mmb = real("text_pools/MMBench_DEV_llava13b.xlsx").head(2500)
    texts = [_question_text(q, o) for q, o in zip(mmb["question"].to_list(), mmb["options"].to_list())]
    x = TfidfVectorizer(analyzer="char_wb", ngram_range=(3, 5), sublinear_tf=True, dtype=np.float32).fit_transform(texts)
    for threshold, n_pairs in ((0.9, 9557), (0.7, 14270)):
        got = {(int(a), int(b)) for r, c, _ in _similar_pairs(x, threshold) for a, b in zip(r, c)}
        full = cosine_similarity(x)
        r, c = np.nonzero(np.triu(full >= threshold - 1e-6, k=1))
        assert got == set(zip(r.tolist(), c.tolist()))
        assert len(got) == n_pairs


def test_run_rules_on_empty_and_single_item_tables():
    empty = pl.DataFrame(schema=ITEM_SCHEMA)
    out = run_rules(empty)
    assert out.height == 0 and {"rule_drop", "rule_reason", "near_duplicate_group"} <= set(out.columns)
    one = run_rules(make_items([{"question": "Which is red?", "options": ["apple", "sky"], "answer": "A",
                                 "images": [_png((1, 2, 3))]}]))
    assert one["rule_drop"].to_list() == [False] and one["near_duplicate_group"].to_list() == [None]
