"""``mmcurate review ...``: human review of the survivors in a real Label Studio.

serve -> push -> (reviewers annotate in the browser) -> status -> pull. Each command maps flags,
calls one library function and prints a short summary; the API token is never printed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from curate.cli._common import out as console
from curate.console import safe

WorkdirArg = Annotated[Path, typer.Argument(help="Workspace folder (items.parquet / screened.parquet).")]
UrlOpt = Annotated[Optional[str], typer.Option("--url", help="Label Studio URL (default: the server `review serve` started, else http://127.0.0.1:8080). Token: LABEL_STUDIO_API_KEY or the workspace secret.")]
ProjectOpt = Annotated[str, typer.Option("--project", help="Label Studio project title.")]
StageOpt = Annotated[Optional[str], typer.Option("--stage", help="Stage to review: screened (default, else items) or balanced (MMStar reviewed its final picks).")]


def register(app: typer.Typer) -> None:
    """Add `mmcurate review ...` to the main app."""
    review_app = typer.Typer(name="review", help="Human review in Label Studio: serve, push, status, pull.", no_args_is_help=True)
    for name, command in (("serve", serve), ("stop", stop), ("add-reviewer", add_reviewer), ("push", push),
                          ("status", status), ("pull", pull)):
        review_app.command(name)(command)
    app.add_typer(review_app, name="review")


def serve(
    workdir: WorkdirArg,
    port: Annotated[int, typer.Option("--port", help="Port on 127.0.0.1 (refused when busy).")] = 8080,
    detach: Annotated[bool, typer.Option("--detach", help="Leave the server running in the background (stop it with `review stop`).")] = False,
) -> None:
    """Start a local Label Studio bound to 127.0.0.1 with its data inside WORKDIR."""
    from annotation.server import secret_path, start_server

    with console.status("starting Label Studio (the first start of a workspace migrates its database, ~1 min)"):
        server = start_server(workdir, port)
    console.print(f"Label Studio: [bold]{safe(server.url)}[/]  (login and API token in {safe(secret_path(workdir))}, readable only by you)")
    if detach:
        import warnings

        # Left running on purpose (`review stop` ends it): Popen's "subprocess N is still running"
        # ResourceWarning at exit would report a leak that is not one.
        warnings.filterwarnings("ignore", message=r"subprocess \d+ is still running", category=ResourceWarning)
        return
    console.print("Ctrl-C stops it.")
    try:
        server.process.wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


def stop(workdir: WorkdirArg) -> None:
    """Stop the server `review serve --detach` started for WORKDIR."""
    from annotation.server import stop_recorded

    console.print("stopped" if stop_recorded(workdir) else "no server recorded for this workspace")


def add_reviewer(
    workdir: WorkdirArg,
    emails: Annotated[list[str], typer.Argument(help="One email per reviewer (each gets their own login).")],
) -> None:
    """Create a login per reviewer on the local server (`review serve`); passwords go to a 0600 file."""
    from annotation.server import add_reviewers, recorded_url, save_reviewer_logins

    path = save_reviewer_logins(workdir, emails)
    add_reviewers(workdir, {e: p for e, p in json.loads(path.read_text()).items() if e in emails})
    url = recorded_url(workdir) or "the server `review serve` starts"
    console.print(f"{len(emails)} reviewer logins; passwords in {path} (readable only by you; hand each reviewer theirs)")
    console.print(f"each reviewer logs in at {url}/user/login and opens the project's 'Label All Tasks'")


def push(
    workdir: WorkdirArg,
    url: UrlOpt = None,
    project: ProjectOpt = "mmcurate review",
    images: Annotated[str, typer.Option("--images", help="auto (local when `review serve` runs for WORKDIR, else inline) | inline (base64 in the task; a team server) | local (files served from the workspace).")] = "auto",
    reviewers: Annotated[int, typer.Option("--reviewers", help="Different reviewers each task goes to (set when the project is created; MMStar: 3).")] = 3,
    stage: StageOpt = None,
) -> None:
    """Import the review candidates as tasks (again: only the ones not there yet, e.g. a `balance --replace` pick)."""
    from rich.progress import Progress

    from annotation.client import connect, push_workspace

    client = connect(workdir, url)
    with Progress(console=console, transient=True) as bar:
        job = bar.add_task("pushing", total=None)
        result = push_workspace(
            workdir, client, project, image_mode=images, reviewers=reviewers, stage=stage, on_batch=lambda done, todo: bar.update(job, completed=done, total=todo)
        )
    console.print(
        f"project {safe(repr(project))} (id {result.project_id}) at {safe(client.url)}: {result.pushed} new tasks, "
        f"{result.already} already there, {result.total} candidates; images {result.image_mode}"
    )


def status(
    workdir: WorkdirArg,
    url: UrlOpt = None,
    project: ProjectOpt = "mmcurate review",
    min_reviewers: Annotated[int, typer.Option("--min-reviewers", help="Reviewers each item needs (MMStar: 3).")] = 3,
) -> None:
    """Progress per reviewer and the items still short of reviewers."""
    from annotation.client import connect

    client = connect(workdir, url)
    st = client.status(client.project_id(project), project, min_reviewers=min_reviewers)
    console.print(f"project {safe(repr(project))} (id {st.project_id}): {st.tasks} tasks, {st.annotated} annotated, {st.annotations} annotations")
    table = Table("reviewer", "done", "left")
    for who, n in st.per_annotator.items():
        table.add_row(safe(who), f"{n} of {st.tasks}", str(st.remaining(who)))
    console.print(table)
    if not st.short_items:
        console.print(f"every item has {min_reviewers} or more reviewers")
        return
    print_short_items(st, min_reviewers)


def print_short_items(st, min_reviewers: int) -> None:
    """The first 20 items still short of reviewers, with who reviewed them so far."""
    console.print(f"{len(st.short_items)} items still short of {min_reviewers} reviewers:")
    short = Table("item_id", "reviewers so far")
    for item_id in st.short_items[:20]:
        names = st.short_reviewers[item_id]
        short.add_row(safe(item_id), safe(f"{len(names)}: " + ", ".join(names)) if names else "0")
    console.print(short)
    if len(st.short_items) > 20:
        console.print(f"... and {len(st.short_items) - 20} more")


def pull(
    workdir: WorkdirArg,
    url: UrlOpt = None,
    project: ProjectOpt = "mmcurate review",
    min_reviewers: Annotated[int, typer.Option("--min-reviewers", help="Reviewers needed before an item can be kept (MMStar: 3).")] = 3,
    stage: StageOpt = None,
) -> None:
    """Export verdicts, decide each item, write reviewed.parquet and review_agreement.json."""
    from annotation.client import connect
    from annotation.verdicts import pull as pull_verdicts

    result = pull_verdicts(workdir, connect(workdir, url), project, min_reviewers=min_reviewers, stage=stage)
    console.print(f"reviewed.parquet: {result.table.height} rows; " + ", ".join(f"{safe(k)} {v}" for k, v in sorted(result.counts.items())))
    table = Table("question", "Fleiss' kappa", "items (>=2 reviewers)", "all agree")
    for q in ("needs_image", "key_correct", "dimension"):
        a = result.agreement[q]
        table.add_row(q, _fmt(a["fleiss_kappa"]), str(a["n_items"]), _fmt(a["all_agree_share"]))
    console.print(table)


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"
