"""The UI's API through real HTTP requests: tokens, the root, jobs that are CLI runs."""

import http.client
import os
import subprocess
import sys
import time

import pytest

from trilora.config import COMMANDS
from trilora.ui.server import check_host


def wait(ui, job_id: int, seconds: float = 120) -> dict:
    end = time.time() + seconds
    while time.time() < end:
        _, job = ui.json(f"/api/job?id={job_id}")
        if job["state"] not in ("queued", "running"):
            return job
        time.sleep(0.3)
    raise AssertionError(f"job {job_id} did not finish: {job}")


def test_every_request_needs_the_token_and_a_link_cannot_change_anything(ui):
    assert ui.request("/")[0] == 200  # the page itself
    assert ui.json("/api/state", token=None)[0] == 403
    assert ui.json("/api/state", token="x" * 32)[0] == 403
    assert ui.json("/api/state")[0] == 200
    assert ui.request(f"/api/state?token={ui.token}", token=None)[0] == 200  # for <img src> links
    image = "data/onion/00000.png"
    assert (
        ui.request(f"/api/caption-text?token={ui.token}", {"image": image, "text": "x"}, token=None)[0] == 403
    )


def test_the_uis_own_folder_is_never_served_or_written(ui):
    assert ui.json("/files/.trilora-ui/token")[0] == 403
    assert ui.json("/files/data/../.trilora-ui/token")[0] == 403
    assert ui.json("/api/data?folder=.trilora-ui")[0] == 403
    status, answer = ui.json("/api/caption-text", {"image": ".trilora-ui/token.png", "text": "hi"})
    assert status == 403 and "own folder" in answer["error"]
    assert sorted(p.name for p in (ui.root / ".trilora-ui").iterdir()) == ["token"]


def test_a_given_token_is_used_as_given_and_not_kept(tmp_path):
    from trilora.config import UIConfig
    from trilora.ui.server import make_server

    server = make_server(UIConfig(root=str(tmp_path / "ws"), port=0, token="s" * 20))
    try:
        assert server.token == "s" * 20 and not (tmp_path / "ws" / ".trilora-ui").exists()
    finally:
        server.server_close()


def test_paths_outside_the_root_are_refused(ui, tmp_path):
    connection = http.client.HTTPConnection(ui.base.removeprefix("http://"))
    connection.request("GET", f"/files/../../../etc/passwd?token={ui.token}")
    assert connection.getresponse().status == 403
    assert ui.json("/api/data?folder=../..")[0] == 403
    assert ui.json("/files/%2Fetc%2Fpasswd")[0] == 403
    os.symlink(tmp_path, ui.root / "link-out")
    assert ui.json("/api/data?folder=link-out")[0] == 403
    status, answer = ui.json("/api/jobs", {"command": "train", "settings": {"data": {"data": str(tmp_path)}}})
    assert status == 403 and "outside the workspace" in answer["error"]
    status, answer = ui.json("/api/caption-text", {"image": "../../x.png", "text": "hi"})
    assert status == 403


def test_bad_settings_are_named(ui):
    status, answer = ui.json("/api/jobs", {"command": "train", "settings": {"train": {"stpes": 3}}})
    assert status == 400 and "train.stpes" in answer["error"]
    status, answer = ui.json("/api/jobs", {"command": "train", "settings": {"train": {"steps": "many"}}})
    assert status == 400 and "train.steps must be an integer" in answer["error"]
    status, answer = ui.json("/api/jobs", {"command": "train", "name": "../up", "settings": {}})
    assert status == 400 and "a name is letters" in answer["error"]
    assert ui.json("/api/jobs", {"command": "rm", "settings": {}})[0] == 400


def test_forms_come_from_the_config_tree(ui):
    _, state = ui.json("/api/state")
    keys = {f["key"] for f in state["forms"]["train"]}
    tree = {key for key, *_ in COMMANDS["train"].fields()}
    assert keys == tree - {"output", "checkpoint.resume", "checkpoint.overwrite"}
    assert "data/onion" in state["folders"] and "data/onion-val" in state["folders"]
    toy = next(iter(state["presets"].values()))
    assert toy["data"]["data"] == "data/onion" and toy["adapter"]["method"] == "trilora"


