"""How a setting is declared, type-checked, read from TOML and written back: the tree's plumbing.

A section is a dataclass whose fields are made with `opt`; a root (the training run's `RunConfig`,
or the whole `Tree`) is a dataclass of sections plus top-level settings. `build` turns nested
dicts (a TOML file, a saved config, the flags) into a root, refusing unknown keys by name.
"""

from __future__ import annotations

import dataclasses
import json
import math
import tomllib
from dataclasses import field
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

from trilora.errors import UserError
from trilora.files import read_text_file


def opt(
    default: Any,
    help: str,
    choices: tuple | None = None,
    repeat: bool = False,
    resumable: bool = False,
    comma: bool = False,
    metavar: str | None = None,
    saved: bool = True,
    path: bool = False,
    low: float | None = None,
    high: float | None = None,
) -> Any:
    """A setting. `resumable`: it may change when a run is resumed without breaking the exact
    continuation (the number of steps, patience, where files go); any other change is refused.
    A list is given by repeating its flag (`repeat`) or as one comma-separated value (`comma`).
    `path`: a file or folder (the web UI resolves it under its root).
    `low`, `high`: the bounds of a number (of each number of a list), inclusive; every number must
    also be finite. They are the resource guard of the tree: nothing absurd reaches any work.
    `saved=False`: how a command was started (--overwrite, --resume), left out of the settings it
    saves, so that rerunning them never deletes or resumes by surprise."""
    meta = dict(help=help, choices=choices, repeat=repeat, resumable=resumable, comma=comma,
                metavar=metavar, saved=saved, path=path, low=low, high=high)  # fmt: skip
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


def default_of(spec: dataclasses.Field) -> Any:
    return spec.default if spec.default is not dataclasses.MISSING else spec.default_factory()


def shown_default(spec: dataclasses.Field) -> str:
    """The default as `--help` and the README print it ("" where there is none)."""
    default = default_of(spec)
    if default in (None, "", []):
        return ""
    if isinstance(default, list) and spec.metadata["comma"]:
        return ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in default)
    return str(default)


def is_section(spec: dataclasses.Field) -> bool:
    return spec.default_factory is not dataclasses.MISSING and dataclasses.is_dataclass(spec.default_factory)


def sections_of(root: type) -> dict[str, type]:
    """Section name -> dataclass, in order."""
    return {f.name: f.default_factory for f in dataclasses.fields(root) if is_section(f)}


def iter_fields(root: type):
    """(section name or None for a top-level setting, dataclass field, resolved type), in order."""
    hints = get_type_hints(root)
    for spec in dataclasses.fields(root):
        if not is_section(spec):
            yield None, spec, hints[spec.name]
    for name, cls in sections_of(root).items():
        section_hints = get_type_hints(cls)
        for spec in dataclasses.fields(cls):
            yield name, spec, section_hints[spec.name]


def build(root: type, data: dict[str, Any], source: str, hint: str) -> Any:
    """`root` from nested sections; unknown sections or keys, or values of the wrong type, are an error
    naming them (`hint`: where the user finds the known ones)."""
    classes = sections_of(root)
    top = {f.name: f for f in dataclasses.fields(root) if not is_section(f)}
    unknown = [k for k in data if k not in classes and k not in top]
    for name, values in data.items():
        if name in classes:
            if not isinstance(values, dict):
                raise UserError(f"{source}: [{name}] must be a table of settings")
            known = {f.name for f in dataclasses.fields(classes[name])}
            unknown += [f"{name}.{k}" for k in values if k not in known]
    if unknown:
        raise UserError(f"{source}: unknown setting(s) {', '.join(unknown)}; see {hint}")
    sections = {}
    for name, cls in classes.items():
        hints, fields = get_type_hints(cls), {f.name: f for f in dataclasses.fields(cls)}
        values = data.get(name, {})
        sections[name] = cls(
            **{k: checked(v, hints[k], fields[k], f"{name}.{k}", source) for k, v in values.items()}
        )
    hints = get_type_hints(root)
    settings = {k: checked(v, hints[k], top[k], k, source) for k, v in data.items() if k in top}
    return root(**settings, **sections)


