"""Mutation score of the decision modules (issue #15): how many small bugs the fast tests catch.

    python bench/mutation.py                           # every decision module (slow: hours on 2 cores)
    python bench/mutation.py curate/normalize.py       # one module
    python bench/mutation.py curate/normalize.py --tests tests/test_ingest.py --max-children 2 --show 20
    # on a loaded machine: only some functions' mutants, and only the tests that pin them
    python bench/mutation.py filters/screen.py -k "poisson or ledger_reason" --mutants 'filters.screen.x__above__*'

mutmut 3 mutates one function at a time (operators, constants, comparisons, arguments, ...)
and runs the fast tests that execute that function (it records which ones in a first run
over the selected tests). A mutant is *killed* when a test fails, *survives* when all pass.
Score = killed / (killed + survived + timeouts), equivalent survivors (``EQUIVALENT``, checked
by hand) left out of both; "no tests" mutants (functions the
selected tests never reach) are counted separately and named, as they are gaps too.

Why a copy: mutmut writes ``mutants/`` beside ``pyproject.toml`` and runs the tests from
there; the checkout stays untouched (other work goes on in it), and the copy gets the
``[mutmut]`` section this script writes (nothing in the repository configures mutmut).
The real benchmark files are found through ``MMCURATE_SHARED_DATA``. Not in CI: slow.
Run it niced on a shared machine (``nice -n 19 python bench/mutation.py ...``).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
#: Module -> the fast test files that exercise its decisions.
DECISION_MODULES: dict[str, tuple[str, ...]] = {
    "curate/normalize.py": ("tests/test_ingest.py", "tests/test_mmstar_forms.py", "tests/test_hostile_inputs.py",
                            "tests/test_roundtrip.py", "tests/test_invariants.py"),
    # the screen's decisions (hits, rotations, chance correction, thresholds, ledger) are driven end to end by
    # the scripted backend in test_screen_decisions.py: fast, and every expected value worked out by hand
    "filters/scoring.py": ("tests/test_screen_units.py", "tests/test_screen_panel.py", "tests/test_screen_decisions.py"),
    "filters/competence.py": ("tests/test_screen_units.py", "tests/test_screen_panel.py", "tests/test_screen_decisions.py"),
    "filters/screen.py": ("tests/test_screen_decisions.py", "tests/test_screen_units.py"),
    "curate/balance.py": ("tests/test_balance.py", "tests/test_invariants.py"),
    "curate/export.py": ("tests/test_export.py", "tests/test_export_profiles.py", "tests/test_roundtrip.py"),
    "curate/metrics.py": ("tests/test_metrics.py",),
}
#: Copied beside the mutated packages: what the tests import or read.
ALSO_COPY = ("annotation", "data", "bench", "scripts")
#: Surviving mutants checked by hand and found equivalent (no input can tell them apart from the
#: original), with the reason; mutmut numbers mutants per function, so re-check after editing one.
EQUIVALENT: dict[str, str] = {
    "curate.normalize.x__settle_options__mutmut_7": "LETTERS.index -> rindex: LETTERS has no repeated letter",
    "curate.normalize.x__settle_options__mutmut_26": "last < key_pos -> <=: when equal, `last = key_pos` changes nothing",
    "filters.competence.x_summarise__mutmut_18": "`if n` -> `if n or True`: one response per item, so n == 0 means no "
                                                 "responses and the comprehension is empty either way",
    "filters.scoring.x_score_prompts__mutmut_44": "getattr default False -> None: bool(None) is False too",
    "filters.screen.x__above__mutmut_7": "len(dist) + 1 -> + 2: only adds trailing zero-probability counts, which add "
                                         "nothing to the tail sum",
    "filters.screen.x__above__mutmut_14": "nxt[c + 1] += -> =: nxt[c + 1] is still 0 when iteration c writes it (the "
                                          "(1 - p) term of iteration c + 1 adds to it afterwards)",
    "filters.screen.x__blind_score__mutmut_5": "LETTERS.index -> rindex: LETTERS has no repeated letter",
    "curate.metrics.x_accuracy__mutmut_4": "`if n` -> `if n or True`: an empty column sums to 0 anyway",
    "curate.metrics.x_accuracy__mutmut_16": "`if n` -> `if n or True`: an empty column sums to 0 anyway",
    "curate.balance.x_waterfill__mutmut_10": "remaining > 0 -> >= 0: at 0 the loop gives nothing (share 0, no leftover) and breaks",
    "filters.competence.x_accepted__mutmut_8": "LETTERS.index -> rindex: LETTERS has no repeated letter",
    "filters.competence.x_is_hit__mutmut_15": "LETTERS.index -> rindex: LETTERS has no repeated letter",
}
_STATUS = re.compile(r"^\s*(?P<name>[\w.]+__mutmut_\d+):\s*(?P<status>[\w ]+?)\s*$")


def _copy_repo(dest: Path) -> None:
    """The tracked and untracked (not ignored) files of the checkout, without .venv or caches."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True,
                           text=True, check=True).stdout.splitlines()
    for rel in files:
        src = REPO / rel
        if not src.is_file() or rel.startswith((".venv/", "mutants/")):
            continue
        out = dest / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, out)


