"""The import direction of the layers (issue #14): the foundation imports nothing above it.

Layers, bottom up: the foundation inside ``curate/`` (``FOUNDATION`` below: errors, schema, workspace,
stage registry, config loader, multiple-choice module, statistics, taxonomy, assets, console, groups); the stage packages ``filters/`` and ``annotation/``, which may import only the
foundation; the application (the other ``curate`` modules: ingest, balance, export, audit and the
pipeline); on top, the command line, ``curate/cli/``: the only importer of typer, imported by nothing.
A static scan of every import statement -- function-level ones included, since a lazy import is
still a dependency -- so the rule holds for code paths no test runs.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOUNDATION = {"curate.errors", "curate.schema", "curate.workspace", "curate.taxonomy", "curate.assets",
              "curate.console", "curate.groups", "curate.mc", "curate.config", "curate.stages",
              "curate.stats", "curate.allocation", "curate.correlation"}
PACKAGES = ("curate", "filters", "annotation")
CLI = ROOT / "curate" / "cli"


def imported_modules(path: Path) -> set[str]:
    """Every module an ``import`` / ``from ... import`` names in ``path`` (absolute imports)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def curate_modules(names: set[str]) -> set[str]:
    """The ``curate`` modules among ``names`` (``curate.x.y`` -> ``curate.x``; names that are not modules dropped)."""
    out = set()
    for name in names:
        parts = name.split(".")
        if parts[0] == "curate" and len(parts) > 1 and (ROOT / "curate" / f"{parts[1]}.py").exists() or \
                parts[0] == "curate" and len(parts) > 1 and (ROOT / "curate" / parts[1]).is_dir():
            out.add(".".join(parts[:2]))
    return out


@pytest.mark.parametrize("package", ["filters", "annotation"])
def test_stage_packages_import_only_the_foundation(package):
    offenders = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        above = curate_modules(imported_modules(path)) - FOUNDATION
        if above:
            offenders[rel] = sorted(above)
    assert not offenders, f"{package}/ imports curate modules above the foundation: {offenders}"


def test_foundation_imports_nothing_above_it():
    offenders = {}
    for module in sorted(FOUNDATION):
        path = ROOT / (module.replace(".", "/") + ".py")
        names = imported_modules(path)
        above = {n for n in names if n.split(".")[0] in ("filters", "annotation")} | (curate_modules(names) - FOUNDATION)
        if above:
            offenders[module] = sorted(above)
    assert not offenders, f"foundation modules import from above: {offenders}"


def test_importing_the_foundation_loads_no_stage():
    """``from curate.errors import UserError`` must not pull in ingest (polars readers, PIL) or a stage package."""
    code = (
        "import sys\n"
        "import curate.errors, curate.schema, curate.workspace, curate.taxonomy, curate.groups\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('filters', 'annotation') or m in "
        "('curate.ingest', 'curate.audit', 'curate.balance', 'curate.export', 'PIL'))\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"importing the foundation loaded: {out.stdout.strip()}"


def _outside_cli(*folders: str) -> list[Path]:
    """Every Python file under ``folders`` but the CLI package's."""
    return [p for folder in folders for p in sorted((ROOT / folder).rglob("*.py")) if CLI not in p.parents]


def test_only_the_cli_package_imports_typer():
    """One command-line layer: a library or stage module that imports typer has grown a command of its own."""
    offenders = sorted(p.relative_to(ROOT).as_posix() for p in _outside_cli(*PACKAGES)
                       if any(n.split(".")[0] in ("typer", "click") for n in imported_modules(p)))
    assert not offenders, f"typer / click imported outside curate/cli/: {offenders}"
    assert any("typer" in imported_modules(p) for p in CLI.glob("*.py")), "the scan found no typer import at all"


def test_nothing_outside_the_cli_imports_it():
    """The CLI prints what the library returns; a library module (or a bench script) importing a CLI printer
    turns the layers upside down (``curate.pipeline`` once printed through the CLI's balance table)."""
    offenders = {}
    for path in _outside_cli(*PACKAGES, "bench"):
        names = {n for n in imported_modules(path) if n == "curate.cli" or n.startswith("curate.cli.")}
        if names:
            offenders[path.relative_to(ROOT).as_posix()] = sorted(names)
    assert not offenders, f"modules outside curate/cli/ import it: {offenders}"
    assert not list(ROOT.glob("*/cli.py")) + list(ROOT.glob("*/cli_*.py")), "a CLI module outside curate/cli/"


#: The application modules that run the stages in order (the ``run`` pipeline and the ``audit`` command's
#: ingest -> screen -> rules -> report); every other library module is one stage or a helper of one.
ORCHESTRATORS = {"curate/pipeline.py", "curate/audit.py"}


def test_only_the_orchestrators_import_the_stage_packages():
    """Balance, export, check, metrics ... never reach into ``filters/`` or ``annotation/``: a stage reads the
    workspace another stage wrote, through the registry, not the other stage's code."""
    offenders = {}
    for path in _outside_cli("curate"):
        rel = path.relative_to(ROOT).as_posix()
        stages = sorted(n for n in imported_modules(path) if n.split(".")[0] in ("filters", "annotation"))
        if stages and rel not in ORCHESTRATORS:
            offenders[rel] = stages
    assert not offenders, f"library modules that import a stage package: {offenders}"
    reached = {p.relative_to(ROOT).as_posix() for p in _outside_cli("curate")
               if any(n.split(".")[0] == "filters" for n in imported_modules(p))}
    assert reached == ORCHESTRATORS, reached  # the scan sees the imports it allows