def test_captions_are_edited_and_written_by_a_caption_job(ui):
    _, data = ui.json("/api/data?folder=data/onion&resolution=32")
    assert len(data["items"]) == 30 and data["report"]["usable"] == 30
    first = data["items"][0]["image"]
    assert ui.json("/api/caption-text", {"image": first, "text": " <b>mine</b> "})[0] == 200
    assert (ui.root / first).with_suffix(".txt").read_text() == "<b>mine</b>\n"
    for path in list((ui.root / "data" / "onion").glob("0001*.txt")):
        path.unlink()
    _, job = ui.json(
        "/api/jobs",
        {"command": "caption", "settings": {"data": {"data": "data/onion"}, "caption": {"model": "toy"}}},
    )
    done = wait(ui, job["id"])
    assert done["state"] == "finished", done["log"]
    assert len(list((ui.root / "data" / "onion").glob("*.txt"))) == 30
    assert (ui.root / first).with_suffix(".txt").read_text() == "<b>mine</b>\n"  # kept
    assert 'model = "toy"' in (ui.root / done["folder"] / "job.toml").read_text()  # the job is a CLI run
    assert done["error"] is None

    # a job that fails says why in its own line, and its whole log opens in the page
    (ui.root / "data" / "empty").mkdir()
    _, job = ui.json(
        "/api/jobs",
        {"command": "caption", "settings": {"data": {"data": "data/empty"}, "caption": {"model": "toy"}}},
    )
    failed = wait(ui, job["id"])
    assert failed["state"] == "failed" and failed["error"].startswith("trilora: error: ")
    status, log = ui.request(f"/files/{failed['log_file']}")
    assert status == 200 and failed["error"] in log.decode()


@pytest.mark.slow  # a CLI subprocess that loads diffusers
def test_dry_run_estimate(ui):
    _, state = ui.json("/api/state")
    toy = next(iter(state["presets"].values()))
    status, answer = ui.json("/api/dry-run", {"settings": toy})
    assert status == 200 and "trainable" in answer["text"].lower()


def test_a_non_loopback_address_needs_a_token():
    from trilora.config import UIConfig
    from trilora.errors import UserError

    with pytest.raises(UserError, match="--token"):
        check_host(UIConfig(host="0.0.0.0"))
    assert len(check_host(UIConfig(host="0.0.0.0", token="auto"))) >= 16
    result = subprocess.run([sys.executable, "-m", "trilora", "ui", "--host", "0.0.0.0"], capture_output=True,
                            text=True, timeout=120)  # fmt: skip
    assert (
        result.returncode == 2 and result.stderr.count("trilora: error:") == 1 and "--token" in result.stderr
    )
    assert "Traceback" not in result.stderr


def test_training_jobs_wait_their_turn(tmp_path):
    """--max-jobs 1: a second training job is queued until the first ends; other jobs start at once."""
    from trilora.ui.jobs import Jobs

    jobs = Jobs(tmp_path, max_jobs=1, program=(sys.executable, "-c", "import time; time.sleep(1.5)"))
    first = jobs.submit("train", tmp_path / "a", {"train": {"steps": 1}})
    second = jobs.submit("train", tmp_path / "b", None)
    other = jobs.submit("generate", tmp_path / "c", None)
    assert (first.state, second.state, other.state) == ("running", "queued", "running")
    assert (tmp_path / "a" / "job.toml").read_text().count("steps = 1") == 1
    end = time.time() + 30
    while second.state != "finished" and time.time() < end:
        time.sleep(0.1)
    assert first.state == "finished" and second.state == "finished" and second.started >= first.started + 1.4


def test_runs_are_found_again_by_a_new_ui_on_the_same_root(ui):
    from trilora.config import UIConfig
    from trilora.ui.server import make_server

    (ui.root / "runs" / "old").mkdir(parents=True)
    (ui.root / "runs" / "old" / "config.json").write_text(
        '{"train": {"steps": 10}, "adapter": {"method": "lora"}}'
    )
    again = make_server(UIConfig(root=str(ui.root), port=0))
    try:
        from trilora.ui import api

        # the same token: the tabs open before the restart keep working
        assert again.token == ui.token and len(ui.token) >= 16
        assert (ui.root / ".trilora-ui" / "token").stat().st_mode & 0o077 == 0  # its owner's only

        found = {r["name"]: r for r in api.runs(again.workspace)}
        assert (
            found["old"]["state"] == "failed" and found["old"]["method"] == "lora"
        )  # no checkpoint, no summary
    finally:
        again.server_close()


