"""The `trilora` command. Every command's flags are generated from the config tree (trilora.config):
`COMMANDS` names the settings each reads; `--config FILE` gives any of them from a TOML file."""

import argparse
import copy
import errno
import logging
import signal
import sys
from pathlib import Path

from trilora.config import (
    COMMANDS,
    Command,
    base_type,
    checked,
    flag_help,
    load_toml,
    parse_comma_list,
    tree_from_dict,
)
from trilora.errors import Interrupted, Stopped, UserError, one_line, signal_name
from trilora.evaluation.compare import compare_command
from trilora.outputs import check_command_paths
from trilora.run_folder import refuse_if_in_use

log = logging.getLogger("trilora")

HELP = {
    "train": "Train a LoRA or TriLoRA adapter.",
    "generate": "Generate images with a base model and adapters.",
    "evaluate": "FID, NFID, KID and CLIP score of adapters across strengths (report.html).",
    "compare": "Train each method on the same data and settings, evaluate them in one report.",
    "check-data": "Report on a folder of images and captions before training.",
    "caption": "Write captions for the images of a folder that have none (BLIP, a WD14 tagger, or the toy world's).",
    "bench": "Benchmark LoRA against TriLoRA in the toy world (report.md).",
    "ui": "A local web UI for the whole workflow: data, captions, training with live curves, testing.",
    "demo": "Teach the shipped toy base model an unseen style with TriLoRA, on a CPU in minutes.",
    "resize": "Lower an adapter's rank (by rank, energy kept or error), reporting what was kept.",
    "merge": "Fold adapters into a checkpoint (--base), or merge them into one adapter.",
    "extract": "A LoRA from the difference between a fine-tuned model and its base.",
    "convert": "An adapter in the other layout (kohya <-> diffusers), tensors and metadata kept.",
}


def add_command_flags(parser: argparse.ArgumentParser, command: Command) -> None:
    """One flag per setting the command reads, defaulting to 'not given' so that a --config file's
    values are not overridden; then its modes."""
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="TOML file of settings ([model], [data], ... any section of the tree; or a run's "
        "config.json); flags override it.",
    )
    groups, seen = {}, set()
    for key, section, spec, annotation, flag in command.fields():
        assert flag not in seen, f"two settings of `{command.name}` have the flag --{flag}"
        seen.add(flag)
        group = groups.setdefault(section, parser.add_argument_group(section or "run"))
        meta = spec.metadata
        note = f" ({command.notes[key]})" if key in command.notes else ""
        kwargs = dict(default=argparse.SUPPRESS, help=flag_help(spec) + note)
        kind = base_type(annotation)
        metavar = meta["metavar"] or (None if meta["choices"] else spec.name.split("_")[-1].upper())
        if key in command.positional:
            kwargs["default"] = None  # argparse checks a positional's default against its choices
            group.add_argument(key, nargs="?", choices=meta["choices"], metavar=metavar, **kwargs)
        elif kind is bool:
            group.add_argument(f"--{flag}", dest=key, action=argparse.BooleanOptionalAction, **kwargs)
        elif meta["repeat"]:
            group.add_argument(f"--{flag}", dest=key, action="append", type=kind, metavar=metavar, **kwargs)
        elif meta["comma"]:
            group.add_argument(f"--{flag}", dest=key, metavar=meta["metavar"] or spec.name.upper(), **kwargs)
        else:
            choices = meta["choices"]
            group.add_argument(f"--{flag}", dest=key, type=kind, choices=choices, metavar=metavar, **kwargs)
    for mode, help_text in command.modes.items():
        parser.add_argument(f"--{mode.replace('_', '-')}", dest=mode, action="store_true", help=help_text)


