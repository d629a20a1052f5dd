"""The three config files a user writes (panel, rules, pipeline) are checked by one loader
(curate/config.py) and fail with one message shape: FILE: PARAMETER = VALUE is invalid|out of range;
it must be WHAT (did you mean ...?) -- one line, exit 2 from the CLI."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
from pathlib import Path

import pytest

from curate.config import Param, check_value
from curate.errors import UserError
from curate.ingest import ingest_to_workspace
from curate.pipeline import load_config
from filters.panel import MEMBER_SPEC, PANEL_SPEC, Member, Panel, load_panel
from filters.rules import RULES_SPEC, RuleConfig

REPO = Path(__file__).resolve().parents[1]
MEMBER = '[[member]]\nname = "m"\nmodel = "package:smollm2-135m-instruct"\n'
RUN = 'workdir = "ws"\n[ingest]\nsources = ["a.tsv"]\n'


def _error(tmp_path: Path, name: str, text: str, load) -> str:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(UserError) as err:
        load(path)
    return str(err.value)


@pytest.mark.parametrize("name, text, load, param, value, must", [
    ("panel.toml", "[panel]\nmargin = 1.5\n" + MEMBER, load_panel, "panel.margin", "1.5", "a number in [0, 1)"),
    ("panel.toml", '[panel]\nat_chance = "exlude"\n' + MEMBER, load_panel, "panel.at_chance", "'exlude'",
     "one of 'count', 'exclude' (did you mean 'exclude'?)"),
    ("panel.toml", MEMBER + "batch_size = 0\n", load_panel, "member[1] (m).batch_size", "0", "an integer >= 1"),
    ("panel.toml", "[panel]\ncontrol_size = -3\n" + MEMBER, load_panel, "panel.control_size", "-3",
     "an integer >= 0 (0 skips the competence check)"),
    ("panel.toml", MEMBER + "[rules]\nphash_max_distance = 40\n", load_panel, "rules.phash_max_distance", "40",
     "an integer in [0, 32] (differing bits of 64), e.g. 4"),
    ("rules.toml", '[rules]\ndrop = ["malformd"]\n', RuleConfig.from_toml, "rules.drop", "['malformd']",
     "a list of values from 'answer_leak', 'near_duplicate', 'duplicate_image', 'malformed', 'no_image'; "
     "'malformd' is not one of them (did you mean 'malformed'?)"),
    ("rules.toml", "[rules]\nnear_duplicate_threshold = 0\n", RuleConfig.from_toml, "rules.near_duplicate_threshold", "0",
     "a number in (0, 1] (a cosine similarity), e.g. 0.9"),
    ("run.toml", 'seed = "x"\n' + RUN, load_config, "seed", "'x'", "an integer >= 0"),
])
def test_every_config_file_names_file_parameter_value_and_fix(tmp_path, name, text, load, param, value, must):
    msg = _error(tmp_path, name, text, load)
    shape = rf"{re.escape(str(tmp_path / name))}: {re.escape(param)} = {re.escape(value)} is (invalid|out of range); it must be "
    assert re.match(shape, msg), msg
    assert msg.endswith(must) and "\n" not in msg, msg


@pytest.mark.parametrize("name, text, load, key, section, close", [
    ("panel.toml", "[panel]\nmax_hit = 2\n" + MEMBER, load_panel, "max_hit", "[panel]", "max_hits"),
    ("panel.toml", MEMBER + 'dtpye = "float32"\n', load_panel, "dtpye", "member[1] (m)", "dtype"),
    ("rules.toml", "[rules]\nphash_max_distanse = 3\n", RuleConfig.from_toml, "phash_max_distanse", "[rules]", "phash_max_distance"),
    ("run.toml", RUN + "[balance]\ntotl = 10\n", load_config, "totl", "[balance]", "total"),
])
def test_unknown_keys_read_the_same_in_every_file(tmp_path, name, text, load, key, section, close):
    msg = _error(tmp_path, name, text, load)
    assert msg.startswith(f"{tmp_path / name}: unknown key {key!r} in {section} (did you mean {close!r}?); valid keys: "), msg


def test_specs_cover_every_field_the_files_may_set():
    """A field added to Member, Panel or RuleConfig without a spec entry would be refused in every file."""
    assert set(MEMBER_SPEC) == {f.name for f in dataclasses.fields(Member)}
    assert set(PANEL_SPEC) == {f.name for f in dataclasses.fields(Panel)} - {"members", "rules", "source"}
    assert set(RULES_SPEC) == {f.name for f in dataclasses.fields(RuleConfig)}


def test_param_bounds_special_values_and_bools():
    rotations = PANEL_SPEC["rotations"]
    assert check_value("f", "panel", "rotations", "adaptive", rotations) == "adaptive"
    assert check_value("f", "panel", "rotations", 3, rotations) == 3
    for bad in (True, 0, 1.5, "Adaptive"):
        with pytest.raises(UserError, match="panel.rotations"):
            check_value("f", "panel", "rotations", bad, rotations)
    unit = Param((float,), low=0, high=1, open_high=True)
    assert check_value("f", "", "x", 0, unit) == 0 and check_value("f", "", "x", 0.999, unit) == 0.999
    with pytest.raises(UserError, match=r"f: x = 1 is out of range; it must be a number in \[0, 1\)"):
        check_value("f", "", "x", 1, unit)
    with pytest.raises(UserError, match=r"x = False is invalid"):
        check_value("f", "", "x", False, unit)  # a bool is never a number


def test_shipped_panels_keep_their_hash():
    """panel_hash travels with every screened.parquet: the shipped panels hash as they always did
    (change these only with the panel files themselves)."""
    assert load_panel(REPO / "data" / "panel.toml").config_hash == "0a785b1cf4e6788f"  # adaptive_depth 2, margin 0.136 (session 8)
    assert load_panel(REPO / "data" / "panel_tiny.toml").config_hash == "47cca3c15a6a23ae"


def test_cli_prints_one_line_and_exits_2(tmp_path, shared_data):
    ingest_to_workspace([shared_data / "vlmevalkit" / "MMBench_samples.tsv"], tmp_path / "ws")
    panel = tmp_path / "panel.toml"
    panel.write_text(MEMBER + '[rules]\nenabled = ["answer_leak"]\ndrop = ["malformed"]\n')
    res = subprocess.run([sys.executable, "-m", "curate.cli", "screen", str(tmp_path / "ws"), "--panel", str(panel)],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 2, res.stderr
    assert res.stderr.strip() == (f"error: {panel}: rules.drop = ['malformed'] is invalid; 'malformed' is not in enabled = "
                                  "['answer_leak'], so dropping on it has no effect; add it to enabled or remove it from drop")
    assert not (tmp_path / "ws" / "screened.parquet").exists()