@pytest.mark.parametrize(
    "body, said",
    [({"name": "old2", "step": 3}, "kept no adapter of step 3"), ({"name": "old2"}, "give the step"),
     ({"name": "old2", "step": "abc"}, "whole number"), ({"name": "../runs/old2", "step": 0}, ""),
     ({"name": "old2", "step": -4}, "")],
)  # fmt: skip
def test_exporting_a_step_refuses_what_is_not_a_kept_step_of_a_run(ui, body, said):
    run = ui.root / "runs" / "old2"
    run.mkdir(parents=True, exist_ok=True)
    (run / "config.json").write_text('{"train": {"steps": 10}, "adapter": {"method": "lora"}}')
    before = sorted(p.name for p in ui.root.rglob("*"))
    status, answer = ui.json("/api/export-step", body)
    assert status in (400, 403) and said in answer["error"] and "\n" not in answer["error"]
    assert sorted(p.name for p in ui.root.rglob("*")) == before


def post_bytes(ui, path: str, content: bytes) -> tuple[int, dict]:
    import json
    import urllib.error
    import urllib.request

    request = urllib.request.Request(ui.base + path, data=content, method="POST",
                                     headers={"X-Trilora-Token": ui.token, "Content-Type": "application/octet-stream"})  # fmt: skip
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def png(colour: str, size=(40, 30)) -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, "PNG")
    return buffer.getvalue()


def test_uploaded_images_land_in_a_named_dataset_and_nothing_is_replaced(ui):
    status, answer = post_bytes(ui, "/api/upload?folder=mine&name=a%20red.png", png("red"))
    assert status == 200 and answer == {"image": "data/mine/a red.png", "folder": "data/mine"}
    assert (ui.root / "data" / "mine" / "a red.png").read_bytes() == png("red")  # the bytes as sent
    assert "data/mine" in ui.json("/api/state")[1]["folders"]
    refused = {
        "folder=mine&name=a%20red.png": (png("blue"), "exists already"),  # never replaced
        "folder=..&name=x.png": (png("blue"), "a name is a file name"),
        "folder=mine&name=..%2Fx.png": (png("blue"), "a name is a file name"),
        "folder=.trilora-ui&name=x.png": (png("blue"), "starts with '.'"),
        "folder=mine&name=x.txt": (b"a caption", "not an image file name"),
        "folder=mine&name=fake.png": (b"<html>not a png</html>", "not an image Pillow can read"),
        "folder=mine&name=cut.png": (png("blue")[:60], "not an image Pillow can read"),
        "folder=mine&name=tiff.png": (tiff(), "holds a TIFF image"),
        "name=x.png": (png("blue"), "the dataset's name must be a non-empty file name"),
    }
    for query, (content, said) in refused.items():
        status, answer = post_bytes(ui, f"/api/upload?{query}", content)
        assert status == 400 and said in answer["error"], (query, answer)
    assert sorted(p.name for p in (ui.root / "data" / "mine").iterdir()) == ["a red.png"]
    assert (ui.root / "data" / "mine" / "a red.png").read_bytes() == png("red")
    # too large: answered from the headers, before the body is read
    connection = http.client.HTTPConnection(ui.base.removeprefix("http://"), timeout=30)
    connection.putrequest("POST", "/api/upload?folder=mine&name=big.png")
    for header, value in {"X-Trilora-Token": ui.token, "Content-Length": str(33 << 20)}.items():
        connection.putheader(header, value)
    connection.endheaders()
    assert connection.getresponse().status == 413 and not (ui.root / "data" / "mine" / "big.png").exists()


def tiff() -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, "TIFF")
    return buffer.getvalue()