def tree_from_args(args: argparse.Namespace):
    """(the tree, the resumed checkpoint as (folder, state) or None):
    defaults < the resumed checkpoint's config < the --config file < flags."""
    command = COMMANDS[args.command]
    data, resumed = {}, None
    resume = getattr(args, "checkpoint.resume", None)
    if resume and args.command == "train":
        # here, not at the top: torch (~1.5 s), which importing this module does not need
        from trilora.training.checkpoint import (
            find_checkpoint,
            load_checkpoint,
            refuse_edited_config,
            run_folder_of,
        )

        refuse_if_in_use(run_folder_of(Path(resume)))
        source = find_checkpoint(resume)
        resumed = source, load_checkpoint(source)
        refuse_edited_config(run_folder_of(source), resumed[1]["config"])
        data = copy.deepcopy(resumed[1]["config"])  # the checkpoint's own stays as saved, for the comparison
        data["output"] = str(run_folder_of(source))  # where it is now, not where it was started
    loaded = load_toml(args.config) if args.config else {}
    tree_from_dict(loaded, args.config, args.command)  # the whole file is checked, flags or not
    for section, values in loaded.items():
        if isinstance(values, dict) and isinstance(data.get(section), dict):
            data[section] = data[section] | values
        else:
            data[section] = values
    fields = {key: (spec, annotation, flag) for key, _, spec, annotation, flag in command.fields()}
    for key, value in vars(args).items():
        if key not in fields or value is None:
            continue  # the command, --config, the handler, modes; a positional not given
        spec, annotation, flag = fields[key]
        if spec.metadata["comma"]:
            value = parse_comma_list(value, base_type(annotation), f"--{flag}")
        checked(value, annotation, spec, f"--{flag}", None)  # named by its flag, not its TOML key
        section, _, name = key.rpartition(".")
        (data.setdefault(section, {}) if section else data)[name] = value
    tree = tree_from_dict(data, args.config or "settings", args.command)
    check_command_paths(args.command, tree)
    return tree, resumed


def cmd_train(args: argparse.Namespace) -> None:
    # here, not at the top: diffusers (~3 s), torch (~1.5 s) and transformers (~1 s), which importing this module does not need
    from trilora.scorers import stopping_scorer

    # here, not at the top: torch (~1.5 s), which importing this module does not need
    from trilora.training.loop import train

    tree, resumed = tree_from_args(args)
    config = tree.run_config()
    if args.dry_run:
        # here, not at the top: torch (~1.5 s), which importing this module does not need
        from trilora.training.memory import dry_run_report

        print(dry_run_report(config))
        return
    summary = train(config, resumed, stopping_scorer)
    if summary["exported"]:
        print(f"best step {summary['best_step']}, exported: {', '.join(summary['exported'].values())}")


def cmd_inspect(args: argparse.Namespace) -> None:
    # here, not at the top: torch (~1.5 s), which importing this module does not need
    from trilora.formats.inspect import describe, format_description

    print(format_description(describe(args.file)))


def cmd_export(args: argparse.Namespace) -> None:
    # here, not at the top: torch (~1.5 s), which importing this module does not need
    from trilora.training.export import export_step

    files = export_step(Path(args.run), args.step)
    print(f"exported the adapter of step {args.step}: {', '.join(map(str, files.values()))}")


def cmd_generate(args: argparse.Namespace) -> None:
    # here, not at the top: torch (~1.5 s), which importing this module does not need
    from trilora.inference.generate import generate_command

    for path in generate_command(tree_from_args(args)[0]):
        print(path)


def cmd_check_data(args: argparse.Namespace) -> None:
    # here, not at the top: torch (~1.5 s), which importing this module does not need
    from trilora.data.check import check_folder, format_report, require_usable

    data = tree_from_args(args)[0].data
    if not data.data:
        raise UserError(
            "no folder to check: give it as `trilora check-data DIR` (or [data] data in --config)"
        )
    # no base model here to take the default from: 512, SD 1.x's and SD 2.x ε models'
    report = check_folder(data.data, data.resolution or 512, data.trigger, data.caption_extension)
    print(report.to_json() if args.json else format_report(report))
    require_usable(report)


def cmd_demo(args: argparse.Namespace) -> None:
    # here, not at the top: diffusers (~3 s), torch (~1.5 s) and transformers (~1 s), which importing this module does not need
    from trilora.demo import run_demo

    run_demo(tree_from_args(args)[0].demo)


