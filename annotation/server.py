"""Start and stop a local Label Studio for one workspace.

Why a server of our own: MMStar's human review needs a labeling UI several reviewers can open,
and Label Studio is that UI. We run it bound to 127.0.0.1 only, with its data dir inside the
workspace (``WORKDIR/.label_studio/data``) so the review lives and moves with the workspace, and
with an admin password and API token we generate and keep in ``WORKDIR/.label_studio/secret.json``
(mode 0600). The token is never printed or logged: commands read it from that file (or from
``LABEL_STUDIO_API_KEY`` for a team server).

Facts this module relies on (measured, see ../shared/README.md): the legacy token must be enabled
at the FIRST start of a data dir; a busy port makes Label Studio silently move to port+1, so we
refuse a busy port ourselves; ``GET /health`` answers 200 once it serves; a fresh data dir takes
~40 s (migrations), a copy of an initialised one ~4 s.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from curate.errors import UserError

STATE_DIR = ".label_studio"
SECRET_FILE = "secret.json"
SERVER_FILE = "server.json"
LOG_FILE = "server.log"
DEFAULT_PORT = 8080
HOST = "127.0.0.1"
TOKEN_ENV = "LABEL_STUDIO_API_KEY"


@dataclass(frozen=True)
class Secret:
    """The admin account of a workspace's local server. ``repr`` hides the password and token."""

    username: str
    password: str
    token: str

    def __repr__(self) -> str:
        return f"Secret(username={self.username!r}, password=***, token=***)"


def state_dir(workdir: str | Path) -> Path:
    return Path(workdir) / STATE_DIR


def data_dir(workdir: str | Path) -> Path:
    return state_dir(workdir) / "data"


def secret_path(workdir: str | Path) -> Path:
    return state_dir(workdir) / SECRET_FILE


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable by the owner only (created 0600, never briefly wider)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, text.encode("utf-8"))
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def load_secret(workdir: str | Path) -> Secret | None:
    path = secret_path(workdir)
    if not path.is_file():
        return None
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        return Secret(raw["username"], raw["password"], raw["token"])
    except (OSError, ValueError, KeyError) as exc:
        raise UserError(f"{path}: unreadable Label Studio secret file ({type(exc).__name__}); delete it and the data dir beside it to start over") from exc


def load_or_create_secret(workdir: str | Path) -> Secret:
    """The workspace's admin account, generated on first use: random password, 40-hex token."""
    secret = load_secret(workdir)
    if secret is None:
        secret = Secret("admin@mmcurate.local", secrets.token_urlsafe(18), secrets.token_hex(20))
        _write_private(secret_path(workdir), json.dumps(secret.__dict__))
    return secret


def resolve_token(workdir: str | Path | None) -> str:
    """The API token: ``LABEL_STUDIO_API_KEY`` when set (a team server), else the workspace secret."""
    token = os.environ.get(TOKEN_ENV, "").strip()
    if token:
        return token
    secret = load_secret(workdir) if workdir is not None else None
    if secret is None:
        raise UserError(
            f"no Label Studio API token: set {TOKEN_ENV} (team server) or run `mmcurate review serve {workdir}` first"
        )
    return secret.token


