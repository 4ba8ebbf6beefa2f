"""Print the Markdown table of `trilora train` settings for the README, from the config tree.

python scripts/options_table.py
"""

import dataclasses

from trilora.config import iter_fields


def main() -> None:
    print("| flag | TOML key | default | meaning |")
    print("| --- | --- | --- | --- |")
    for section, field, _ in iter_fields():
        default = field.default if field.default is not dataclasses.MISSING else field.default_factory()
        flag = "--" + field.name.replace("_", "-")
        key = f"{section}.{field.name}" if section else field.name
        choices = field.metadata.get("choices")
        meaning = field.metadata["help"] + (f" One of: {', '.join(choices)}." if choices else "")
        print(f"| `{flag}` | `{key}` | {'' if default in (None, '', []) else f'`{default}`'} | {meaning} |")


if __name__ == "__main__":
    main()