def cmd_bench(args: argparse.Namespace) -> None:
    # here, not at the top: torch (~1.5 s), which importing this module does not need
    from trilora.toy.bench import bench_command

    bench_command(tree_from_args(args)[0])


def cmd_caption(args: argparse.Namespace) -> None:
    # here, not at the top: torch (~1.5 s), which importing this module does not need
    from trilora.captioning.run import caption_command

    caption_command(tree_from_args(args)[0])


def cmd_ui(args: argparse.Namespace) -> None:
    # here, not at the top: torch (~1.5 s), which importing this module does not need
    from trilora.ui.server import serve

    serve(tree_from_args(args)[0].ui)


def cmd_evaluate(args: argparse.Namespace) -> None:
    # here, not at the top: torch (~1.5 s), which importing this module does not need
    from trilora.evaluation.evaluate import evaluate_command

    evaluate_command(tree_from_args(args)[0])


def cmd_compare(args: argparse.Namespace) -> None:
    compare_command(tree_from_args(args)[0])


def cmd_tool(args: argparse.Namespace) -> None:
    """resize, merge, extract, convert: trilora/tools/<command>.py, each printing what it wrote."""
    # here, not at the top: torch (~1.5 s), which importing this module does not need
    import importlib

    module = importlib.import_module(f"trilora.tools.{args.command}")
    for path in getattr(module, f"{args.command}_command")(tree_from_args(args)[0]):
        print(path)


HANDLERS = {"train": cmd_train, "generate": cmd_generate, "evaluate": cmd_evaluate, "compare": cmd_compare,
            "check-data": cmd_check_data, "caption": cmd_caption, "bench": cmd_bench, "demo": cmd_demo, "ui": cmd_ui,
            "resize": cmd_tool, "merge": cmd_tool, "extract": cmd_tool, "convert": cmd_tool}  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="trilora", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, handler in HANDLERS.items():
        command = sub.add_parser(name, help=HELP[name])
        add_command_flags(command, COMMANDS[name])
        command.set_defaults(handler=handler)
    inspect = sub.add_parser("inspect", help="Describe an adapter file.")
    inspect.add_argument("file")
    inspect.set_defaults(handler=cmd_inspect)
    export = sub.add_parser(
        "export", help="Export the kept adapter of any validated step of a run, in both layouts."
    )
    export.add_argument("run", metavar="RUN", help="a `trilora train` --output folder")
    export.add_argument(
        "--step", type=int, required=True, help="the validated step (its adapter in RUN/adapters/)"
    )
    export.set_defaults(handler=cmd_export)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="trilora: %(message)s")
    args = build_parser().parse_args(argv)
    handle_stop_signals()
    try:
        args.handler(args)
    except UserError as error:
        print(f"trilora: error: {one_line(error)}", file=sys.stderr)
        return 2
    except OSError as error:  # a full disk in a write that is not atomic (an append, a lock record)
        if error.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        where = f" writing {error.filename}" if error.filename else ""
        print(f"trilora: error: the disk is full{where} ({error.strerror}); free some space and run again "
              "(completed files are whole: each is written to a temporary name first)", file=sys.stderr)  # fmt: skip
        return 2
    except Interrupted as error:
        print(f"trilora: {error}", file=sys.stderr)
        return 128 + error.signum
    except KeyboardInterrupt as error:  # Ctrl-C, SIGTERM or SIGHUP outside the training loop
        signum = getattr(error, "signum", signal.SIGINT)
        print(f"trilora: {signal_name(signum)} before anything was finished; what was written is complete "
              "(every file is written whole or not at all)", file=sys.stderr)  # fmt: skip
        return 128 + signum
    return 0


def handle_stop_signals() -> None:
    """SIGTERM and SIGHUP (SLURM, Kubernetes, a closed terminal) do what Ctrl-C does."""

    def stop(signum, _frame):
        raise Stopped(signum)

    for name in ("SIGTERM", "SIGHUP"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), stop)
