"""A small wrapper over the Label Studio SDK with the guarantees review needs.

Why a wrapper: the raw SDK makes three things easy to get wrong here --
- it silently RETRIES POSTs on connection errors and 5xx, and Label Studio creates a duplicate
  task for every repeated import. Every write below goes out with ``max_retries=0``, and a
  push first asks the server which ``item_id``s it already holds, so pushing again (after a
  crash, a killed server, or just twice) imports only what is missing;
- its errors are tracebacks with response headers; a user needs one line (wrong token,
  unreachable URL, a same-named project that is not ours) -- always ``UserError``;
- a project found by title might be somebody else's: we check its labeling config is ours.

The API token is passed in, used for the Authorization header only, and never formatted into
a message.
"""

from __future__ import annotations

import json
import weakref
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import polars as pl

from annotation.config import is_ours, labeling_config
from annotation.tasks import (
    PREDICTION_MODEL,
    ImageMode,
    iter_tasks,
    plan_images,
    task_size,
)
from curate.errors import UserError
from curate.workspace import workspace_command

NO_RETRY = {"max_retries": 0}
DEFAULT_PROJECT = "mmcurate review"
#: Import batches are bounded by task count and by payload bytes (Label Studio caps a POST at 200 MB).
BATCH_TASKS = 500
BATCH_BYTES = 24 * 1024 * 1024


@dataclass
class PushResult:
    project_id: int
    total: int  # items selected for review
    already: int  # found on the server before this push
    pushed: int  # imported by this push
    batches: int = 0
    image_mode: str = "inline"


@dataclass
class ProjectStatus:
    project_id: int
    title: str
    tasks: int
    annotated: int  # tasks with at least one submitted (not cancelled) annotation
    annotations: int
    per_annotator: dict[str, int] = field(default_factory=dict)
    #: Reviewers required per item, and the item_ids with fewer submitted verdicts than that.
    min_reviewers: int = 3
    short_items: list[str] = field(default_factory=list)
    #: ``{item_id: reviewers so far}`` for the short items (who still has to look is the rest of the team).
    short_reviewers: dict[str, list[str]] = field(default_factory=dict)

    def remaining(self, reviewer: str) -> int:
        """Tasks this reviewer has not submitted yet (their progress is ``tasks - remaining``)."""
        return self.tasks - self.per_annotator.get(reviewer, 0)


