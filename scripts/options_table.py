"""Print the README's Markdown tables of settings, from the config tree: `trilora train`'s, then
those of the other commands.

python scripts/options_table.py
"""

from trilora.config import COMMANDS, RunConfig, Tree
from trilora.config.fields import bounds_text, iter_fields, shown_default


def row(flag: str, key: str, spec, used_by: str | None = None) -> str:
    default = shown_default(spec)
    choices = spec.metadata.get("choices")
    meaning = spec.metadata["help"] + (f" One of: {', '.join(choices)}." if choices else "")
    meaning += f" Range {bounds_text(spec)}." if bounds_text(spec) else ""
    cells = [flag, f"`{key}`", f"`{default}`" if default else "", meaning]
    return "| " + " | ".join(cells[:2] + ([used_by] if used_by is not None else []) + cells[2:]) + " |"


def main() -> None:
    print("| flag | TOML key | default | meaning |")
    print("| --- | --- | --- | --- |")
    for section, spec, _ in iter_fields(RunConfig):
        key = f"{section}.{spec.name}" if section else spec.name
        print(row(f"`--{spec.name.replace('_', '-')}`", key, spec))
    print()
    print("| flag | TOML key | commands | default | meaning |")
    print("| --- | --- | --- | --- | --- |")
    training = {section for section, _, _ in iter_fields(RunConfig)}
    for section, spec, _ in iter_fields(Tree):
        if section in training:
            continue
        key = f"{section}.{spec.name}"
        users = [name for name, command in COMMANDS.items() if key in {k for k, *_ in command.fields()}]
        positional = any(key in command.positional for command in COMMANDS.values())
        flag = f"`{spec.name.upper()}` (argument)" if positional else f"`--{spec.name.replace('_', '-')}`"
        print(row(flag, key, spec, ", ".join(users)))


if __name__ == "__main__":
    main()
