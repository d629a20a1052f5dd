"""MMStar metrics (S_v, S_wv, S_t, MG, ML), answer matchers and difficulty, on real VLMEvalKit result files."""

from __future__ import annotations

import functools
import json
import warnings
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from curate.difficulty import add_difficulty, difficulty_bin, write_difficulty
from curate.errors import UserError
from curate.mc import match_mmstar as extract_mmstar
from curate.mc import match_option_text as extract_option_text
from curate.metrics import accuracy, mg_ml
from curate.results import read_predictions, score
from curate.schema import ITEM_SCHEMA, conform
from curate.workspace import Workspace

POOLS = "text_pools"


# ---------------------------------------------------------------- matchers
@pytest.mark.parametrize(
    "reply, n, expected",
    [
        ("B", 4, "B"),
        ("b.", 4, "B"),
        ("  C. The clock tower", 4, "C"),
        ("(d) red", 4, "D"),
        ("Option A", 4, "A"),
        ("The answer is C.", 4, "C"),
        ("A food web is a model. The answer is B.", 4, "A"),  # MMStar's first-letter quirk, kept on purpose
        ("I think it is B", 4, None),  # "i" is not an option letter of a 4-option item
        ("E", 4, None),  # letter beyond the options
        ("Answer: B", 4, "A"),  # ... and again: "answer" starts with "a"
        ("My answer is (B)", 4, None),  # MMStar's rule only checks prefixes
        ("", 4, None),
        (None, 4, None),
    ],
)
def test_mmstar_rule(reply, n, expected):
    assert extract_mmstar(reply, n) == expected


@pytest.mark.parametrize(
    "reply, options, expected",
    [
        ("B", ["x", "y"], "B"),
        ("(c)", ["x", "y", "z"], "C"),
        ("C. The clock tower", ["The tall skyscrapers", "The boats", "The clock tower", "The bridge"], "C"),
        ("A food web is a model. The answer is B.", ["black racer", "gray fox", "bobcat", "bear"], "B"),
        ("It is made of rubber.", ["rubber", "cotton"], "A"),
        ("A cat is sitting on the mat next to the door", ["dog", "cat"], "B"),  # "A" the article is not option A
        ("Both the dog and the cat", ["dog", "cat"], None),  # two option texts: ambiguous
        ("Sorry, I can't help with images of people yet.", ["yes", "no"], None),
        ("11 apples", ["1", "11", "12"], "B"),  # whole-word match: "1" is not inside "11"
        ("D", ["one", "two", "three"], None),
    ],
)
def test_option_text_matcher(reply, options, expected):
    assert extract_option_text(reply, options) == expected


# ---------------------------------------------------------------- real VLMEvalKit result files
#: Rows of the shared VLMEvalKit result files and the accuracy (percent, 2 decimals) the README quotes.
REAL = {
    "SEEDBench_IMG_vila13b.xlsx": (14232, 72.74),
    "ScienceQA_TEST_vila13b.xlsx": (2017, 79.08),
    "MMBench_DEV_llava13b.xlsx": (4377, 76.45),
}


@functools.lru_cache(maxsize=8)
def _xlsx(path: Path) -> pl.DataFrame:
    """A result file as text cells, read once per session (SEED-Bench's takes ~1.5 s; five tests read it)."""
    return pl.read_excel(path, infer_schema_length=0)


def mmstar_official_hit(reply, key: str) -> bool:
    """MMStar's own evaluator, written from its description (../shared/FORMATS.md), not from ours:
    lower-case and strip the reply; a hit when it starts with the key's letter, or with ``(x``,
    ``option x`` or ``the answer is x``."""
    r, k = ("" if reply is None else str(reply)).strip().lower(), key.strip().lower()
    return r[:1] == k or any(r.startswith(p + k) for p in ("(", "option ", "the answer is "))


def _official(path: Path) -> tuple[int, int]:
    """(hits, rows) of a result file by the official rule, read with polars alone."""
    raw = _xlsx(path)
    return sum(mmstar_official_hit(p, a) for p, a in zip(raw["prediction"], raw["answer"])), raw.height