def port_is_free(port: int, host: str = HOST) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # SO_REUSEADDR like the server itself: old connections in TIME_WAIT don't make a port busy,
        # a listening server does.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = HOST) -> int:
    """A port the OS says is free now (tiny race window; ``start`` re-checks and refuses a busy port)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def label_studio_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("label-studio")
    except PackageNotFoundError as exc:
        raise UserError("the Label Studio server is not installed: pip install 'mmcurate[server]' (or pass --url to a team server)") from exc


def _executable() -> str:
    exe = Path(sys.executable).with_name("label-studio")
    if exe.is_file():
        return str(exe)
    found = shutil.which("label-studio")
    if not found:
        raise UserError("`label-studio` command not found: pip install 'mmcurate[server]' (or pass --url to a team server)")
    return found


@dataclass
class LocalServer:
    """A running local Label Studio: its process, URL and workspace."""

    workdir: Path
    port: int
    process: subprocess.Popen

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout: float = 15.0) -> None:
        stop_process(self.process, timeout=timeout)
        info = state_dir(self.workdir) / SERVER_FILE
        if info.is_file():
            try:
                if json.loads(info.read_text()).get("pid") == self.process.pid:
                    info.unlink()
            except (OSError, ValueError):
                pass

    def __enter__(self) -> LocalServer:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def stop_process(process: subprocess.Popen, timeout: float = 15.0) -> None:
    """SIGTERM the server's process group (it exits in ~0.1 s), SIGKILL if it lingers."""
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait(timeout=timeout)


def server_env(workdir: Path, secret: Secret) -> dict[str, str]:
    """Environment for ``label-studio start``: everything local, legacy token on, no phoning home."""
    root = workdir.resolve()
    env = dict(os.environ)
    env.pop(TOKEN_ENV, None)
    env.update(
        {
            "LABEL_STUDIO_BASE_DATA_DIR": str(data_dir(root)),
            "LABEL_STUDIO_USERNAME": secret.username,
            "LABEL_STUDIO_PASSWORD": secret.password,
            "LABEL_STUDIO_USER_TOKEN": secret.token,
            "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",
            "LABEL_STUDIO_LATEST_VERSION_CHECK": "false",
            "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true",
            "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(root),
            "SENTRY_DSN": "",
            "FRONTEND_SENTRY_DSN": "",
            "COLLECT_ANALYTICS": "false",
        }
    )
    return env


def start_server(
    workdir: str | Path,
    port: int = DEFAULT_PORT,
    *,
    template: str | Path | None = None,
    timeout: float = 180.0,
) -> LocalServer:
    """Start Label Studio for ``workdir`` on 127.0.0.1:``port`` and wait until ``/health`` answers.

    ``template``: a workspace whose ``.label_studio`` (initialised data dir + its secret) is copied
    when this workspace has none yet -- a started copy is ready in seconds instead of ~40 s.
    Raises ``UserError`` when the port is busy, the server exits, or it is not ready in ``timeout``.
    """
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    label_studio_version()
    running = recorded_url(workdir)
    if running:
        raise UserError(f"{workdir}: Label Studio already runs for this workspace at {running} (stop it with `mmcurate review stop {workdir}`)")
    if not port_is_free(port):
        raise UserError(f"port {port} on {HOST} is busy (Label Studio would silently move to another port); pass --port with a free one")
    if template is not None and not data_dir(workdir).exists():
        src = state_dir(template)
        if not (src / "data").is_dir() or not (src / SECRET_FILE).is_file():
            raise UserError(f"{src}: not an initialised Label Studio template (needs data/ and {SECRET_FILE})")
        shutil.copytree(src, state_dir(workdir), dirs_exist_ok=True, ignore=shutil.ignore_patterns(SERVER_FILE, LOG_FILE))
        os.chmod(secret_path(workdir), 0o600)
    secret = load_or_create_secret(workdir)
    data_dir(workdir).mkdir(parents=True, exist_ok=True)
    log = open(state_dir(workdir) / LOG_FILE, "ab")
    try:
        process = subprocess.Popen(
            [_executable(), "start", "--no-browser", "--internal-host", HOST, "--port", str(port)],
            env=server_env(workdir, secret),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=str(state_dir(workdir)),
        )
    finally:
        log.close()
    server = LocalServer(workdir, port, process)
    try:
        wait_ready(server, timeout=timeout)
    except BaseException:
        server.stop()
        raise
    _write_private(state_dir(workdir) / SERVER_FILE, json.dumps({"url": server.url, "port": port, "pid": process.pid}))
    return server