def _config(modules: list[str], tests: list[str], keyword: str | None = None) -> str:
    """The [mutmut] section (setup.cfg: the copy's pyproject.toml has no [tool.mutmut])."""
    def lines(xs) -> str:
        return "\n" + "\n".join(f"    {x}" for x in xs)

    return ("[mutmut]\nsource_paths =" + lines(["curate", "filters"]) + "\n"
            "only_mutate =" + lines(modules) + "\n"
            "also_copy =" + lines(ALSO_COPY) + "\n"
            "pytest_add_cli_args_test_selection =" + lines(tests) + "\n"
            "pytest_add_cli_args =" + lines(["-m", "not slow", "-p", "no:randomly", "-p", "no:cacheprovider", "-q",
                                              *(["-k", keyword] if keyword else [])]) + "\n"
            "use_git_change_detection = false\n"
            # generous timeouts: on a shared, loaded machine a starved worker is slow, not an endless loop
            "timeout_multiplier = 60.0\ntimeout_constant = 60.0\n"
            # a worker forked from a process that already ran polars can hang on polars' thread pool
            # (workers sat at 0 % CPU until their timeout): fork from a clean server instead
            "process_isolation = forkserver\nforkserver_warmup = none\n")


def _module_of(mutant: str) -> str:
    """``curate.normalize.x_func__mutmut_3`` -> ``curate/normalize.py``."""
    head = mutant.split("__mutmut_")[0]
    parts = head.split(".")
    while parts and not parts[-1].startswith(("x_", "xǁ")):
        parts.pop()
    return "/".join(parts[:-1]) + ".py" if parts else head


def _results(workdir: Path, env: dict) -> dict[str, str]:
    out = subprocess.run([sys.executable, "-m", "mutmut", "results", "--all", "true"], cwd=workdir, env=env,
                         capture_output=True, text=True, check=False).stdout
    return {m["name"]: m["status"] for line in out.splitlines() if (m := _STATUS.match(line))}