@pytest.mark.parametrize("name", sorted(REAL))
def test_accuracy_on_real_result_files(shared_data, name):
    preds = read_predictions(shared_data / POOLS / name)
    n, quoted = REAL[name]
    hits, rows = _official(shared_data / POOLS / name)
    assert preds.table.height == rows == n
    assert round(100 * hits / n, 2) == quoted  # the README's figure, from the official rule
    for matcher in ("mmstar", "option_text"):  # both of ours agree with it on these files, hit for hit
        result = accuracy(score(preds, matcher=matcher))
        assert (result["n"], result["hits"]) == (n, hits), (name, matcher, result)
        assert result["accuracy"] == round(100 * hits / n, 2)


def test_seed_empty_options_keep_their_letters(shared_data):
    """SEED-Bench's option "None" became an empty cell; its letter is still a valid answer."""
    preds = read_predictions(shared_data / POOLS / "SEEDBench_IMG_vila13b.xlsx")
    holes = preds.table.filter(pl.col("options").list.eval(pl.element().is_null()).list.any())
    raw = _xlsx(shared_data / POOLS / "SEEDBench_IMG_vila13b.xlsx")
    def blank(L: str) -> pl.Expr:
        return pl.col(L).is_null() | (pl.col(L).str.strip_chars() == "")

    # An empty cell with a real option after it (a trailing one is padding): independently, 180 rows.
    inner = pl.any_horizontal([blank(L) & ~blank(M) for i, L in enumerate("ABC") for M in "ABCD"[i + 1:]])
    assert holes.height == raw.filter(inner).height == 180
    scored = score(holes, matcher="mmstar")
    assert scored["unextractable"].sum() == 0
    # Independent check: VILA answers these with a bare letter ("B" or "B.").
    expected = (holes["prediction"].str.strip_chars().str.slice(0, 1) == holes["answer"]).sum()
    assert scored["hit"].sum() == expected


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def seed_runs(shared_data, tmp_path_factory):
    """Three runs of the first 900 SEED-Bench questions: VILA's real replies (with the image),
    a 'without image' run that keeps VILA's reply on every third item and otherwise says it
    cannot see the image, and a 2-shot 'text only' run that always answers A."""
    tmp = tmp_path_factory.mktemp("runs")
    src = _xlsx(shared_data / POOLS / "SEEDBench_IMG_vila13b.xlsx").head(900)
    v = tmp / "seed_vision.tsv"  # VLMEvalKit also writes result tables as TSV
    src.write_csv(v, separator="\t")
    wv_rows, t_rows = [], []
    for i, r in enumerate(src.iter_rows(named=True)):
        opts = [r[L] for L in "ABCD"]
        base = {"index": int(r["index"]), "answer": r["answer"], "options": opts, "category": r["category"]}
        wv_rows.append({**base, "prediction": r["prediction"] if i % 3 == 0 else "I cannot see the image.", "shots": 0})
        t_rows.append({**base, "prediction": "A", "shots": 2})
    wv = _write_jsonl(tmp / "seed_wv.jsonl", wv_rows)
    t = _write_jsonl(tmp / "seed_text.jsonl", t_rows)
    return src, v, wv, t


def test_mg_ml_from_three_runs(seed_runs):
    src, v, wv, t = seed_runs
    report = mg_ml(read_predictions(v), read_predictions(wv), read_predictions(t))
    d = report.to_dict()
    # Independent figures: VILA replies are "X" or "X. text"; first character is its letter.
    first = src["prediction"].str.strip_chars().str.slice(0, 1)
    hit_v = (first == src["answer"]).to_list()
    s_v = 100 * sum(hit_v) / 900
    s_wv = 100 * sum(h for i, h in enumerate(hit_v) if i % 3 == 0) / 900
    s_t = 100 * (src["answer"] == "A").sum() / 900
    assert d["S_v"] == pytest.approx(s_v, abs=0.005)
    assert d["S_wv"] == pytest.approx(s_wv, abs=0.005)
    assert d["S_t"] == pytest.approx(s_t, abs=0.005)
    assert d["MG"] == pytest.approx(s_v - s_wv, abs=0.01)
    assert d["ML"] == pytest.approx(max(0.0, s_wv - s_t), abs=0.01)
    # "I cannot see the image." has no option letter: counted, not silently scored.
    assert d["unextractable"]["S_wv"] == 600
    assert any("600 of 900" in w for w in d["warnings"])
    # Shot mismatch 0 vs 2 (from the 'shots' columns) is flagged.
    assert d["runs"]["S_wv"]["shots"] == 0 and d["runs"]["S_t"]["shots"] == 2
    assert any("shot mismatch" in w and "0-shot" in w and "2-shot" in w for w in d["warnings"])
    cats = d["by_category"]
    assert sum(c["n"] for c in cats.values()) == 900
    for row in cats.values():
        assert row["ML"] >= 0
        assert row["MG"] == pytest.approx(row["S_v"] - row["S_wv"], abs=0.011)


