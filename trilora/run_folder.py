"""A run folder belongs to one run: refuse to mix two, lock it while in use, replace only when asked.

`claim(folder, ...)` is what every command that writes a results folder (train, evaluate, compare,
bench toy, demo) calls before writing anything:
- a folder that holds an earlier run's files is refused with one line, unless the command resumes
  it or `--overwrite` is given (the earlier files are then deleted first, and listed);
- an exclusive `flock` on `FOLDER/.trilora.lock` is held for the command's lifetime; the file records
  the holder's PID, host and command, so a second command names who holds the folder. The kernel
  drops a lock whose process died; its record stays, and the next command takes the folder over
  with a warning that names the dead holder.
"""

import json
import logging
import os
import shutil
import socket
import time
from collections.abc import Callable
from pathlib import Path

from trilora.errors import UserError
from trilora.files import raise_if_out_of_space

try:
    import fcntl
except ImportError:  # Windows: msvcrt's byte-range lock instead of flock
    fcntl = None
    import msvcrt

log = logging.getLogger("trilora")
LOCK_NAME = ".trilora.lock"


def try_lock(handle: int, exclusive: bool) -> bool:
    """Lock an open file without waiting; False if another process holds it."""
    if fcntl is None:
        try:
            os.lseek(handle, 0, os.SEEK_SET)
            msvcrt.locking(handle, msvcrt.LK_NBLCK, 1)
            return True
        except OSError:
            return False
    try:
        fcntl.flock(handle, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


def prepare_folder(folder: Path, flag: str = "--output") -> None:
    """Create `folder` (and its parents), or say in one line why it cannot be."""
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{flag} {folder} is a file, not a folder; choose a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".trilora-write-test-{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError as error:
        raise_if_out_of_space(error, folder / "(a first file)", None)
        reason = error.strerror or str(error)
        raise UserError(f"cannot write to {flag} {folder}: {reason}; choose another folder") from None


def check_folder_path(folder: Path, flag: str = "--output") -> None:
    """Refuse, without writing anything, a path that cannot become a folder (a file, or under one)."""
    for parent in [folder, *folder.parents]:
        if parent.exists():
            if not parent.is_dir():
                where = "is a file" if parent == folder else f"is under the file {parent}"
                raise UserError(f"{flag} {folder} {where}; choose a folder")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise UserError(
                    f"cannot write to {flag} {folder}: {parent} is not writable; choose another folder"
                )
            return


class FolderLock:
    """An exclusive flock on FOLDER/.trilora.lock, with a record of who holds it."""

    def __init__(self, folder: Path, command: str):
        self.path, self.command, self.handle = folder / LOCK_NAME, command, None

    def holder(self) -> str | None:
        """Who holds the lock now (a description), or None if nobody does. Writes nothing."""
        if not self.path.is_file():
            return None
        handle = os.open(self.path, os.O_RDONLY if fcntl else os.O_RDWR)
        try:
            free = try_lock(handle, exclusive=False)
        finally:
            os.close(handle)  # also drops the lock just taken
        return None if free else describe(read_record(self.path))

    def acquire(self) -> None:
        handle = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        if not try_lock(handle, exclusive=True):
            os.close(handle)
            raise UserError(in_use_message(self.path.parent, describe(read_record(self.path))))
        left = read_record(self.path)
        if left:
            log.warning("taking over %s: its lock was left by %s, which is no longer running",
                        self.path.parent, describe(left))  # fmt: skip
        record = {"pid": os.getpid(), "host": socket.gethostname(), "command": self.command,
                  "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "process_start": process_start(os.getpid())}  # fmt: skip
        os.ftruncate(handle, 0)
        os.lseek(handle, 0, os.SEEK_SET)
        os.write(handle, (json.dumps(record) + "\n").encode())
        os.fsync(handle)
        self.handle = handle

    def release(self) -> None:
        if self.handle is not None:
            os.ftruncate(self.handle, 0)  # an empty record: released cleanly
            os.close(self.handle)
            self.handle = None

    def __enter__(self) -> "FolderLock":
        return self

    def __exit__(self, *_) -> None:
        self.release()


def process_start(pid: int) -> str | None:
    """When process `pid` started, in clock ticks since boot (Linux /proc; None elsewhere): with the
    pid, it names one process for good, since pids are reused."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[19]  # field 22, after the command name in parentheses
    except (OSError, IndexError):
        return None


def holder_process(folder: Path) -> int | None:
    """The pid of the trilora process that holds `folder`'s lock now, on this host; None unless
    every check holds: the lock is held, the record names this host, and the process with that pid
    started when the record says and runs trilora (so Stop never signals an unrelated process)."""
    lock = FolderLock(folder, "")
    if lock.holder() is None:
        return None
    record = read_record(lock.path) or {}
    pid = record.get("pid")
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 1 or pid == os.getpid():
        return None
    if record.get("host") != socket.gethostname() or record.get("process_start") is None:
        return None
    if process_start(pid) != record["process_start"]:
        return None
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return None
    return pid if any(b"trilora" in part for part in command) else None


def read_record(path: Path) -> dict | None:
    try:
        text = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return None
    if not text:
        return None
    try:
        record = json.loads(text)
    except json.JSONDecodeError:
        return {"pid": "?", "host": "?", "command": text[:40]}
    return record if isinstance(record, dict) else None


def describe(record: dict | None) -> str:
    if not record:
        return "another process"
    return (f"`trilora {record.get('command', '?')}` (PID {record.get('pid', '?')} on {record.get('host', '?')}, "
            f"started {record.get('started', '?')})")  # fmt: skip


def refuse_if_in_use(folder: Path) -> None:
    holder = FolderLock(folder, "").holder() if folder.is_dir() else None
    if holder is not None:
        raise UserError(in_use_message(folder, holder))


def in_use_message(folder: Path, holder: str) -> str:
    return f"{folder} is in use by {holder}; wait for it to finish (or stop it), or choose another --output"


def claim(folder: Path, earlier_files: Callable[[Path], list[Path]], command: str, overwrite: bool,
          resuming: bool, hint: str, delete_earlier: bool = True, what: str = "a run") -> FolderLock:  # fmt: skip
    """Lock `folder` for this command, after checking that it may write there; see the module doc.

    `earlier_files(folder)`: what of an earlier run the folder holds (each command knows its files).
    `hint`: how the user continues the earlier run instead, for the message.
    `delete_earlier`: with `overwrite`, delete the earlier files now (a run), or leave them to be
    replaced file by file (a report).
    Nothing is written before every check has passed; the check is repeated under the lock, in case
    another command started in between.
    """
    check_folder_path(folder)
    refuse_foreign_folder(folder)
    lock = FolderLock(folder, command)
    refuse_if_in_use(folder)
    refuse_mixing(folder, earlier_files(folder) if folder.is_dir() else [], overwrite or resuming, hint, what)
    prepare_folder(folder)
    lock.acquire()
    try:
        earlier = earlier_files(folder)
        refuse_mixing(folder, earlier, overwrite or resuming, hint, what)
    except UserError:
        lock.release()
        raise
    if overwrite and earlier and delete_earlier:
        for path in earlier:
            shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink(missing_ok=True)
        log.warning("--overwrite: deleted the earlier run's files in %s: %s", folder, listing(earlier))
    return lock


# What the web UI writes into a job's folder before the command claims it
UI_FILES = ("job.toml", "ui.log")


def refuse_foreign_folder(folder: Path) -> None:
    """A folder no trilora command ever claimed (no lock file) must be empty: its files are the
    user's, and a run would mix with them (--overwrite would even delete its .safetensors)."""
    if not folder.is_dir() or (folder / LOCK_NAME).exists():
        return
    try:
        foreign = sorted(
            p.name for p in folder.iterdir() if not p.name.startswith(".") and p.name not in UI_FILES
        )
    except OSError as error:
        raise UserError(f"cannot read --output {folder}: {error.strerror}; choose another folder") from None
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise UserError(f"--output {folder} holds files that no trilora command wrote ({shown}); trilora "
                        "writes a run or report into a folder of its own: choose a new or empty folder")  # fmt: skip


def refuse_mixing(folder: Path, earlier: list[Path], allowed: bool, hint: str, what: str) -> None:
    if earlier and not allowed:
        raise UserError(f"{folder} already holds {what} ({listing(earlier, 6)}): {hint}, "
                        "replace it with --overwrite, or choose another --output")  # fmt: skip


def listing(paths: list[Path], most: int | None = None) -> str:
    names = [p.name + ("/" if p.is_dir() else "") for p in paths]
    if most is not None and len(names) > most:
        names = names[:most] + [f"{len(paths) - most} more"]
    return ", ".join(names)