def wait_ready(server: LocalServer, timeout: float) -> None:
    """Poll ``/health`` until 200; bounded by ``timeout`` and by the process staying alive."""
    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=2.0) as http:
        while time.monotonic() < deadline:
            if not server.alive():
                raise UserError(
                    f"Label Studio exited with code {server.process.returncode} before it was ready; see {state_dir(server.workdir) / LOG_FILE}"
                )
            try:
                if http.get(f"{server.url}/health").status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
    raise UserError(f"Label Studio did not answer {server.url}/health within {timeout:.0f} s; see {state_dir(server.workdir) / LOG_FILE}")


def recorded_url(workdir: str | Path) -> str | None:
    """URL of the server ``serve`` started for this workspace, when its process still runs."""
    info = state_dir(workdir) / SERVER_FILE
    if not info.is_file():
        return None
    try:
        raw = json.loads(info.read_text())
        os.kill(int(raw["pid"]), 0)
        return str(raw["url"])
    except (OSError, ValueError, KeyError):
        return None


def stop_recorded(workdir: str | Path, timeout: float = 15.0) -> bool:
    """Stop the server ``serve --detach`` left running for this workspace. True when one was stopped."""
    info = state_dir(workdir) / SERVER_FILE
    if not info.is_file():
        return False
    try:
        pid = int(json.loads(info.read_text())["pid"])
    except (OSError, ValueError, KeyError):
        info.unlink(missing_ok=True)
        return False
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        info.unlink(missing_ok=True)
        return False
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    info.unlink(missing_ok=True)
    return True


_ADD_REVIEWERS = """
import json, sys
from organizations.models import Organization
from users.models import User
org = Organization.objects.first()
for email, password in json.loads(sys.stdin.read()).items():
    user = User.objects.filter(email=email).first() or User.objects.create_user(email=email, username=email, password=password)
    user.set_password(password)
    user.save()
    org.add_user(user)
    if user.active_organization_id is None:
        user.active_organization = org
        user.save(update_fields=["active_organization"])
"""


REVIEWERS_FILE = "reviewers.json"


def save_reviewer_logins(workdir: str | Path, emails: list[str]) -> Path:
    """Give each new email a random password in ``.label_studio/reviewers.json`` (0600); keep existing ones."""
    path = state_dir(workdir) / REVIEWERS_FILE
    logins = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    for email in emails:
        logins.setdefault(email, secrets.token_urlsafe(12))
    _write_private(path, json.dumps(logins, indent=2))
    return path


def add_reviewers(workdir: str | Path, accounts: dict[str, str], timeout: float = 120.0) -> None:
    """Create (or reset the password of) one ordinary login per reviewer in the workspace's server.

    Why not the admin's account for everyone: MMStar's rule needs three *independent* verdicts,
    and Label Studio tells reviewers apart only by the account that submitted. Label Studio has
    no API to set a user's password, so this runs its Django ``shell`` against the data dir (the
    server may keep running; sqlite serialises the writes). Passwords go through stdin, never argv.
    """
    workdir = Path(workdir).resolve()
    secret = load_secret(workdir)
    if secret is None or not data_dir(workdir).is_dir():
        raise UserError(f"{workdir}: no local Label Studio here; run `mmcurate review serve {workdir}` first")
    import label_studio

    manage = Path(label_studio.__file__).with_name("manage.py")
    env = server_env(workdir, secret)
    env["PYTHONPATH"] = os.pathsep.join([str(manage.parent), env.get("PYTHONPATH", "")])
    done = subprocess.run(
        [sys.executable, str(manage), "shell", "-c", _ADD_REVIEWERS],
        input=json.dumps(accounts),
        env=env,
        cwd=str(state_dir(workdir)),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if done.returncode != 0:
        tail = " ".join(done.stderr.strip().splitlines()[-1:])[:300]
        raise UserError(f"could not create reviewer accounts in {data_dir(workdir)}: {tail}")