def test_shots_override_and_filename_hint(seed_runs, tmp_path):
    _, v, wv, _ = seed_runs
    assert read_predictions(wv, shots=2).shots == 2
    named = tmp_path / "llm_2shot.tsv"
    named.write_bytes(Path(v).read_bytes())
    p = read_predictions(named)
    assert (p.shots, p.shots_source) == (2, "filename")
    zero = tmp_path / "lvlm_zero-shot.tsv"
    zero.write_bytes(Path(v).read_bytes())
    assert read_predictions(zero).shots == 0
    assert read_predictions(v).shots is None
    report = mg_ml(without_image=read_predictions(wv, shots=2), text_only=read_predictions(named))
    assert not any("shot" in w for w in report.warnings)
    assert set(report.to_dict()) >= {"S_wv", "S_t", "ML"} and "MG" not in report.to_dict()


def test_jsonl_keyed_by_item_id_joins_items(shared_data, tmp_path):
    src = _xlsx(shared_data / POOLS / "ScienceQA_TEST_vila13b.xlsx").head(50)
    items = conform(
        pl.DataFrame({
            "item_id": [f"sqa:{i}" for i in src["index"]],
            "orig_index": src["index"],
            "question": src["question"],
            "options": [[o for o in (r["A"], r["B"], r["C"], r["D"], r["E"]) if o is not None] for r in src.iter_rows(named=True)],
            "answer": src["answer"],
            "category": pl.Series(["science & technology"] * 50),
        }),
        ITEM_SCHEMA,
    )
    rows = [{"item_id": f"sqa:{i}", "prediction": p} for i, p in zip(src["index"], src["prediction"])]
    path = _write_jsonl(tmp_path / "p.jsonl", rows)
    with pytest.raises(UserError, match="answer"):
        read_predictions(path)  # no answers in the file and no items given
    preds = read_predictions(path, items=items)
    acc = accuracy(score(preds))
    expected = (src["prediction"].str.strip_chars().str.slice(0, 1).str.to_uppercase() == src["answer"]).sum()
    assert acc["hits"] == expected
    assert set(preds.table["category"].to_list()) == {"science & technology"}