def report(statuses: dict[str, str], workdir: Path, env: dict, show: int) -> dict[str, dict]:
    """Print the score per module and the first ``show`` surviving mutants (their diffs); return the counts."""
    by_module: dict[str, Counter] = defaultdict(Counter)
    survivors: dict[str, list[str]] = defaultdict(list)
    for name, status in sorted(statuses.items()):
        mod = _module_of(name)
        if status == "survived" and name in EQUIVALENT:
            status = "equivalent"
            print(f"  equivalent: {name}: {EQUIVALENT[name]}")
        by_module[mod][status] += 1
        if status in ("survived", "no tests", "timeout"):
            survivors[mod].append(f"{name} ({status})")
    summary = {}
    for mod, c in sorted(by_module.items()):
        killed, survived, timeout, untested = c["killed"], c["survived"], c["timeout"], c["no tests"]
        scored = killed + survived + timeout
        score = 100 * killed / scored if scored else float("nan")
        summary[mod] = dict(c) | {"score": round(score, 1)}
        print(f"{mod}: {killed} killed of {scored} tested mutants = {score:.1f} % "
              f"({survived} survived, {timeout} timeout, {untested} not reached by the selected tests; "
              f"{c['equivalent']} equivalent; "
              f"other: { {k: v for k, v in c.items() if k not in ('killed', 'survived', 'timeout', 'no tests', 'equivalent')} })")
        for s in survivors[mod][:show]:
            print("  survivor:", s)
            name = s.split(" ")[0]
            diff = subprocess.run([sys.executable, "-m", "mutmut", "show", name], cwd=workdir, env=env,
                                  capture_output=True, text=True, check=False).stdout
            print("    " + "\n    ".join(ln for ln in diff.splitlines() if ln.startswith(("+", "-")) and not ln.startswith(("+++", "---"))))
        if len(survivors[mod]) > show:
            print(f"  ... {len(survivors[mod]) - show} more: `cd {workdir} && mutmut results`")
    return summary


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("modules", nargs="*", help=f"modules to mutate (default: {' '.join(DECISION_MODULES)})")
    ap.add_argument("--tests", nargs="*", help="test files (default: the module's own, see DECISION_MODULES)")
    ap.add_argument("-k", dest="keyword", help="pytest -k expression to leave out slow tests "
                                               "(e.g. 'not cli': those start a new interpreter per call)")
    ap.add_argument("--mutants", nargs="*", default=[],
                    help="only these mutants (fnmatch patterns, e.g. 'curate.normalize.x__answer_letter*')")
    ap.add_argument("--max-children", type=int, default=max(1, (os.cpu_count() or 2) - 1))
    ap.add_argument("--workdir", type=Path, help="where the copy goes (default: a new temporary folder); "
                                                 "an existing one is reused, so a stopped run resumes")
    ap.add_argument("--show", type=int, default=15, help="surviving mutants to print per module, with their diff")
    args = ap.parse_args(argv)
    modules = args.modules or list(DECISION_MODULES)
    unknown = [m for m in modules if not (REPO / m).is_file()]
    if unknown:
        ap.error(f"no such module: {unknown}")
    tests = args.tests or sorted({t for m in modules for t in DECISION_MODULES.get(m, ())})
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="mmcurate-mutation-"))
    if not (workdir / "pyproject.toml").is_file():
        _copy_repo(workdir)
    (workdir / "setup.cfg").write_text(_config(modules, tests, args.keyword), encoding="utf-8")
    env = dict(os.environ, MMCURATE_SHARED_DATA=os.environ.get("MMCURATE_SHARED_DATA", str(REPO.parent / "shared" / "data")),
               PYTHONDONTWRITEBYTECODE="1")
    print(f"mutating {', '.join(modules)} in {workdir}; tests: {' '.join(tests)}", flush=True)
    t0 = time.perf_counter()
    run = subprocess.run([sys.executable, "-m", "mutmut", "run", "--max-children", str(args.max_children), *args.mutants],
                         cwd=workdir, env=env, check=False)
    print(f"mutmut run exited {run.returncode} after {time.perf_counter() - t0:.0f} s")
    statuses = _results(workdir, env)
    if args.mutants:
        import fnmatch

        statuses = {k: v for k, v in statuses.items() if any(fnmatch.fnmatch(k, p) for p in args.mutants)}
    if not statuses:
        print("no mutant results (see mutmut's output above)")
        return 1
    report(statuses, workdir, env, args.show)
    return 0


if __name__ == "__main__":
    sys.exit(main())