class ReviewClient:
    """Talks to one Label Studio server as one user (the token's owner)."""

    def __init__(self, url: str, token: str, *, timeout: float = 120.0, import_timeout: float = 600.0):
        from label_studio_sdk import LabelStudio

        if not url or not url.startswith(("http://", "https://")):
            raise UserError(f"Label Studio URL {url!r}: expected http://host:port")
        if not token:
            raise UserError("empty Label Studio API token: set LABEL_STUDIO_API_KEY or run `mmcurate review serve WORKDIR`")
        self.url = url.rstrip("/")
        self._token = token
        self.import_timeout = import_timeout
        # Our own HTTP client, closed by close() / `with` / at exit at the latest: the SDK's default
        # one is never closed, which left an "unclosed socket" ResourceWarning after every review command.
        self._http = httpx.Client(timeout=timeout, follow_redirects=True)
        self._closer = weakref.finalize(self, self._http.close)
        self.ls = LabelStudio(base_url=self.url, api_key=token, timeout=timeout, httpx_client=self._http)
        me = self.call("check the API token", lambda: self.ls.users.whoami(request_options=NO_RETRY))
        self.user_email = getattr(me, "email", None) or getattr(me, "username", "")

    def __repr__(self) -> str:
        return f"ReviewClient(url={self.url!r}, token=***)"

    def close(self) -> None:
        """Close the connection pool (idempotent)."""
        self._closer()

    def __enter__(self) -> ReviewClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- error mapping -------------------------------------------------------------------
    def call(self, what: str, fn: Callable[[], Any]) -> Any:
        """Run one SDK call; any failure becomes one ``UserError`` line naming the URL and the step."""
        from label_studio_sdk.core.api_error import ApiError

        try:
            return fn()
        except ApiError as exc:
            raise UserError(self._api_message(what, exc)) from None
        except httpx.TimeoutException:
            raise UserError(f"Label Studio at {self.url} timed out while trying to {what}; is it overloaded? retry, it is safe") from None
        except httpx.TransportError as exc:
            raise UserError(
                f"cannot reach Label Studio at {self.url} ({type(exc).__name__}) while trying to {what}; "
                "start it with `mmcurate review serve WORKDIR` or pass the right --url"
            ) from None

    def _api_message(self, what: str, exc: Any) -> str:
        status = getattr(exc, "status_code", None)
        body = exc.body
        detail = body.get("detail") or body.get("validation_errors") or body if isinstance(body, dict) else body
        detail = " ".join(str(detail).split())[:300].replace(self._token, "***")
        if status == 401:
            return f"Label Studio at {self.url} rejected the API token (401: {detail}); set LABEL_STUDIO_API_KEY to a valid token of that server"
        if status == 403:
            return f"Label Studio at {self.url} refused to {what} (403: {detail}); the token's user lacks permission"
        return f"Label Studio at {self.url} answered {status} when trying to {what}: {detail}"

    # -- projects ------------------------------------------------------------------------
    def find_project(self, title: str) -> Any | None:
        """The project titled exactly ``title`` (the server's title filter is a substring match)."""
        found = self.call("list projects", lambda: [p for p in self.ls.projects.list(title=title) if p.title == title])
        if len(found) > 1:
            raise UserError(f"Label Studio at {self.url} has {len(found)} projects titled {title!r} (ids {[p.id for p in found]}); rename all but one or pass --project")
        return found[0] if found else None

    def ensure_project(self, title: str, config: str | None = None, *, reviewers: int = 3) -> int:
        """Id of the review project ``title``, created with our config when missing.

        A same-titled project whose config is not ours (or ours for another taxonomy) is an error,
        never silently reused: its annotations would not parse as review verdicts.
        """
        config = config or labeling_config()
        project = self.find_project(title)
        if project is None:
            created = self.call(
                f"create project {title!r}",
                lambda: self.ls.projects.create(
                    title=title,
                    label_config=config,
                    description="mmcurate human review (MMStar recipe)",
                    # each task goes to `reviewers` different accounts (Label Studio's overlap), the
                    # suggested dimension is pre-filled from our predictions, an empty submit is refused
                    maximum_annotations=reviewers,
                    overlap_cohort_percentage=100,
                    model_version=PREDICTION_MODEL,
                    show_collab_predictions=True,
                    enable_empty_annotation=False,
                    request_options=NO_RETRY,
                ),
            )
            return int(created.id)
        stored = self.call(f"read project {project.id}", lambda: self.ls.projects.get(id=project.id)).label_config or ""
        if not is_ours(stored):
            raise UserError(f"project {title!r} (id {project.id}) at {self.url} is not an mmcurate review project (its labeling config lacks our controls); pass --project with another name")
        if stored.strip() != config.strip():
            raise UserError(f"project {title!r} (id {project.id}) at {self.url} was made for a different taxonomy or config version; pass --project with a new name")
        return int(project.id)

    def project_id(self, title: str) -> int:
        """Id of an existing review project (for status/pull: never creates one)."""
        project = self.find_project(title)
        if project is None:
            raise UserError(f"no project titled {title!r} at {self.url}; run `mmcurate review push WORKDIR` first")
        stored = self.call(f"read project {project.id}", lambda: self.ls.projects.get(id=project.id)).label_config or ""
        if not is_ours(stored):
            raise UserError(f"project {title!r} (id {project.id}) at {self.url} is not an mmcurate review project; pass --project")
        return int(project.id)

    def ensure_local_storage(self, project_id: int, path: Path) -> None:
        """Register ``path`` (under the server's local-files root) as the project's image storage."""
        path = str(Path(path).resolve())
        existing = self.call("list local storages", lambda: self.ls.import_storage.local.list(project=project_id))
        if any(getattr(s, "path", None) == path for s in existing):
            return
        self.call(
            f"register local-file storage {path}",
            lambda: self.ls.import_storage.local.create(project=project_id, path=path, use_blob_urls=False, title="mmcurate images", request_options=NO_RETRY),
        )

    # -- tasks ---------------------------------------------------------------------------
    def existing_item_ids(self, project_id: int) -> dict[str, int]:
        """``{item_id: task id}`` of every task in the project (duplicates: the first id wins)."""

        def fetch() -> dict[str, int]:
            ids: dict[str, int] = {}
            for task in self.ls.tasks.list(project=project_id, fields="task_only", page_size=500, resolve_uri=False):
                item_id = (task.data or {}).get("item_id")
                if item_id is not None and item_id not in ids:
                    ids[item_id] = int(task.id)
            return ids

        return self.call("list the project's tasks", fetch)

    def import_batch(self, project_id: int, tasks: list[dict[str, Any]]) -> None:
        """One import POST, never retried by the SDK (a retry after a lost reply duplicates tasks)."""
        self.call(
            f"import {len(tasks)} tasks",
            lambda: self.ls.projects.import_tasks(id=project_id, request=tasks, return_task_ids=False, request_options={**NO_RETRY, "timeout": self.import_timeout}),
        )

    def push(
        self,
        project_id: int,
        items: pl.DataFrame,
        *,
        image_mode: ImageMode = "auto",
        root: str | Path | None = None,
        batch_tasks: int = BATCH_TASKS,
        batch_bytes: int = BATCH_BYTES,
        on_batch: Callable[[int, int], None] | None = None,
    ) -> PushResult:
        """Import every row of ``items`` whose ``item_id`` the project lacks; idempotent.

        ``on_batch(done, todo)`` is called after each acknowledged batch (progress bars, tests).
        If the server fails mid-push, the ``UserError`` says so; pushing again is safe: it
        re-reads what the server holds and sends only the rest.
        """
        if items.height and items["item_id"].is_duplicated().any():
            dup = items.filter(pl.col("item_id").is_duplicated())["item_id"][0]
            raise UserError(f"item_id {dup!r} occurs more than once in the table to push")
        existing = self.existing_item_ids(project_id)
        todo = items.filter(~pl.col("item_id").is_in(list(existing)))
        plan = plan_images(todo, image_mode, root)
        if plan.mode == "local":
            plan.image_dir.mkdir(parents=True, exist_ok=True)
            self.ensure_local_storage(project_id, plan.image_dir)
        result = PushResult(project_id, items.height, items.height - todo.height, 0, image_mode=plan.mode)
        for batch in _batches(iter_tasks(todo, plan), batch_tasks, batch_bytes):
            try:
                self.import_batch(project_id, batch)
            except UserError as exc:
                raise UserError(f"push stopped after {result.pushed} of {todo.height} new tasks: {exc} -- run push again, it imports only what is missing") from None
            result.pushed += len(batch)
            result.batches += 1
            if on_batch is not None:
                on_batch(result.pushed, todo.height)
        return result

    # -- reading annotations -------------------------------------------------------------
    def export(self, project_id: int) -> list[dict[str, Any]]:
        """Every task of the project with its ``data``, ``annotations`` and ``predictions``."""

        def fetch() -> list[dict[str, Any]]:
            chunks = self.ls.projects.exports.download_sync(id=project_id, export_type="JSON", download_all_tasks=True)
            return json.loads(b"".join(chunks))

        return self.call("export annotations", fetch)

    def user_emails(self) -> dict[int, str]:
        """``{user id: email}`` (annotations name reviewers by id)."""
        users = self.call("list users", lambda: list(self.ls.users.list()))
        return {int(u.id): (u.email or u.username or f"user {u.id}") for u in users}

    def status(self, project_id: int, title: str, tasks: list[dict[str, Any]] | None = None, *, min_reviewers: int = 3) -> ProjectStatus:
        """Per-reviewer progress and the items still short of ``min_reviewers`` distinct reviewers."""
        tasks = self.export(project_id) if tasks is None else tasks
        emails = self.user_emails()
        per: Counter[str] = Counter()
        by_item: dict[str, set[str]] = {}
        annotated = n_ann = 0
        for task in tasks:
            done = [a for a in task.get("annotations") or [] if not a.get("was_cancelled")]
            annotated += bool(done)
            n_ann += len(done)
            who = {reviewer_name(a.get("completed_by"), emails) for a in done}
            item_id = (task.get("data") or {}).get("item_id")
            if item_id is not None:
                by_item.setdefault(item_id, set()).update(who)
            for name in who:
                per[name] += 1
        short = {i: sorted(w) for i, w in sorted(by_item.items()) if len(w) < min_reviewers}
        return ProjectStatus(project_id, title, len(tasks), annotated, n_ann, dict(sorted(per.items())), min_reviewers, list(short), short)


