"""Property tests (hypothesis) for three invariants a wrong benchmark would break:

* ingest's ledger accounts for every input row of every file (kept + dropped + quarantined =
  rows, one ledger row per row, kept rows = items) and item ids are unique across files;
* rotating an item's options and rotating them back is the identity, and the key follows its text;
* the balancer never takes more from a cell than it holds and meets every quota the pool can meet,
  spreading a capability over its dimensions as evenly as their availability allows.

Examples are capped so the file runs in seconds; each property runs on hand-picked edge cases too.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path

import polars as pl
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from curate.balance import balance
from curate.errors import UserError
from curate.ingest import ingest_to_workspace
from curate.schema import ITEM_SCHEMA, LETTERS, STATUSES, conform
from curate.taxonomy import default_taxonomy
from filters.prompts import rotate

FAST = settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# ------------------------------------------------------------------ ingest ledger
_TEXT = st.sampled_from(["", "  ", "x", "Which one?", "nan", "None", "a", "b", "中文", "a\tb"])
_ROW = st.fixed_dictionaries(
    {"index": st.integers(0, 6), "question": _TEXT},
    optional={
        "options": st.lists(_TEXT, max_size=5),
        "answer": st.sampled_from(["A", "B", "C", "E", "", "b", "(A)", "7", 1]),
        "hint": _TEXT,
    },
)


@FAST
@given(files=st.lists(st.lists(_ROW, min_size=1, max_size=7), min_size=1, max_size=3))
@example(files=[[{"index": 1, "question": "Which one?", "options": ["a", "b"], "answer": "A"}] * 2])  # duplicate id
@example(files=[[{"index": 1, "question": "Which?", "options": ["a", "a"], "answer": "A"}],  # kept with a note
                [{"index": 1, "question": "Which?", "options": ["a", "b"], "answer": "B"}]])  # same id, other file
def test_ingest_ledger_accounts_for_every_row_of_every_file(files):
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for k, rows in enumerate(files):
            path = Path(tmp) / f"src{k}" / "bench.jsonl"  # one source name for all: ids may collide across files
            path.parent.mkdir()
            path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
            paths.append(path)
        try:
            ingest_to_workspace(paths, Path(tmp) / "ws")
        except UserError as exc:  # a whole-file refusal (e.g. no usable question column) is one line
            assert "\n" not in str(exc)
            return
        ledger = pl.read_parquet(Path(tmp) / "ws" / "ledger.parquet").filter(pl.col("stage") == "ingest")
        items = pl.read_parquet(Path(tmp) / "ws" / "items.parquet")
        assert set(ledger["status"]) <= set(STATUSES)
        for path, rows in zip(paths, files):
            mine = ledger.filter(pl.col("source_file") == str(path))
            assert sorted(mine["row"].to_list()) == list(range(1, len(rows) + 1))  # each row once
        kept = ledger.filter(pl.col("status") == "kept")
        assert kept.height == items.height
        assert items["item_id"].is_unique().all()
        assert sorted(kept["item_id"].to_list()) == sorted(items["item_id"].to_list())


# ------------------------------------------------------------------ rotation
@FAST
@given(n=st.integers(2, 10), key=st.integers(0, 9), shift=st.integers(-25, 25), other=st.integers(-25, 25))
@example(n=4, key=0, shift=0, other=0)
@example(n=4, key=3, shift=4, other=1)
def test_rotation_then_unrotation_is_the_identity(n, key, shift, other):
    key %= n
    options = [f"option {i}" for i in range(n)]
    answer = LETTERS[key]
    rotated, new = rotate(options, answer, shift)
    assert sorted(rotated) == options and rotated[LETTERS.index(new)] == options[key]  # the key follows its text
    assert rotate(rotated, new, -shift) == (options, answer)
    assert rotate(rotated, new, n - shift % n) == (options, answer)
    twice = rotate(*rotate(options, answer, shift), other)
    assert twice == rotate(options, answer, shift + other)  # rotations compose


# ------------------------------------------------------------------ balancer
TAX = default_taxonomy()
CAPS = {c.name: [d.name for d in c.dimensions] for c in TAX.capabilities}


def _pool(counts: dict[str, int], sources: int) -> pl.DataFrame:
    """``counts[dimension]`` distinct items of that dimension, spread over ``sources`` benchmarks."""
    rows = []
    for dim, k in counts.items():
        for j in range(k):
            i = len(rows)
            rows.append({
                "item_id": f"p:{i}", "source": f"bench{j % sources}", "source_file": "pool.tsv", "row": i + 1,
                "question": f"question {i}?", "options": ["yes", "no"], "answer": "A", "l2_category": dim,
                "images": [{"bytes": None, "path": f"{i}.png", "width": 8, "height": 8,
                            "sha256": hashlib.sha256(str(i).encode()).hexdigest()}],
                "n_images": 1,
            })
    return conform(pl.DataFrame(rows, schema_overrides={"images": ITEM_SCHEMA["images"]}), ITEM_SCHEMA)


_DIM_COUNTS = st.fixed_dictionaries({d.name: st.integers(0, 12) for d in TAX.dimensions})


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(counts=_DIM_COUNTS, total=st.integers(1, 120), sources=st.integers(1, 3))
@example(counts={d.name: 10 for d in TAX.dimensions}, total=120, sources=2)  # 30 per capability: all quotas met
@example(counts={d.name: 10 for d in TAX.dimensions}, total=100, sources=2)  # 100 = 6 x 16 + 4: a remainder
@example(counts={d.name: (1 if i % 3 == 0 else 12) for i, d in enumerate(TAX.dimensions)}, total=120, sources=1)
def test_balancer_respects_availability_and_meets_every_feasible_quota(counts, total, sources):
    pool = _pool(counts, sources)
    cap_avail = {c: sum(counts[d] for d in dims) for c, dims in CAPS.items()}
    # The documented split: equal shares, the remainder one each to the first capabilities in taxonomy order.
    base, extra = divmod(total, len(CAPS))
    quota = {c: base + (1 if i < extra else 0) for i, c in enumerate(CAPS)}
    if any(n == 0 for c, n in cap_avail.items() if quota[c]) or pool.height < total:
        # documented refusals: a capability that should get items has no candidate, or more asked for than exist
        try:
            balance(pool, total=total, source_cap=None, seed=0)
        except UserError:
            return
        raise AssertionError("an impossible request must be refused")
    sel, shortfall = balance(pool, total=total, source_cap=None, seed=0)
    assert sel["item_id"].is_unique().all() and set(sel["item_id"]) <= set(pool["item_id"])
    got = dict(sel.group_by("l2_category").len().iter_rows())
    for cap, dims in CAPS.items():
        chosen = {d: got.get(d, 0) for d in dims}
        assert all(chosen[d] <= counts[d] for d in dims)  # never more than a cell holds
        assert sum(chosen.values()) == min(quota[cap], cap_avail[cap]), cap  # every feasible quota met, no more
        # as even as availability allows: a dimension below its availability is at most 1 below any other
        top = max(chosen.values())
        assert all(chosen[d] >= top - 1 for d in dims if chosen[d] < counts[d]), (cap, chosen, counts)
    short_caps = set(shortfall.filter(pl.col("dimension").is_null())["capability"]) if shortfall.height else set()
    assert short_caps == {c for c in CAPS if cap_avail[c] < quota[c]}
