"""The UI cannot be turned against its host (issue 19), over real HTTP: strict request parsing with
socket timeouts, type-checked fields (hypothesis drives them), names that are never paths, reads that
never follow a link out of the root, dataset configs confined to it, a broken run folder shown as
unreadable, and Stop that signals only the run's own trilora process."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trilora.run_folder import LOCK_NAME, FolderLock, holder_process, process_start
from trilora.ui import server as ui_server

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)


def raw(ui, request: bytes, timeout: float = 60) -> bytes:
    """Send bytes as they are; the whole answer (the server closes the connection)."""
    host, port = ui.base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as connection:
        connection.sendall(request)
        chunks = []
        while chunk := connection.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def post_head(ui, length: str) -> bytes:
    return (f"POST /api/stop HTTP/1.1\r\nHost: x\r\nX-Trilora-Token: {ui.token}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n").encode()  # fmt: skip


def test_bad_content_lengths_are_answered_at_once(ui):
    for length in ("-1", "abc", "1e3", "+5", "٣", "0x10"):
        answer = raw(ui, post_head(ui, length) + b"{}")
        assert answer.startswith(b"HTTP/1.0 400") or answer.startswith(b"HTTP/1.1 400"), (length, answer[:80])
    answer = raw(ui, post_head(ui, "99999999") + b"{}")
    assert b" 413 " in answer.split(b"\r\n")[0]


def test_a_body_shorter_than_announced_times_out_not_forever(ui, monkeypatch):
    monkeypatch.setattr(ui_server.Handler, "timeout", 1)  # the class attribute each connection reads
    started = time.monotonic()
    answer = raw(ui, post_head(ui, "100") + b'{"name"', timeout=30)
    assert time.monotonic() - started < 20
    assert b" 408 " in answer.split(b"\r\n")[0] or answer == b""


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.dictionaries(st.sampled_from(["command", "settings", "name", "image", "text"]), JSON_VALUES))
def test_any_json_body_gets_an_answer_that_is_not_a_500(ui, body):
    for path in ("/api/jobs", "/api/stop", "/api/resume", "/api/caption-text", "/api/dry-run"):
        if path == "/api/dry-run" and isinstance(body.get("settings", {}), dict):
            continue  # a real estimate runs a subprocess: covered by test_api
        if path == "/api/jobs" and body.get("command") in (
            "train",
            "caption",
            "generate",
            "evaluate",
            "compare",
        ):
            body = body | {"settings": "not an object"}  # never start a real job from random input
        status, answer = ui.json(path, body)
        assert status in (200, 400, 403), (path, body, answer)
        assert isinstance(answer, dict)


def test_names_and_dataset_configs_stay_in_the_workspace(ui, tmp_path):
    status, answer = ui.json(
        "/api/jobs", {"command": "train", "settings": {"export": {"name": "../../../outside/pwn"}}}
    )
    assert status == 400 and "a name is a file name" in answer["error"]
    status, answer = ui.json("/api/jobs", {"command": "train", "settings": {}, "name": 123})
    assert status == 400 and "name must be text" in answer["error"]
    outside = tmp_path / "outside-images"
    outside.mkdir()
    config = ui.root / "data" / "escape.toml"
    config.write_text(f'[[subsets]]\nfolder = "{outside}"\n')
    status, answer = ui.json(
        "/api/jobs", {"command": "train", "settings": {"data": {"dataset_config": "data/escape.toml"}}}
    )
    assert status == 403 and "outside the workspace" in answer["error"]
    assert not any((ui.root / "runs").glob("*")) or all(p.name != "pwn" for p in (ui.root / "runs").iterdir())


def test_a_caption_linked_out_of_the_root_is_never_read_back(ui, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("the host's secret")
    image = sorted((ui.root / "data" / "onion").glob("*.png"))[0]
    caption = image.with_suffix(".txt")
    kept = caption.read_text()
    caption.unlink()
    caption.symlink_to(secret)
    try:
        status, answer = ui.json("/api/data?folder=data/onion")
        assert status == 200 and "the host's secret" not in json.dumps(answer)
    finally:
        caption.unlink()
        caption.write_text(kept)


def test_a_broken_run_folder_is_listed_as_unreadable(ui):
    for name, config in (
        ("broken-a", "[1, 2]"),
        ("broken-b", '{"adapter": "x", "train": 5}'),
        ("broken-c", "{"),
    ):
        folder = ui.root / "runs" / name
        folder.mkdir(parents=True)
        (folder / "config.json").write_text(config)
        (folder / "summary.json").write_text('{"exported": 7}')
    status, runs = ui.json("/api/runs")
    assert status == 200
    states = {run["name"]: run["state"] for run in runs}
    assert {"broken-a", "broken-b", "broken-c"} <= set(states)
    assert all(states[name] in ("unreadable", "failed") for name in ("broken-a", "broken-b", "broken-c"))


def test_stop_signals_only_the_runs_own_trilora_process(ui):
    folder = ui.root / "runs" / "foreign"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        for record in ({"pid": sleeper.pid, "host": "another-host"}, {"pid": sleeper.pid, "host": socket.gethostname()},
                       {"pid": 1, "host": socket.gethostname()}, {"pid": -1}, {"pid": "1"}):  # fmt: skip
            (folder / LOCK_NAME).write_text(json.dumps(record))
            assert holder_process(folder) is None  # no lock held, or not a trilora process of this host
            status, _ = ui.json("/api/stop", {"name": "foreign"})
            assert status == 400
        lock = FolderLock(folder, "train")
        lock.acquire()  # held, as by a live run; the record then names an unrelated process of this host
        try:
            for record in ({"pid": sleeper.pid, "host": socket.gethostname()},
                           {"pid": sleeper.pid, "host": socket.gethostname(), "process_start": "1"},
                           {"pid": sleeper.pid, "host": socket.gethostname(),
                            "process_start": process_start(sleeper.pid)}):  # fmt: skip
                os.ftruncate(lock.handle, 0)
                os.pwrite(lock.handle, json.dumps(record).encode(), 0)
                assert holder_process(folder) is None  # not started then, or not trilora
                assert ui.json("/api/stop", {"name": "foreign"})[0] == 400
        finally:
            lock.release()
        assert sleeper.poll() is None  # never signalled
    finally:
        sleeper.kill()
        sleeper.wait()


SETTINGS = st.dictionaries(
    st.sampled_from(["model", "data", "adapter", "train", "export", "sampling", "generate", "evaluate", "caption", "x"]),
    st.dictionaries(st.sampled_from(["base", "data", "rank", "lr", "name", "prompt", "lora", "steps", "dataset_config",
                                     "resolution", "strengths", "seed", "output", "model", "zzz"]), JSON_VALUES,
                    max_size=3) | JSON_VALUES,
    max_size=3,
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(command=st.sampled_from(["train", "caption", "generate", "evaluate", "compare"]), settings=SETTINGS)
def test_any_form_settings_are_resolved_or_refused_in_one_line(tmp_path_factory, command, settings):
    """The API's check of a job's settings (what a POST to /api/jobs runs before starting anything)."""
    from trilora.errors import UserError, one_line
    from trilora.ui import api

    root = tmp_path_factory.getbasetemp() / "resolve-root"
    root.mkdir(exist_ok=True)
    workspace = api.Workspace(root, None, (), {})
    try:
        resolved = api.resolved(workspace, command, settings)
    except UserError as error:
        assert "\n" not in one_line(error)  # what the page gets (server.py answers with it)
        return
    assert isinstance(resolved, dict)


def test_ctrl_c_and_sigterm_stop_the_ui_at_once_with_a_browser_connection_open(tmp_path):
    """Also where it was started with SIGINT ignored, as a shell script's `trilora ui &` is: Python
    would leave Ctrl-C ignored and the UI would run on."""
    for number in (signal.SIGINT, signal.SIGTERM):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        process = subprocess.Popen([sys.executable, "-m", "trilora", "ui", "--root", str(tmp_path), "--port", str(port)],
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
                                   preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))  # fmt: skip
        try:
            lines = [process.stdout.readline()]
            while lines[-1] and "#token=" not in lines[-1]:
                lines.append(process.stdout.readline())
            assert lines[-1], "".join(lines)
            with socket.create_connection(("127.0.0.1", port)):  # a browser's idle, preconnected socket
                os.killpg(process.pid, number)
                assert process.wait(timeout=10) == 0
        finally:
            process.kill()
            process.wait()
