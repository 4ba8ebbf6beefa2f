"""Jobs: each a `trilora COMMAND --config job.toml` subprocess (argument lists, no shell) whose log
and settings live in its folder, so that what the UI starts is what a terminal would run.

Training jobs run `max_jobs` at a time, the rest wait in a queue; other jobs start at once.
"""

import itertools
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from trilora.config import to_toml
from trilora.files import write_text

LOG = "ui.log"
SETTINGS = "job.toml"
QUEUED_COMMANDS = ("train",)


@dataclass
class Job:
    id: int
    command: str
    folder: Path
    args: list[str]
    state: str = "queued"  # queued, running, finished, failed, stopped
    returncode: int | None = None
    process: subprocess.Popen | None = field(default=None, repr=False)
    started: float | None = None

    def as_dict(self, root: Path) -> dict:
        return {"id": self.id, "command": self.command, "folder": str(self.folder.relative_to(root)),
                "state": self.state, "returncode": self.returncode, "started": self.started}  # fmt: skip


class Jobs:
    def __init__(
        self, root: Path, max_jobs: int = 1, program: tuple[str, ...] = (sys.executable, "-m", "trilora")
    ):
        self.root, self.max_jobs, self.program = root, max_jobs, program
        self.jobs: dict[int, Job] = {}
        self.ids = itertools.count(1)
        self.lock = threading.Lock()
        self.watcher = threading.Thread(target=self.watch, daemon=True)
        self.watcher.start()

    def submit(self, command: str, folder: Path, settings: dict | None, extra: list[str] = ()) -> Job:
        """Write the settings as `folder/job.toml` and queue `trilora COMMAND --config job.toml EXTRA`."""
        folder.mkdir(parents=True, exist_ok=True)
        args = [command, *extra]
        if settings is not None:
            write_text(folder / SETTINGS, to_toml(settings, f"started from the trilora web UI: trilora {command} "
                                                            f"--config {SETTINGS}"))  # fmt: skip
            args += ["--config", str(folder / SETTINGS)]
        with self.lock:
            job = Job(next(self.ids), command, folder, args)
            self.jobs[job.id] = job
        self.start_waiting()
        return job

    def start_waiting(self) -> None:
        with self.lock:
            running = sum(j.state == "running" and j.command in QUEUED_COMMANDS for j in self.jobs.values())
            for job in self.jobs.values():
                if job.state != "queued":
                    continue
                if job.command in QUEUED_COMMANDS:
                    if running >= self.max_jobs:
                        continue
                    running += 1
                log = open(job.folder / LOG, "ab")  # noqa: SIM115 (the child writes it; closed when it ends)
                job.process = subprocess.Popen([*self.program, *job.args], stdout=log,
                                               stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=self.root,
                                               start_new_session=True,  # Ctrl-C in the UI's terminal is not theirs
                                               env=os.environ | {"PYTHONUNBUFFERED": "1"})  # fmt: skip
                log.close()
                job.state, job.started = "running", time.time()

    def watch(self) -> None:
        while True:
            with self.lock:
                for job in self.jobs.values():
                    if job.state == "running" and job.process.poll() is not None:
                        job.returncode = job.process.returncode
                        job.state = {0: "finished", 129: "stopped", 130: "stopped", 143: "stopped"}.get(
                            job.returncode, "failed"
                        )
            self.start_waiting()
            time.sleep(0.3)

    def stop(self, folder: Path, pid: int | None = None) -> bool:
        """Ctrl-C for the job in `folder` (or the process `pid` holding a run's lock): the same
        graceful stop, a checkpoint and the export of the best adapter so far."""
        with self.lock:
            for job in self.jobs.values():
                if job.folder == folder and job.state == "queued":
                    job.state = "stopped"
                    return True
                if job.folder == folder and job.state == "running":
                    job.process.send_signal(signal.SIGINT)
                    return True
        if pid:
            try:
                os.kill(pid, signal.SIGINT)
                return True
            except (ProcessLookupError, PermissionError):
                return False
        return False

    def of(self, folder: Path) -> Job | None:
        with self.lock:
            found = [j for j in self.jobs.values() if j.folder == folder]
        return found[-1] if found else None

    def shutdown(self) -> None:
        """Leave running jobs running: they are CLI runs, and the next UI finds them in their folders."""
