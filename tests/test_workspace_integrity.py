"""Workspace integrity (issue 13): one run's files change together, one writer at a time, re-ingest
keyed by the file (not by how its path is spelt), exports that leave the old or the new folder,
spreadsheet-safe TSV cells, cards that describe their rows, and terminal output that data cannot
rewrite. Real benchmark files from ../shared/data."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest

from curate.console import clean, log_console, safe
from curate.errors import UserError
from curate.export import export, export_release, neutralise_formula
from curate.ingest import ingest_to_workspace
from curate.workspace import JOURNAL_FILE, MANIFEST_FILE, Workspace, workspace_lock

REPO = Path(__file__).resolve().parents[1]
MMBENCH = "vlmevalkit/MMBench_samples.tsv"


def mmcurate(*args: str, cwd: Path = REPO, env: dict | None = None, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "curate.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "COLUMNS": "200", **(env or {})})


def kept(ws: Workspace) -> int:
    led = ws.ledger()
    return led.filter((pl.col("stage") == "ingest") & (pl.col("status") == "kept")).height


# -- transactions --------------------------------------------------------------------------
def test_ingest_commits_items_ledger_and_manifest_together(tmp_path, shared_data):
    ws = Workspace(tmp_path / "ws", create=True)
    ingest_to_workspace([shared_data / MMBENCH], ws.root)
    man = json.loads((ws.root / MANIFEST_FILE).read_text())
    assert man["generation"] == 1 and set(man["files"]) == {"items.parquet", "ledger.parquet"}
    assert ws.verify() == []
    assert ws.read("items").height == kept(ws) == 54
    assert not list(ws.root.glob(".*.tmp")) and not (ws.root / JOURNAL_FILE).exists()
    (ws.root / "ledger.parquet").write_bytes((ws.root / "ledger.parquet").read_bytes() + b"x")  # changed outside mmcurate
    assert ws.verify() == ["ledger.parquet: differs from the manifest (changed outside mmcurate?)"]


def test_a_failing_run_leaves_the_workspace_as_it_was(tmp_path, shared_data):
    ws = Workspace(tmp_path / "ws", create=True)
    ingest_to_workspace([shared_data / MMBENCH], ws.root)
    before = {p.name: p.read_bytes() for p in ws.root.iterdir() if p.is_file() and p.name != ".lock"}
    with pytest.raises(RuntimeError):
        with ws.transaction():
            ws.write("screened", ws.read("items").head(3).with_columns(answer__m=pl.lit("A"), hits=pl.lit(0, pl.Int32),
                                                                       n_members=pl.lit(1, pl.Int32), blind=pl.lit(False)))
            ws.record("screen", ws.read("items").head(3).select("source_file", "row", "item_id", status=pl.lit("kept")))
            assert ws.read("screened").height == 3 and ws.ledger().filter(pl.col("stage") == "screen").height == 3  # the run sees its own writes
            assert not (ws.root / "screened.parquet").exists()  # nobody else does
            raise RuntimeError("stage failed")
    after = {p.name: p.read_bytes() for p in ws.root.iterdir() if p.is_file() and p.name != ".lock"}
    assert after == before


def test_journal_of_a_killed_commit_is_rolled_forward_by_the_next_reader(tmp_path, shared_data):
    """Killed between the renames of items and ledger (MMCURATE_FAULT): the next reader finishes the commit."""
    ws = Workspace(tmp_path / "ws", create=True)
    small = tmp_path / "MMMU_8.tsv"
    shutil.copy(shared_data / "vlmevalkit/MMMU_DEV_VAL_8rows_upstream.tsv", small)
    ingest_to_workspace([small], ws.root)
    old_items = ws.read("items").height
    r = mmcurate("ingest", str(shared_data / MMBENCH), "--out", str(ws.root), env={"MMCURATE_FAULT": "after:items.parquet"})
    assert r.returncode == 137, r.stderr
    assert (ws.root / JOURNAL_FILE).exists()  # killed mid-commit: new items beside the old ledger on disk
    assert pl.read_parquet(ws.root / "items.parquet").height == old_items + 54
    assert pl.read_parquet(ws.root / "ledger.parquet").height == old_items
    assert ws.read("items").height == kept(ws) == old_items + 54  # the reader rolled forward first
    assert not (ws.root / JOURNAL_FILE).exists() and ws.verify() == []
    assert ws.manifest()["generation"] == 2


def test_stale_temporaries_are_removed_by_the_next_run(tmp_path, shared_data):
    ws = Workspace(tmp_path / "ws", create=True)
    stale = [ws.root / ".items.parquet.x1y2z3.tmp", ws.root / ".ledger.parquet.abc.tmp", ws.root / ".journal.json.q.tmp"]
    for p in stale:
        p.write_bytes(b"half written")
    ingest_to_workspace([shared_data / MMBENCH], ws.root)
    assert not any(p.exists() for p in stale)
    assert ws.verify() == []


# -- one writer at a time --------------------------------------------------------------------
@pytest.mark.slow  # several CLI processes, 5-7 s: runs in CI, not in the fast loop
def test_second_process_stops_with_one_line_or_waits(tmp_path, shared_data):
    ws = Workspace(tmp_path / "ws", create=True)
    with workspace_lock(ws.root, "screen"):
        r = mmcurate("ingest", str(shared_data / MMBENCH), "--out", str(ws.root))
        assert r.returncode == 2
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and "in use by pid" in lines[0] and "screen" in lines[0] and "--wait" in lines[0]
        assert not ws.has("items")
        proc = subprocess.Popen([sys.executable, "-m", "curate.cli", "--wait", "ingest", str(shared_data / MMBENCH),
                                 "--out", str(ws.root)], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(4.0)
        assert proc.poll() is None  # waiting for the lock
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert ws.read("items").height == kept(ws) == 54


def test_lock_is_reentrant_within_a_process(tmp_path, shared_data):
    ws = Workspace(tmp_path / "ws", create=True)
    with workspace_lock(ws.root, "run"):
        ingest_to_workspace([shared_data / MMBENCH], ws.root)  # takes the same lock inside
    assert ws.read("items").height == 54


# -- re-ingest identity -----------------------------------------------------------------------
def test_reingest_by_relative_then_absolute_path_replaces_and_applies_changes(tmp_path, shared_data):
    data = tmp_path / "bench"  # not "data": `python -m` puts the cwd on sys.path, and a data/ folder there shadows the package
    data.mkdir()
    src = data / "MMBench_samples.tsv"
    shutil.copy(shared_data / MMBENCH, src)
    ws_dir = tmp_path / "ws"
    r = mmcurate("ingest", "bench/MMBench_samples.tsv", "--out", "ws", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    first = Workspace(ws_dir).read("items")
    # change one question, then ingest the same file by its absolute path
    text = src.read_text(encoding="utf-8")
    q0 = first["question"][0]
    assert text.count(q0) >= 1
    src.write_text(text.replace(q0, "CHANGED " + q0, 1), encoding="utf-8")
    ingest_to_workspace([src.resolve()], ws_dir)
    ws = Workspace(ws_dir)
    items, led = ws.read("items"), ws.ledger()
    assert items.height == 54 == kept(ws)
    assert led.filter(pl.col("reason") == "duplicate_id").height == 0
    assert led.height == 54 and led["source_file"].unique().to_list() == [str(src.resolve())]
    assert items.filter(pl.col("item_id") == first["item_id"][0])["question"][0].startswith("CHANGED ")


def test_a_different_file_under_the_same_name_is_not_silently_replaced(tmp_path, shared_data):
    ws = tmp_path / "ws"
    ingest_to_workspace([shared_data / MMBENCH], ws, name="mm")
    other = tmp_path / "other.tsv"
    shutil.copy(shared_data / "vlmevalkit/MMMU_DEV_VAL_8rows_upstream.tsv", other)
    ingest_to_workspace([other], ws, name="mm")
    w = Workspace(ws)
    assert w.ledger().filter(pl.col("stage") == "ingest")["source_file"].n_unique() == 2  # both files accounted for
    assert w.read("items").height == kept(w)


# -- exports ---------------------------------------------------------------------------------
def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_export_recovers_a_killed_swap_and_removes_dead_temporaries(tmp_path, shared_data):
    ws = tmp_path / "ws"
    ingest_to_workspace([shared_data / MMBENCH], ws)
    to = tmp_path / "out" / "bench"
    export_release(ws, to, fmt="jsonl", allow_no_image=True, ignore_check=True)
    dead = _dead_pid()
    os.replace(to, to.with_name(f".bench.old-{dead}"))  # killed between the renames: only the hidden old copy
    tmp_dead = to.with_name(f".bench.{dead}.abcd1234.tmp")
    tmp_live = to.with_name(f".bench.{os.getppid()}.efgh5678.tmp")  # a live process's: never touched
    tmp_dead.mkdir()
    tmp_live.mkdir()
    (tmp_dead / "x").write_bytes(b"0" * 1000)
    with pytest.raises(UserError, match="already exists"):  # the old export is back under its name, so no overwrite
        export_release(ws, to, fmt="jsonl", allow_no_image=True, ignore_check=True)
    assert (to / "bench.jsonl").is_file() and not to.with_name(f".bench.old-{dead}").exists()
    assert not tmp_dead.exists() and tmp_live.exists()
    export_release(ws, to, fmt="jsonl", allow_no_image=True, ignore_check=True, overwrite=True)
    assert sorted(p.name for p in to.parent.iterdir()) == sorted(["bench", tmp_live.name])


def test_tsv_neutralises_formula_cells_and_other_formats_keep_them(tmp_path, shared_data):
    ws = tmp_path / "ws"
    ingest_to_workspace([shared_data / MMBENCH], ws)
    items = Workspace(ws).read("items")
    evil = ["=HYPERLINK(\"http://x\",\"y\")", "+cmd|' /C calc'!A0", "@SUM(1+1)", "-3"]
    items = items.with_columns(
        pl.Series("question", [evil[0]] + items["question"][1:].to_list()),
        pl.Series("options", [evil[1:] + ["\tx"]] + items["options"][1:].to_list()),
        pl.Series("answer", ["A"] + items["answer"][1:].to_list()),
    )
    tsv = export(items, tmp_path / "t", fmt="tsv", allow_no_image=True, allow_uncategorized=True)
    rows = pl.read_csv(tsv / "t.tsv", separator="\t", quote_char='"', infer_schema=False)
    first = rows.row(0, named=True)
    assert first["question"] == "'" + evil[0]
    assert [first["A"], first["B"], first["C"], first["D"]] == ["'" + evil[1], "'" + evil[2], "-3", "'\tx"]
    assert rows["question"][1:].to_list() == items["question"][1:].to_list()  # ordinary text untouched
    assert "leading '" in (tsv / "README.md").read_text()
    js = export(items, tmp_path / "j", fmt="jsonl")
    rec = json.loads((js / "j.jsonl").read_text().splitlines()[0])
    assert rec["question"] == evil[0] and rec["options"][:3] == evil[1:]
    assert [neutralise_formula(x) for x in ("\r1", "+1.5e3", "", "a=b")] == ["'\r1", "+1.5e3", "", "a=b"]


def test_export_of_screened_stage_writes_only_what_the_card_says(tmp_path, shared_data):
    ws = Workspace(tmp_path / "ws", create=True)
    ingest_to_workspace([shared_data / MMBENCH], ws.root)
    items = ws.read("items")
    n = items.height
    blind = pl.int_range(pl.len()) < 5
    flagged = (pl.int_range(pl.len()) >= 5) & (pl.int_range(pl.len()) < 8)
    ws.write("screened", items.with_columns(blind=blind, hits=blind.cast(pl.Int32), n_members=pl.lit(1, pl.Int32), answer__m=pl.lit("A"),
                                            rule_drop=flagged, rule_reason=pl.when(flagged).then(pl.lit("malformed: x"))))
    res = export_release(ws.root, tmp_path / "rel", fmt="jsonl", stage="screened", allow_no_image=True, ignore_check=True)
    lines = (tmp_path / "rel" / "rel.jsonl").read_text().splitlines()
    card = (tmp_path / "rel" / "README.md").read_text()
    assert res.items == len(lines) == n - 8
    ids = {json.loads(x)["item_id"] for x in lines}
    assert not ids & set(items["item_id"][:8].to_list())
    assert f"8 of the stage's {n} rows were dropped" in card and "5 answerable without the image" in card
    assert "3 flagged by the rule filters" in card and "were screened out" in card


# -- terminal output -------------------------------------------------------------------------
def test_safe_escapes_markup_emoji_and_controls():
    con = log_console()
    with con.capture() as cap:
        con.print(safe("a[/x]b [bold]c :100: \x1b[31mred\x9b\x07"))
    text = cap.get()
    assert text.strip() == "a[/x]b [bold]c :100: \\x1b[31mred\\x9b\\x07"
    assert "\x1b" not in text and "💯" not in text
    assert clean("t\tn\nz") == "t n\nz"


def test_cli_prints_hostile_names_and_details_literally(tmp_path, shared_data):
    src = tmp_path / "evil[bold] :100:.tsv"
    shutil.copy(shared_data / MMBENCH, src)
    r = mmcurate("ingest", src.name, "--out", "ws", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "│ evil[bold] :100: │" in r.stdout and "💯" not in r.stdout
    r = mmcurate("ingest", src.name, "--out", "ws2", "--name", "n[/x]:100:", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "│ n[/x]:100: │" in r.stdout
    ws = Workspace(tmp_path / "ws", create=True)
    led = ws.ledger().with_columns(status=pl.lit("quarantined"), reason=pl.lit("bad_x"),
                                   detail=pl.lit("row \x1b[2J\x1b[31mred [/x] :100:"))
    ws.write("items", ws.read("items").head(0))
    with ws.transaction() as tx:
        tx.write_parquet("ledger.parquet", led)
    r = mmcurate("status", str(ws.root), "--rows")
    assert r.returncode == 0, r.stderr
    assert "\x1b" not in r.stdout and "💯" not in r.stdout
    assert "row \\x1b[2J\\x1b[31mred [/x] :100:" in r.stdout


# -- one bad item does not stop a stage ---------------------------------------------------------
PANEL = """
[panel]
name = "fake"
max_hits = 0
rotations = 1
chance_corrected = false
control_size = 0

