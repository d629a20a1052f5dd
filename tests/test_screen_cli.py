"""`mmcurate screen` on bad input: one clear line on stderr, exit code 2, never a traceback."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from curate.schema import ITEM_SCHEMA, conform
from curate.workspace import Workspace

REPO = Path(__file__).resolve().parents[1]


def items_workspace(tmp_path: Path, n: int = 3) -> Path:
    ws = Workspace(tmp_path / "ws", create=True)
    df = pl.DataFrame(
        {
            "item_id": [f"t:{i}" for i in range(n)],
            "source": ["t"] * n,
            "source_file": ["t.tsv"] * n,
            "row": list(range(1, n + 1)),
            "question": [f"What is {i} + 1?" for i in range(n)],
            "options": [[str(i + 1), str(i + 2), str(i + 3), str(i + 4)] for i in range(n)],
            "answer": ["A"] * n,
        }
    )
    ws.write("items", conform(df, ITEM_SCHEMA))
    return ws.root


def run_screen(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "curate.cli", "screen", *args, "--no-progress"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error:")
    return lines[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_panel_typo_is_one_line(tmp_path):
    ws = items_workspace(tmp_path)
    panel = tmp_path / "panel.toml"
    panel.write_text('[panel]\nmax_hit = 1\n[[member]]\nname = "m"\nmodel = "package:smollm2-135m-instruct"\n')
    line = one_error_line(run_screen(str(ws), "--panel", str(panel)))
    assert str(panel) in line and "unknown key 'max_hit' in [panel]" in line and "did you mean 'max_hits'" in line, line


def test_missing_model_path_is_one_line(tmp_path):
    ws = items_workspace(tmp_path)
    panel = tmp_path / "panel.toml"
    panel.write_text('[[member]]\nname = "m"\nmodel = "/no/such/model.gguf"\n')
    line = one_error_line(run_screen(str(ws), "--panel", str(panel)))
    assert "/no/such/model.gguf" in line and "member[1] (m).model" in line


@pytest.mark.slow  # several CLI processes, 5-7 s: runs in CI, not in the fast loop
def test_unreachable_endpoint_is_one_line(tmp_path):
    ws = items_workspace(tmp_path)
    port = free_port()  # nothing listens there
    panel = tmp_path / "panel.toml"
    panel.write_text(
        f'[panel]\ncontrol_size = 0\n[[member]]\nname = "remote"\nbackend = "openai"\n'
        f'base_url = "http://127.0.0.1:{port}/v1"\nmodel = "m"\nmax_retries = 1\ntimeout = 2.0\n'
    )
    line = one_error_line(run_screen(str(ws), "--panel", str(panel)))
    assert f"127.0.0.1:{port}" in line and "cannot reach" in line and "base_url" in line
    assert not (ws / "screened.parquet").exists()


def test_unknown_member_and_missing_workspace(tmp_path):
    ws = items_workspace(tmp_path)
    line = one_error_line(run_screen(str(ws), "--panel", str(REPO / "data" / "panel_tiny.toml"), "--members", "gpt5"))
    assert "no panel member named 'gpt5'" in line
    line = one_error_line(run_screen(str(tmp_path / "nowhere")))
    assert "no such workspace" in line
