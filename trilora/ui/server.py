"""The HTTP server: the standard library's ThreadingHTTPServer, the page from static/, the API
under /api/, the workspace's files under /files/. Every /api/ and /files/ request carries the
token (header X-Trilora-Token, or ?token= for links); the page reads it from its address's #fragment,
which browsers never send to a server."""

import ipaddress
import json
import logging
import mimetypes
import os
import secrets
import signal
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from trilora.config import UIConfig, to_dict
from trilora.errors import UserError, one_line
from trilora.run_folder import prepare_folder
from trilora.toy.evaluate import adapter_dataset
from trilora.ui import api
from trilora.ui.jobs import Jobs
from trilora.ui.paths import PRIVATE, OutsideRoot, inside

log = logging.getLogger("trilora")
STATIC = Path(__file__).parent / "static"
MAX_BODY = 1 << 20  # JSON requests: settings and captions, never files
MAX_UPLOAD = 32 << 20  # one uploaded image


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def prepare_workspace(root: Path) -> dict:
    """A new root gets the demo's data (onion-domed renders, captioned) and the demo's settings as a
    preset, so that a fresh clone can train in the UI at once, on a CPU."""
    # here, not at the top: diffusers (~3 s) and transformers (~1 s), which importing this module does not need
    from trilora.demo import TRAIN_IMAGES, VAL_IMAGES, demo_config

    # here, not at the top: diffusers (~3 s) and transformers (~1 s), which importing this module does not need
    from trilora.toy.base import toy_base_path

    data, val = root / "data" / "onion", root / "data" / "onion-val"
    if not data.exists():
        log.info("ui: rendering the toy world's demo data into %s", root / "data")
        adapter_dataset(data, TRAIN_IMAGES, seed=0)
        adapter_dataset(val, VAL_IMAGES, seed=1)
    preset = to_dict(demo_config(root, toy_base_path(), 400))
    preset.pop("output")
    preset["model"]["base"] = str(toy_base_path())
    preset["data"] |= {"data": "data/onion", "val_data": "data/onion-val"}
    preset["export"].pop("name", None)
    return {section: {k: v for k, v in values.items() if v is not None} for section, values in preset.items()}


def make_workspace(settings: UIConfig) -> api.Workspace:
    # here, not at the top: diffusers (~3 s) and transformers (~1 s), which importing this module does not need
    from trilora.toy.base import toy_base_path

    root = Path(settings.root).resolve()
    models = []  # checked before the workspace is made: a refused start leaves the disk as it was
    for folder in settings.models:
        path = Path(folder).expanduser().resolve()
        if not path.is_dir():
            raise UserError(
                f"--models {folder}: not a folder; name a folder of models (e.g. A1111's models/)"
            )
        if path == root or root in path.parents or path in root.parents:
            raise UserError(f"--models {folder} overlaps the workspace {root}: name a folder outside it")
        models.append(path)
    prepare_folder(root, "--root")  # a file, or a place that cannot be written: one line
    toy = prepare_workspace(root)
    configs = Path(__file__).resolve().parents[2] / "configs"
    return api.Workspace(root, Jobs(root, settings.max_jobs), (toy_base_path(), *models), api.presets(configs, toy),
                         tuple(models))  # fmt: skip


def text(data: dict, key: str, default: str | None = "") -> str | None:
    """A request field that must be text (or absent: `default`); anything else is a 400 naming it."""
    value = data.get(key, default)
    if value is not default and not isinstance(value, str):
        raise api.BadRequest(f"{key} must be text, got {type(value).__name__}")
    return value


def number(data: dict, key: str, default: int, low: int, high: int) -> int:
    value = data.get(key)
    if value in (None, ""):
        return default
    try:
        value = int(value)
    except (TypeError, ValueError):
        raise api.BadRequest(f"{key} must be a whole number, got {value!r}") from None
    if not low <= value <= high:
        raise api.BadRequest(f"{key} must be in {low}..{high}, got {value}")
    return value


def settings_of(data: dict) -> dict:
    value = data.get("settings", {})
    if not isinstance(value, dict):
        raise api.BadRequest(f"settings must be an object of sections, got {type(value).__name__}")
    return value


