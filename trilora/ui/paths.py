"""Every path from the browser is relative to the workspace root and resolved inside it."""

from pathlib import Path

from trilora.errors import UserError

PRIVATE = ".trilora-ui"  # the UI's own files in the workspace (its token): never served, never written from the page


class OutsideRoot(UserError):
    """A path that leaves the workspace (`..`, an absolute path, a link pointing out)."""


def inside(root: Path, relative: str, allowed: tuple[Path, ...] = ()) -> Path:
    """`root / relative`, resolved (links followed); an error if that is not under `root` (or one of
    the read-only `allowed` folders, such as the shipped toy base model)."""
    if not isinstance(relative, str) or "\0" in relative:
        raise OutsideRoot(f"not a path: {relative!r}")
    root = root.resolve()
    path = (root / relative).resolve()
    if path.is_relative_to(root) and PRIVATE in path.relative_to(root).parts:
        raise OutsideRoot(f"{relative!r} is the UI's own folder, which the page never reads or writes")
    for folder in (root, *(a.resolve() for a in allowed)):
        if path == folder or folder in path.parents:
            return path
    raise OutsideRoot(f"{relative!r} is outside the workspace {root}")


def relative_to_root(root: Path, path: Path) -> str:
    return str(path.resolve().relative_to(root.resolve()))