def test_model_folders_are_offered_where_they_are_read_only(tmp_path):
    """`trilora ui --models DIR`: an A1111 models folder's checkpoints and LoRAs are listed and may be
    named by the model settings; data and outputs stay in the workspace; nothing there is served."""
    from trilora.config import UIConfig
    from trilora.errors import UserError
    from trilora.ui import api
    from trilora.ui.paths import OutsideRoot
    from trilora.ui.server import make_server

    models = tmp_path / "webui" / "models"
    for relative in ("Stable-diffusion/sd15.safetensors", "Stable-diffusion/sub/pony.safetensors", "Lora/style.safetensors",
                     "VAE/vae.pt", ".cache/hidden.safetensors", "Stable-diffusion/readme.txt"):  # fmt: skip
        (models / relative).parent.mkdir(parents=True, exist_ok=True)
        (models / relative).write_bytes(b"x" * 10)
    (models / "diffusers" / "sd21").mkdir(parents=True)
    (models / "diffusers" / "sd21" / "model_index.json").write_text("{}")
    (models / "diffusers" / "sd21" / "unet").mkdir()
    (models / "diffusers" / "sd21" / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(
        b"x"
    )  # a part, not listed
    before = {p: p.stat().st_mtime_ns for p in models.rglob("*")}
    server = make_server(UIConfig(root=str(tmp_path / "ws"), port=0, models=[str(models)]))
    try:
        ws = server.workspace
        found = {m["name"]: m["kind"] for m in api.models(ws)}
        assert found == {"Stable-diffusion/sd15.safetensors": "base model", "Stable-diffusion/sub/pony.safetensors": "base model",
                         "Lora/style.safetensors": "LoRA", "VAE/vae.pt": "model", "diffusers/sd21": "base model"}  # fmt: skip
        base = str(models / "Stable-diffusion" / "sd15.safetensors")
        settings = api.resolved(ws, "train", {"model": {"base": base}, "data": {"data": "data/onion"}})
        assert settings["model"]["base"] == base  # a model setting may name it, where it is
        lora = str(models / "Lora" / "style.safetensors")
        assert api.resolved(ws, "generate", {"generate": {"lora": [lora + ":0.7"]}})["generate"]["lora"] == [
            lora + ":0.7"
        ]
        for key, value in {"data": {"data": str(models / "Lora")}, "model": {"base": str(tmp_path)}}.items():
            try:
                api.resolved(ws, "train", {key: value})
                raise AssertionError(f"{key} outside the workspace was accepted")
            except OutsideRoot:
                pass
        assert {p: p.stat().st_mtime_ns for p in models.rglob("*")} == before  # read, never written
    finally:
        server.server_close()
    for bad, said in [([str(tmp_path / "absent")], "not a folder"), ([str(tmp_path / "new" / "data")], "overlaps the workspace"),
                      ([str(tmp_path)], "overlaps the workspace")]:  # fmt: skip
        (tmp_path / "new" / "data").mkdir(parents=True, exist_ok=True)
        try:
            make_server(UIConfig(root=str(tmp_path / "new"), port=0, models=bad)).server_close()
            raise AssertionError(f"--models {bad} was accepted")
        except UserError as error:
            assert said in str(error)
        assert sorted(p.name for p in (tmp_path / "new").rglob("*")) == ["data"]  # no workspace made


def test_a_run_moves_to_the_trash_only_when_it_does_not_train_and_its_name_is_free_again(ui):
    from trilora.run_folder import FolderLock

    folder = ui.root / "runs" / "gone"
    (folder / "samples" / "step-000000").mkdir(parents=True)
    (folder / "config.json").write_text('{"train": {"steps": 10}}')
    (folder / "samples" / "step-000000" / "00.png").write_bytes(png("red"))
    lock = FolderLock(folder, "train")
    lock.acquire()  # as a run training in a terminal holds it
    try:
        status, answer = ui.json("/api/delete-run", {"name": "gone"})
        assert status == 400 and "is training: stop it first" in answer["error"] and folder.is_dir()
    finally:
        lock.release()
    status, answer = ui.json("/api/delete-run", {"name": "gone"})
    assert status == 200 and answer["to"].startswith("trash/gone-")
    moved = ui.root / answer["to"]
    assert not folder.exists() and (moved / "samples" / "step-000000" / "00.png").read_bytes() == png("red")
    assert "gone" not in {r["name"] for r in ui.json("/api/runs")[1]}
    assert not any(f.startswith("trash") for f in ui.json("/api/state")[1]["folders"])  # not offered as data
    for name in ("gone", "../data", "", ".trilora-ui"):
        assert ui.json("/api/delete-run", {"name": name})[0] in (400, 403)
    assert (ui.root / "data" / "onion").is_dir()


def test_test_images_and_reports_are_kept_and_listed_newest_first(ui):
    """What the Test and Evaluate tabs list after a reload or a restart: each job folder's grid (or
    images), prompts and report, and a failed job's error with its log."""
    import os

    tests, reports = ui.root / "tests", ui.root / "reports"
    (tests / "grid-job").mkdir(parents=True)
    (tests / "grid-job" / "job.toml").write_text(
        '[generate]\nprompt = ["a", "b"]\nlora = ["x.safetensors:0.8"]\n'
    )
    for name in ("p00-c00-00.png", "grid.png"):
        (tests / "grid-job" / name).write_bytes(b"png")
    (tests / "old-job").mkdir()
    (tests / "old-job" / "job.toml").write_text(
        '[generate]\nprompt = "one string"\n'
    )  # before prompts were a list
    (tests / "old-job" / "00.png").write_bytes(b"png")
    (tests / "broken").mkdir()
    (tests / "broken" / "ui.log").write_text("loading\ntrilora: error: base model not found: m\n")
    (reports / "rep").mkdir(parents=True)
    (reports / "rep" / "report.html").write_text("<html></html>")
    for age, folder in enumerate([reports / "rep", tests / "broken", tests / "grid-job", tests / "old-job"]):
        os.utime(folder, (2e9 - age * 100, 2e9 - age * 100))
    status, found = ui.json("/api/results")
    assert status == 200
    listed = {r["name"]: r for r in found if r["name"] in ("rep", "broken", "grid-job", "old-job")}
    assert [r["name"] for r in found if r["name"] in listed] == ["rep", "broken", "grid-job", "old-job"]
    assert listed["grid-job"] | {"time": 0} == listed["grid-job"] | {
        "time": 0, "kind": "tests", "state": "finished", "prompts": ["a", "b"], "images": ["tests/grid-job/grid.png"],
        "report": None, "error": None}  # fmt: skip
    assert listed["old-job"]["prompts"] == ["one string"] and listed["old-job"]["images"] == [
        "tests/old-job/00.png"
    ]
    assert listed["broken"]["state"] == "failed" and listed["broken"]["error"].endswith(
        "base model not found: m"
    )
    assert listed["broken"]["log_file"] == "tests/broken/ui.log"
    assert listed["rep"]["kind"] == "reports" and listed["rep"]["report"] == "reports/rep/report.html"


def test_results_never_follow_a_linked_tests_or_reports_folder(tmp_path):
    from trilora.ui.api import Workspace, results
    from trilora.ui.jobs import Jobs

    outside = tmp_path / "outside"
    (outside / "job").mkdir(parents=True)
    (outside / "job" / "00.png").write_bytes(b"png")
    (outside / "job" / "report.html").write_text("<html></html>")
    root = tmp_path / "workspace"
    root.mkdir()
    for kind in ("tests", "reports"):
        (root / kind).symlink_to(outside)
    assert results(Workspace(root, Jobs(root), (), {})) == []


def test_presets_per_family_and_goal_hold_no_example_paths(ui):
    _, state = ui.json("/api/state")
    names = list(state["presets"])
    for family in ("Stable Diffusion 1.5", "Stable Diffusion 2.1", "Stable Diffusion XL"):
        assert any(family in n and n.startswith("A style") for n in names), (family, names)
    for family in ("SD 1.5", "Stable Diffusion 2.1", "Stable Diffusion XL"):
        assert any(family in n and n.startswith("DreamBooth") for n in names), (family, names)
    for name, preset in list(state["presets"].items())[1:]:  # the toy's paths are real: the workspace's own
        assert "base" not in preset.get("model", {}) and "data" not in preset.get("data", {}), name
        assert preset.get("data", {}).get("class_data", "data/").startswith("data/"), name


@pytest.mark.slow  # a four-step toy run, renamed, then resumed under its new name
def test_a_renamed_run_keeps_working_under_its_new_name(ui):
    import json

    _, state = ui.json("/api/state")
    settings = next(iter(state["presets"].values()))
    settings["train"] |= {"steps": 4, "batch_size": 2}
    settings["validation"] |= {"validate_every": 2, "sample_prompt": [], "signal_prompt": [], "stop_on": "val_loss",
                               "val_timesteps": 2}  # fmt: skip
    settings["checkpoint"] = {"checkpoint_every": 2}
    status, job = ui.json("/api/jobs", {"command": "train", "name": "first-name", "settings": settings})
    assert status == 200 and wait(ui, job["id"], 300)["state"] == "finished"
    old, new = ui.root / "runs" / "first-name", ui.root / "runs" / "better-name"
    (ui.root / "runs" / "taken").mkdir()
    for body in ({"name": "first-name", "to": "taken"}, {"name": "first-name", "to": "../data/x"},
                 {"name": "first-name", "to": ""}, {"name": "nothing", "to": "y"}):  # fmt: skip
        assert ui.json("/api/rename-run", body)[0] in (400, 403), body
    assert old.is_dir()

    assert ui.json("/api/rename-run", {"name": "first-name", "to": "better-name"}) == (
        200, {"renamed": "first-name", "to": "better-name"})  # fmt: skip
    assert (
        not old.exists()
        and (new / "better-name.safetensors").is_file()
        and (new / "better-name-diffusers").is_dir()
    )
    for file in ("config.json", "summary.json", "settings.toml", "job.toml"):
        assert "first-name" not in (new / file).read_text(), file
    summary = json.loads((new / "summary.json").read_text())
    assert summary["exported"]["kohya"] == str(new / "better-name.safetensors")
    found = {r["name"]: r for r in ui.json("/api/runs")[1]}
    assert (
        "first-name" not in found
        and found["better-name"]["exported"]["kohya"] == "runs/better-name/better-name.safetensors"
    )
    from safetensors import safe_open

    for file in (
        new / "better-name.safetensors",
        new / "better-name-diffusers" / "pytorch_lora_weights.safetensors",
    ):
        with safe_open(str(file), "pt") as opened:
            metadata = opened.metadata()
        assert metadata["ss_output_name"] == metadata["modelspec.title"] == "better-name", file
        assert "first-name" not in metadata["trilora_config"], file
    # a run that failed before its set-up (no config.json) can be renamed too
    (ui.root / "runs" / "early-failure").mkdir()
    (ui.root / "runs" / "early-failure" / "job.toml").write_text("[train]\nsteps = -1\n")
    assert ui.json("/api/rename-run", {"name": "early-failure", "to": "early-failure-2"})[0] == 200
    assert (ui.root / "runs" / "early-failure-2" / "job.toml").is_file()
    # and it resumes there, writing under the new name
    resumed = subprocess.run([sys.executable, "-m", "trilora", "train", "--resume", str(new), "--steps", "6"],
                             capture_output=True, text=True, timeout=300)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads((new / "summary.json").read_text())["steps_run"] == 6 and not old.exists()


def test_the_toolbox_runs_as_jobs_into_the_workspace_and_its_outputs_are_listed(ui):
    """A resize from the Tools tab: the adapter read where it is in the workspace, the output written
    to tools/NAME/NAME.safetensors (and its diffusers folder), listed; a refusal is the job's one line."""
    import torch

    from trilora.formats.kohya import save_kohya

    source = ui.root / "mine" / "style.safetensors"
    source.parent.mkdir()
    generator = torch.Generator().manual_seed(0)
    key = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
    save_kohya(source, {key: (torch.randn(4, 32, generator=generator), torch.randn(32, 4, generator=generator))},
               4.0, {}, torch.float32)  # fmt: skip
    assert "resize" in ui.json("/api/state")[1]["forms"]
    status, job = ui.json("/api/jobs", {"command": "resize", "name": "small",
                                         "settings": {"tools": {"file": "mine/style.safetensors", "rank": 2}}})  # fmt: skip
    assert status == 200
    done = wait(ui, job["id"])
    assert done["state"] == "finished" and "tools/small/small.safetensors" in done["files"]
    assert (ui.root / "tools" / "small" / "small-diffusers" / "pytorch_lora_weights.safetensors").is_file()
    listed = [r for r in ui.json("/api/results")[1] if r["kind"] == "tools"]
    assert listed[0]["name"] == "small" and "tools/small/small.safetensors" in listed[0]["files"]
    status, job = ui.json("/api/jobs", {"command": "resize", "name": "grown",
                                         "settings": {"tools": {"file": "mine/style.safetensors", "rank": 8}}})  # fmt: skip
    failed = wait(ui, job["id"])
    assert failed["state"] == "failed" and "resize only lowers ranks" in failed["error"]
    assert not list((ui.root / "tools" / "grown").glob("*.safetensors"))
    for settings in (
        {"tools": {"file": "/etc/hostname", "rank": 2}},
        {"tools": {"file": "../style.safetensors"}},
    ):
        assert ui.json("/api/jobs", {"command": "resize", "settings": settings})[0] in (
            400,
            403,
        )  # outside the root