ROUTES_GET = {
    "/api/state": lambda ws, q: api.state(ws),
    "/api/ping": lambda ws, q: {"ok": True},
    "/api/models": lambda ws, q: api.models(ws),
    "/api/data": lambda ws, q: api.data(ws, text(q, "folder"), number(q, "resolution", 512, 8, 4096)),
    "/api/runs": lambda ws, q: api.runs(ws),
    "/api/run": lambda ws, q: api.run(ws, text(q, "name")),
    "/api/job": lambda ws, q: api.job(ws, number(q, "id", 0, 0, 2**31)),
    "/api/results": lambda ws, q: api.results(ws),
}
ROUTES_POST = {
    "/api/caption-text": lambda ws, b: api.save_caption(ws, text(b, "image"), text(b, "text")),
    "/api/jobs": lambda ws, b: api.start_job(ws, text(b, "command"), settings_of(b), text(b, "name", None)),
    "/api/dry-run": lambda ws, b: api.dry_run(ws, settings_of(b)),
    "/api/stop": lambda ws, b: api.stop(ws, text(b, "name")),
    "/api/resume": lambda ws, b: api.resume(ws, text(b, "name")),
    "/api/delete-run": lambda ws, b: api.delete_run(ws, text(b, "name")),
    "/api/rename-run": lambda ws, b: api.rename_run(ws, text(b, "name"), text(b, "to")),
    "/api/export-step": lambda ws, b: api.export_step(ws, text(b, "name"), number(b, "step", -1, 0, 10**9)),
}
TIMEOUT_S = 30  # a client that sends less than it announced, or nothing, is dropped after this


class Handler(BaseHTTPRequestHandler):
    server_version = "trilora-ui"
    timeout = TIMEOUT_S  # socketserver sets it on the connection: no handler waits for ever
    workspace: api.Workspace
    token: str

    def log_message(self, format, *args):  # noqa: A002 (the base class's name)
        log.debug("ui: " + format, *args)

    def send(self, status: int, body: bytes, kind: str, extra: dict | None = None) -> None:
        self.send_response(status)
        headers = {"Content-Type": kind, "Content-Length": str(len(body)), "Cache-Control": "no-store",
                   "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
                   "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self'"}  # fmt: skip
        for name, value in (headers | (extra or {})).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def send_json(self, status: int, payload) -> None:
        self.send(status, json.dumps(payload).encode(), "application/json")

    def authorised(self, query: dict) -> bool:
        given = self.headers.get("X-Trilora-Token") or query.get("token", "")
        return secrets.compare_digest(given.encode(), self.token.encode())

    def do_GET(self):  # noqa: N802 (the base class's name)
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        if url.path in ("/", "/index.html") or url.path.startswith("/static/"):
            return self.static(url.path)
        if url.path == "/favicon.ico":  # what browsers ask for by themselves, without the token
            return self.static("/static/favicon.svg")
        if not self.authorised(query):
            return self.send_json(
                HTTPStatus.FORBIDDEN,
                {"error": "a valid token is needed (see the address trilora ui printed)"},
            )
        if url.path.startswith("/files/"):
            return self.file(unquote(url.path.removeprefix("/files/")))
        self.answer(ROUTES_GET.get(url.path), query)

    def do_POST(self):  # noqa: N802
        url = urlsplit(self.path)
        if not self.authorised({}):  # never from the address: a link cannot change anything
            return self.send_json(HTTPStatus.FORBIDDEN, {"error": "a valid token is needed"})
        self.close_connection = True  # one request per connection: a bad body never poisons the next
        length = self.headers.get("Content-Length")
        if self.headers.get("Transfer-Encoding"):
            return self.send_json(
                HTTPStatus.NOT_IMPLEMENTED, {"error": "send the body with a Content-Length"}
            )
        if length is None or not length.isascii() or not length.isdigit():
            return self.send_json(HTTPStatus.LENGTH_REQUIRED if length is None else HTTPStatus.BAD_REQUEST,
                                  {"error": "a POST needs a Content-Length of digits"})  # fmt: skip
        limit = MAX_UPLOAD if url.path == "/api/upload" else MAX_BODY
        if int(length) > limit:
            return self.send_json(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                                  {"error": f"request too large (at most {limit >> 20} MiB)"})  # fmt: skip
        try:
            raw = self.rfile.read(int(length))
        except (TimeoutError, OSError):
            return self.send_json(HTTPStatus.REQUEST_TIMEOUT, {"error": "the body did not arrive in time"})
        if len(raw) != int(length):
            return self.send_json(
                HTTPStatus.BAD_REQUEST, {"error": "the body is shorter than its Content-Length"}
            )
        if url.path == "/api/upload":  # the body is the image itself; where it goes is in the address
            query = {k: v[-1] for k, v in parse_qs(url.query).items()}
            return self.answer(
                lambda ws, _: api.upload(ws, text(query, "folder"), text(query, "name"), raw), None
            )
        try:
            body = json.loads(raw or b"{}")
        except (ValueError, RecursionError):
            return self.send_json(HTTPStatus.BAD_REQUEST, {"error": "the request is not JSON"})
        if not isinstance(body, dict):
            return self.send_json(HTTPStatus.BAD_REQUEST, {"error": "the request must be a JSON object"})
        self.answer(ROUTES_POST.get(url.path), body)

    def answer(self, route, data) -> None:
        if route is None:
            return self.send_json(HTTPStatus.NOT_FOUND, {"error": f"no such request: {self.path}"})
        try:
            self.send_json(HTTPStatus.OK, route(self.workspace, data))
        except OutsideRoot as error:
            self.send_json(HTTPStatus.FORBIDDEN, {"error": one_line(error)})
        except (UserError, ValueError) as error:
            self.send_json(HTTPStatus.BAD_REQUEST, {"error": one_line(error)})
        except Exception as error:  # our bug: the page gets a line, the terminal the traceback
            log.exception("ui: %s failed", self.path)
            self.send_json(
                HTTPStatus.INTERNAL_SERVER_ERROR, {"error": f"internal error ({type(error).__name__})"}
            )

    def static(self, path: str) -> None:
        name = "index.html" if path in ("/", "/index.html") else path.removeprefix("/static/")
        file = (STATIC / name).resolve()
        if file.parent != STATIC.resolve() or not file.is_file():
            return self.send_json(HTTPStatus.NOT_FOUND, {"error": "not found"})
        self.send(
            HTTPStatus.OK, file.read_bytes(), mimetypes.guess_type(file.name)[0] or "application/octet-stream"
        )

    def file(self, relative: str) -> None:
        try:
            path = inside(self.workspace.root, relative)
        except OutsideRoot as error:
            return self.send_json(HTTPStatus.FORBIDDEN, {"error": str(error)})
        if not path.is_file():
            return self.send_json(HTTPStatus.NOT_FOUND, {"error": f"no file {relative}"})
        kind = mimetypes.guess_type(path.name)[0] or (
            "text/plain" if path.suffix == ".log" else "application/octet-stream"
        )
        kind += "; charset=utf-8" if kind == "text/plain" else ""
        extra = (
            {}
            if kind.startswith(("image/", "text/html", "text/plain"))
            else {"Content-Disposition": f'attachment; filename="{path.name}"'}
        )
        if kind == "text/html":  # a report: its own inline style and images, nothing from outside
            extra["Content-Security-Policy"] = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
        self.send(HTTPStatus.OK, path.read_bytes(), kind, extra)