TYPE_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def checked(value: Any, annotation: Any, spec: dataclasses.Field | None, key: str, source: str | None) -> Any:
    """`value` if it has the field's type (an int is a float too) and is among its choices; else an
    error naming the key (or flag: `source` None), the type wanted and the value given."""
    where = f"{source}: {key}" if source else key
    kind, optional = base_type(annotation), type(None) in get_args(annotation)
    if value is None and optional:
        return None
    is_list = get_origin(annotation) is list
    wanted = TYPE_NAMES.get(kind, kind.__name__)
    if is_list:
        wanted = f"a list of {wanted.removeprefix('an ').removeprefix('a ')}s"
        if isinstance(value, str) and kind is str and spec is not None and spec.metadata.get("repeat"):
            value = [value]  # one value of a repeatable setting: `prompt = "a cat"` is a list of one
        if not isinstance(value, list):
            raise UserError(f"{where} must be {wanted}, got {value!r}")
    for item in value if is_list else [value]:
        fits = isinstance(item, kind) and not (kind is int and isinstance(item, bool))
        if kind is float and isinstance(item, int) and not isinstance(item, bool):
            fits = True
        if not fits:
            raise UserError(f"{where} must be {wanted}, got {value!r}")
        choices = spec.metadata.get("choices") if spec is not None else None
        if choices and item not in choices:
            raise UserError(f"{where} must be one of {', '.join(choices)}, got {item!r}")
        if kind in (int, float):
            check_number(item, spec, where)
        if kind is str and spec is not None and spec.metadata.get("path") and "\0" in item:
            raise UserError(f"{where} is a path, and a path cannot hold a NUL character: got {item!r}")
    if kind is float:
        return [float(v) for v in value] if is_list else float(value)
    return value


def number_text(value: int | float) -> str:
    return str(value) if isinstance(value, int) else f"{value:g}"


def bounds_text(spec: dataclasses.Field) -> str:
    """`1..1000`, `>= 0`, `<= 1`, or "" for a field without bounds."""
    low, high = (spec.metadata.get(k) for k in ("low", "high"))
    low, high = ("None" if v is None else number_text(v) for v in (low, high))
    if low != "None" and high != "None":
        return f"{low}..{high}"
    return f">= {low}" if low != "None" else (f"<= {high}" if high != "None" else "")


def check_number(value: int | float, spec: dataclasses.Field | None, where: str) -> None:
    """A number must be finite and within its field's bounds; else one line naming both."""
    if isinstance(value, float) and not math.isfinite(value):
        raise UserError(f"{where} must be a finite number, got {value!r}")
    if spec is None:
        return
    low, high = spec.metadata.get("low"), spec.metadata.get("high")
    if low is not None and value < low:
        raise UserError(
            f"{where} must be at least {number_text(low)} (range {bounds_text(spec)}), got {value!r}"
        )
    if high is not None and value > high:
        raise UserError(
            f"{where} must be at most {number_text(high)} (range {bounds_text(spec)}), got {value!r}"
        )


def base_type(annotation: Any) -> type:
    """`int | None` -> int, `list[str]` -> str."""
    if get_origin(annotation) is list:
        return get_args(annotation)[0]
    args = [a for a in get_args(annotation) if a is not type(None)]
    return args[0] if args else annotation


def parse_comma_list(text: str, kind: type, flag: str) -> list:
    """`--strengths 0,0.5,1` -> [0.0, 0.5, 1.0]; a word of the wrong kind is one line naming the flag."""
    words = [w.strip() for w in text.split(",") if w.strip()]
    try:
        return [kind(w) for w in words]
    except ValueError:
        wanted = {int: "whole numbers", float: "numbers"}.get(kind, "words")
        raise UserError(f"{flag} must be comma-separated {wanted}, got {text!r}") from None


def load_toml(path: str | Path) -> dict[str, Any]:
    """A settings file: TOML, or the JSON of a run's config.json."""

    path = Path(path)
    text = read_text_file(path, "config file")
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(text)
            if not isinstance(data, dict):
                raise UserError(f"config file {path} must hold a JSON object of settings")
            return data
        return tomllib.loads(text)
    except json.JSONDecodeError as error:
        raise UserError(f"config file {path} is not valid JSON: {error}") from None
    except tomllib.TOMLDecodeError as error:
        raise UserError(f"config file {path} is not valid TOML: {error}") from None
    except RecursionError:
        raise UserError(
            f"config file {path} nests deeper than any settings file does; is it the right file?"
        ) from None


def toml_value(value: Any) -> str:
    """A TOML literal of a string, number, boolean or list of them."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, int | float):
        return repr(value)
    # a basic string: TOML allows no control characters (U+0000-U+001F, U+007F) unescaped
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return '"' + "".join(f"\\u{ord(c):04x}" if ord(c) < 0x20 or ord(c) == 0x7F else c for c in escaped) + '"'


def to_toml(data: dict[str, Any], header: str = "") -> str:
    """Nested settings as a TOML file that `load_toml` reads back to the same values.
    TOML has no null: a setting that is None (its default: not set) is left out."""
    lines = [f"# {line}" for line in header.splitlines()]
    top = {k: v for k, v in data.items() if not isinstance(v, dict) and v is not None}
    lines += [f"{k} = {toml_value(v)}" for k, v in top.items()]
    for name, values in data.items():
        if isinstance(values, dict):
            lines += ["", f"[{name}]"]
            lines += [f"{k} = {toml_value(v)}" for k, v in values.items() if v is not None]
    return "\n".join(lines).lstrip("\n") + "\n"