def reviewer_name(completed_by: Any, emails: dict[int, str]) -> str:
    """A reviewer's email from an annotation's ``completed_by`` (an id, or a user dict)."""
    if isinstance(completed_by, dict):
        return completed_by.get("email") or emails.get(int(completed_by.get("id", -1)), f"user {completed_by.get('id')}")
    if completed_by is None:
        return "unknown"
    return emails.get(int(completed_by), f"user {completed_by}")


def _batches(tasks: Iterable[dict[str, Any]], max_tasks: int, max_bytes: int) -> Iterable[list[dict[str, Any]]]:
    batch: list[dict[str, Any]] = []
    size = 0
    for task in tasks:
        n = task_size(task)
        if batch and (len(batch) >= max_tasks or size + n > max_bytes):
            yield batch
            batch, size = [], 0
        batch.append(task)
        size += n
    if batch:
        yield batch


# -- workspace-level operations (what the CLI calls) ---------------------------------------
def resolve_url(workdir: str | Path, url: str | None) -> str:
    """``--url`` when given, else the server ``review serve`` started for this workspace."""
    from annotation.server import DEFAULT_PORT, HOST, recorded_url

    return url or recorded_url(workdir) or f"http://{HOST}:{DEFAULT_PORT}"


def connect(workdir: str | Path, url: str | None = None) -> ReviewClient:
    """A client for the workspace's server (or ``url``), token from env or the workspace secret."""
    from annotation.server import resolve_token

    return ReviewClient(resolve_url(workdir, url), resolve_token(workdir))


@workspace_command("review push")
def push_workspace(
    workdir: str | Path,
    client: ReviewClient,
    project: str = DEFAULT_PROJECT,
    *,
    image_mode: ImageMode = "auto",
    batch_tasks: int = BATCH_TASKS,
    on_batch: Callable[[int, int], None] | None = None,
    reviewers: int = 3,
    stage: str | None = None,
) -> PushResult:
    """Push the workspace's review candidates (newest of screened/items) into ``project``.

    ``reviewers``: how many different accounts each task goes to (set when the project is created).
    Pushing again imports only the item_ids the project lacks, so an item ``balance --replace``
    swapped in is pushed alone; the tasks already there (and their verdicts) are untouched.
    """
    from annotation.tasks import select_for_review
    from curate.workspace import Workspace

    ws = Workspace(workdir)
    _, items = select_for_review(ws, stage)
    pid = client.ensure_project(project, reviewers=reviewers)
    return client.push(pid, items, image_mode=image_mode, root=ws.root, batch_tasks=batch_tasks, on_batch=on_batch)