def check_host(settings: UIConfig) -> str:
    """The token: given, or made. A non-loopback address needs one given (`auto` makes one)."""
    if not is_loopback(settings.host) and not settings.token:
        raise UserError(f"--host {settings.host} lets other machines in: give --token SECRET (or --token auto "
                        "to make one), or keep the default --host 127.0.0.1")  # fmt: skip
    if settings.token in (None, "auto"):
        return secrets.token_urlsafe(24)
    if len(settings.token) < 16:
        raise UserError("--token must be at least 16 characters")
    return settings.token


def kept_token(root: Path) -> str:
    """The workspace's own token (made once, readable by its owner only), so that a restarted UI
    still accepts the tabs that were open."""
    path = root / PRIVATE / "token"
    try:
        token = path.read_text(encoding="ascii").strip()
        if len(token) >= 16 and token.replace("-", "").replace("_", "").isalnum():
            return token
    except (OSError, UnicodeDecodeError):
        pass
    token = secrets.token_urlsafe(24)
    path.parent.mkdir(mode=0o700, exist_ok=True)
    descriptor = os.open(path.with_suffix(".new"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w", encoding="ascii") as file:
        file.write(token + "\n")
    os.replace(path.with_suffix(".new"), path)
    return token


def make_server(settings: UIConfig) -> ThreadingHTTPServer:
    settings.validate()
    token = check_host(settings)
    workspace = make_workspace(settings)
    if settings.token is None:  # the default: the workspace keeps it across restarts
        token = kept_token(workspace.root)
    handler = type("BoundHandler", (Handler,), {"workspace": workspace, "token": token})
    try:
        server = ThreadingHTTPServer((settings.host, settings.port), handler)
    except OSError as error:
        raise UserError(
            f"cannot listen on {settings.host}:{settings.port}: {error.strerror}; choose another --port"
        ) from None
    server.daemon_threads = True
    # Ctrl-C stops at once: server_close would otherwise wait for every connection's thread, and a
    # browser's idle connection (opened ahead, no request yet) holds one for TIMEOUT_S
    server.block_on_close = False
    server.token, server.workspace = token, workspace
    return server


def serve(settings: UIConfig, ready: threading.Event | None = None) -> None:
    server = make_server(settings)
    host, port = server.server_address[:2]
    previous = stop_on_signals()  # before the address is printed: whoever reads it may signal at once
    try:
        print(f"trilora ui: http://{host}:{port}/#token={server.token}  (workspace {server.workspace.root}; Ctrl-C stops "
              "the UI, not its jobs)", flush=True)  # fmt: skip
        if ready is not None:
            ready.set()
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        for number, handler in previous.items():
            signal.signal(number, handler)


def stop_on_signals() -> dict:
    """Ctrl-C and SIGTERM stop the server, also where it was started with SIGINT ignored (`trilora ui &`
    from a script, a service manager), which Python would otherwise leave ignored. Jobs run in
    sessions of their own, so neither signal reaches them. Returns the handlers it replaced."""

    def interrupt(_signum, _frame):
        raise KeyboardInterrupt

    if threading.current_thread() is not threading.main_thread():
        return {}
    return {number: signal.signal(number, interrupt) for number in (signal.SIGINT, signal.SIGTERM)}