[[member]]
name = "fake"
model = "package:smollm2-135m-instruct"
backend = "transformers"
method = "loglik"
shots = 0
batch_size = 4
"""


class _PickyBackend:
    """A model that answers A, but cannot take a prompt containing POISON (as a real one cannot take
    a prompt over its context): the error the screen must contain to that one item."""

    batch_independent = False

    def __init__(self, member, cache=None):
        self.member, self.identity = member, "fake-picky-1"

    def letter_logprobs(self, prompts, n):
        if any("POISON" in p.text for p in prompts):
            raise UserError("a prompt of 99999 tokens exceeds n_ctx = 2048; raise n_ctx in the panel file")
        return [[0.0] + [-5.0] * (n - 1) for _ in prompts]

    def close(self):
        pass


def test_screen_skips_and_records_items_it_cannot_ask(tmp_path, shared_data, monkeypatch):
    import io

    from PIL import Image, ImageFile

    import filters.screen as screen_mod

    monkeypatch.setattr(screen_mod, "open_backend", lambda member, cache: _PickyBackend(member))
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", False)  # as in a CLI run (lmms-eval, imported by other tests, sets it)
    ws = Workspace(tmp_path / "ws", create=True)
    ingest_to_workspace([shared_data / MMBENCH], ws.root)
    items = ws.read("items")
    poison, broken = items["item_id"][3], items["item_id"][7]
    data = items["images"][7][0]["bytes"]
    with pytest.raises(Exception):  # really broken: PIL cannot decode it
        Image.open(io.BytesIO(data[: len(data) // 3])).load()
    images = items["images"].to_list()
    images[7] = [{**images[7][0], "bytes": data[: len(data) // 3]}] + images[7][1:]
    items = items.with_columns(
        pl.Series("question", [("POISON " + q) if i == 3 else q for i, q in enumerate(items["question"].to_list())]),
        pl.Series("images", images, dtype=items["images"].dtype),
    )
    ws.write("items", items)
    panel = tmp_path / "panel.toml"
    panel.write_text(PANEL)
    df, report = screen_mod.screen_workspace(ws.root, panel, cache_path=tmp_path / "c.sqlite", progress=False)
    assert report.n_unaskable >= 2
    errors = dict(zip(df["item_id"].to_list(), df["screen_error"].to_list()))
    assert "n_ctx" in errors[poison] and "does not decode" in errors[broken]
    screened = ws.read("screened")
    assert poison not in screened["item_id"].to_list() and broken not in screened["item_id"].to_list()
    led = ws.ledger().filter(pl.col("stage") == "screen")
    assert led.height == items.height  # every item accounted for
    bad = led.filter(pl.col("reason") == "unaskable")
    assert set(bad["item_id"]) == {i for i, e in errors.items() if e} and (bad["status"] == "dropped").all()
    assert screened.height == items.height - bad.height
    assert json.loads((ws.root / "screen_report.json").read_text())["n_unaskable"] == bad.height


def test_screen_still_stops_when_every_item_fails(tmp_path, shared_data, monkeypatch):
    import filters.screen as screen_mod

    class Down(_PickyBackend):
        def letter_logprobs(self, prompts, n):
            raise UserError("member 'fake': http://127.0.0.1:9 is not reachable")

    monkeypatch.setattr(screen_mod, "open_backend", lambda member, cache: Down(member))
    ws = Workspace(tmp_path / "ws", create=True)
    ingest_to_workspace([shared_data / MMBENCH], ws.root)
    panel = tmp_path / "panel.toml"
    panel.write_text(PANEL)
    with pytest.raises(UserError, match="not reachable"):
        screen_mod.screen_workspace(ws.root, panel, cache_path=tmp_path / "c.sqlite", progress=False, limit=6)
    assert not ws.has("screened") and ws.ledger().filter(pl.col("stage") == "screen").height == 0