def test_bad_files_name_file_and_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"index": 1, "prediction": "A", "answer": "A"}\n{"index": 2, "prediction": "B", "answer": "B"}\n{oops\n')
    with pytest.raises(UserError, match=r"bad\.jsonl line 3: not valid JSON"):
        read_predictions(bad)
    nopred = tmp_path / "nopred.tsv"
    nopred.write_text("index\tquestion\tanswer\n1\tq\tA\n")
    with pytest.raises(UserError, match=r"nopred\.tsv: no 'prediction' column"):
        read_predictions(nopred)
    dup = tmp_path / "dup.tsv"
    dup.write_text("index\tquestion\tA\tB\tanswer\tprediction\n1\tq\tx\ty\tA\tA\n1\tq\tx\ty\tA\tB\n")
    with pytest.raises(UserError, match=r"dup\.tsv row 2: index '1' appears 2 times"):
        read_predictions(dup)
    badans = tmp_path / "badans.tsv"
    badans.write_text("index\tquestion\tA\tB\tanswer\tprediction\n1\tq\tx\ty\t7\tA\n")
    with pytest.raises(UserError, match=r"badans\.tsv row 1: field 'answer' = '7'"):
        read_predictions(badans)


def test_runs_of_different_benchmarks_are_refused(shared_data):
    a = read_predictions(shared_data / POOLS / "ScienceQA_TEST_vila13b.xlsx")
    b = read_predictions(shared_data / POOLS / "SEEDBench_IMG_vila13b.xlsx")
    with pytest.raises(UserError, match="not runs of the same benchmark"):
        mg_ml(vision=a, text_only=b)


# ---------------------------------------------------------------- difficulty
def test_difficulty_bins_mmstar_and_scaled():
    assert [difficulty_bin(s, 16) for s in range(17)] == ["tough"] * 4 + ["hard"] * 4 + ["moderate"] * 4 + ["easy"] * 5
    assert [difficulty_bin(s, 8) for s in range(9)] == ["tough"] * 2 + ["hard"] * 2 + ["moderate"] * 2 + ["easy"] * 3
    with pytest.raises(ValueError):
        difficulty_bin(5, 4)


def _model_runs(src: pl.DataFrame, tmp: Path, n_models: int) -> tuple[list, list[list[bool]]]:
    """n 'models': model k keeps VILA's real reply on items where (i + k) % n_models < k + 1, else answers wrongly."""
    runs, hits = [], []
    for k in range(n_models):
        rows, h = [], []
        for i, r in enumerate(src.iter_rows(named=True)):
            keep = (i * 7 + k) % n_models <= k
            wrong = next(L for L in "ABCD" if L != r["answer"])
            pred = r["prediction"] if keep else wrong
            rows.append({"index": r["index"], "answer": r["answer"], "options": [r[L] for L in "ABCD"], "prediction": pred})
            h.append(str(pred).strip()[:1] == r["answer"])
        runs.append(read_predictions(_write_jsonl(tmp / f"m{k}.jsonl", rows)))
        hits.append(h)
    return runs, hits


def test_difficulty_written_into_workspace(shared_data, tmp_path):
    src = _xlsx(shared_data / POOLS / "MMBench_DEV_llava13b.xlsx").head(300)
    items = conform(
        pl.DataFrame({
            "item_id": [f"MMBench:{i}" for i in src["index"]],
            "source": ["MMBench"] * 300,
            "orig_index": src["index"],
            "row": list(range(1, 301)),
            "question": src["question"],
            "options": [[o for o in (r["A"], r["B"], r["C"], r["D"]) if o is not None] for r in src.iter_rows(named=True)],
            "answer": src["answer"],
        }),
        ITEM_SCHEMA,
    ).with_columns(pl.lit(True).alias("blind"))  # a later-stage column that must survive
    ws = Workspace(tmp_path / "ws", create=True)
    ws.write("items", items.head(250))  # 50 predicted items were "dropped at ingest"
    ws.write("screened", items.head(250).with_columns(answer__m=pl.lit("A"), hits=pl.lit(1, pl.Int32), n_members=pl.lit(1, pl.Int32)))
    runs, hits = _model_runs(src, tmp_path, 6)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = write_difficulty(ws.root, runs)
    assert any("50 predicted item(s) are not in the workspace" in str(w.message) for w in caught)
    assert result["stage"] == "screened" and result["matched"] == 250 and result["unused_predictions"] == 50
    table = ws.read("screened")
    assert table["item_id"].to_list() == items.head(250)["item_id"].to_list()  # order kept
    assert table["blind"].all()
    solvers = [sum(h[i] for h in hits) for i in range(250)]
    assert table["n_solvers"].to_list() == solvers
    assert table["difficulty"].to_list() == [difficulty_bin(s, 6) for s in solvers]
    assert len(set(table["difficulty"].to_list())) == 4
    assert not ws.read("items").columns.count("difficulty")  # only the newest stage changes
    # Re-running replaces the columns instead of adding duplicates.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        write_difficulty(ws.root, runs[:4])
    again = ws.read("screened")
    assert again.columns.count("difficulty") == 1 and set(again["n_models"].to_list()) == {4}


def test_difficulty_refuses_ambiguous_index(shared_data):
    counts = pl.DataFrame({"key": ["1"], "n_solvers": [1], "n_models": [2], "difficulty": ["moderate"]})
    items = conform(pl.DataFrame({"item_id": ["a:1", "b:1"], "orig_index": ["1", "1"], "options": [["x", "y"]] * 2, "answer": ["A", "A"]}), ITEM_SCHEMA)
    with pytest.raises(UserError, match="occurs in several sources"):
        add_difficulty(items, counts)


# ---------------------------------------------------------------- CLI
def test_cli_metrics_json(seed_runs):
    from curate.cli import app

    _, v, wv, t = seed_runs
    res = CliRunner().invoke(app, ["metrics", "--vision", str(v), "--without-image", str(wv), "--text-only", str(t), "--json", "--shots", "t=0"])
    assert res.exit_code == 0, res.output
    line = next(l for l in res.stdout.splitlines() if l.startswith("{"))
    d = json.loads(line)
    assert {"S_v", "S_wv", "S_t", "MG", "ML", "by_category"} <= set(d)
    assert d["runs"]["S_t"]["shots_source"] == "option"
    assert not any("shot mismatch" in w for w in d["warnings"])  # --shots t=0 matches S_wv's 0


def test_cli_metrics_table_and_option_text(shared_data):
    from curate.cli import app

    res = CliRunner().invoke(app, ["metrics", "--vision", str(shared_data / POOLS / "ScienceQA_TEST_vila13b.xlsx"), "--option-text"])
    assert res.exit_code == 0, res.output
    hits, n = _official(shared_data / POOLS / "ScienceQA_TEST_vila13b.xlsx")
    assert f"{100 * hits / n:.2f}" in res.stdout and "option_text" in res.stdout


def test_cli_difficulty(shared_data, tmp_path):
    from curate.cli import app

    src = _xlsx(shared_data / POOLS / "MMBench_DEV_llava13b.xlsx").head(40)
    items = conform(
        pl.DataFrame({"item_id": [f"m:{i}" for i in src["index"]], "orig_index": src["index"], "source": ["m"] * 40,
                      "options": [[r["A"], r["B"]] for r in src.iter_rows(named=True)], "answer": src["answer"]}),
        ITEM_SCHEMA,
    )
    Workspace(tmp_path / "ws", create=True).write("items", items)
    runs, _ = _model_runs(src, tmp_path, 4)
    res = CliRunner().invoke(app, ["difficulty", str(tmp_path / "ws"), *[str(r.path) for r in runs]])
    assert res.exit_code == 0, res.output
    assert "easy" in res.stdout and "tough" in res.stdout
    assert pl.read_parquet(tmp_path / "ws" / "items.parquet")["difficulty"].null_count() == 0


# -- MMStar's derived metrics and accuracy worked by hand (issue #15) --------------------------------
def test_mg_and_ml_by_hand():
    from curate.metrics import _derived

    # MG = S_v - S_wv; ML = max(0, S_wv - S_t): a model that does worse without the image than text-only leaks nothing
    assert _derived({"S_v": 60.0, "S_wv": 45.5, "S_t": 50.0}) == {"S_v": 60.0, "S_wv": 45.5, "S_t": 50.0, "MG": 14.5, "ML": 0.0}
    assert _derived({"S_v": 60.0, "S_wv": 45.5, "S_t": 40.25}) == {"S_v": 60.0, "S_wv": 45.5, "S_t": 40.25, "MG": 14.5, "ML": 5.25}
    assert _derived({"S_v": 33.333, "S_wv": 11.111}) == {"S_v": 33.333, "S_wv": 11.111, "MG": 22.22}  # rounded to 2 places
    assert _derived({"S_wv": 45.0, "S_t": 40.1234})["ML"] == 4.88  # 4.8766 to 2 places, like MG
    assert _derived({"S_v": 60.0, "S_wv": None, "S_t": 40.0}) == {"S_v": 60.0, "S_wv": None, "S_t": 40.0}
    assert _derived({"S_wv": 50.0, "S_t": None}) == {"S_wv": 50.0, "S_t": None}


def test_accuracy_and_accuracy_by_by_hand():
    from curate.metrics import accuracy, accuracy_by

    scored = pl.DataFrame({"hit": [True, False, True, False, True, True],
                           "unextractable": [False, True, False, False, False, True],
                           "category": ["b", "a", "b", None, "a", "a"]})
    assert accuracy(scored) == {"n": 6, "hits": 4, "unextractable": 2, "accuracy": 66.67}  # 4 / 6, 2 places
    assert accuracy(scored.head(0)) == {"n": 0, "hits": 0, "unextractable": 0, "accuracy": None}
    assert accuracy_by(scored, "category") == {
        "(none)": {"n": 1, "hits": 0, "unextractable": 0, "accuracy": 0.0},
        "a": {"n": 3, "hits": 2, "unextractable": 2, "accuracy": 66.67},
        "b": {"n": 2, "hits": 2, "unextractable": 0, "accuracy": 100.0},
    }
    assert list(accuracy_by(scored, "category")) == ["(none)", "a", "b"]
    # ordered by the value, whatever the rows hold
    assert list(accuracy_by(pl.DataFrame({"hit": [True, False], "unextractable": [False, False], "category": ["a", "b"]}),
                            "category")) == ["a", "b"]
