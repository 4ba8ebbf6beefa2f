"""The `trilora` command. Flags of `train` are generated from the config tree (trilora.config)."""

import argparse
import dataclasses
import logging
import sys
from pathlib import Path

from trilora.config import base_type, from_dict, iter_fields, load_toml
from trilora.errors import Interrupted, UserError

log = logging.getLogger("trilora")


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per config field, defaulting to 'not given' so that TOML values are not overridden."""
    parser.add_argument(
        "--config", metavar="FILE", help="TOML file of settings ([model], [data], ...); flags override it."
    )
    groups = {}
    for section, field, annotation in iter_fields():
        group = groups.setdefault(section, parser.add_argument_group(section or "run"))
        flag = "--" + field.name.replace("_", "-")
        meta = field.metadata
        default = field.default if field.default is not dataclasses.MISSING else field.default_factory()
        help_text = f"{meta['help']} (default: {default})" if default not in (None, "", []) else meta["help"]
        kwargs = dict(
            dest=f"{section}.{field.name}" if section else field.name,
            default=argparse.SUPPRESS,
            help=help_text,
        )
        kind = base_type(annotation)
        if kind is bool:
            group.add_argument(flag, action=argparse.BooleanOptionalAction, **kwargs)
        elif meta.get("repeat"):
            group.add_argument(flag, action="append", type=kind, metavar=field.name.upper(), **kwargs)
        else:
            group.add_argument(
                flag,
                type=kind,
                choices=meta.get("choices"),
                metavar=None if meta.get("choices") else field.name.split("_")[-1].upper(),
                **kwargs,
            )


def config_from_args(args: argparse.Namespace):
    """Defaults < the resumed checkpoint's config < the TOML file < flags."""
    data = {}
    resume = getattr(args, "checkpoint.resume", None)
    if resume:
        from trilora.run_folder import refuse_if_in_use
        from trilora.training.checkpoint import find_checkpoint, load_checkpoint, run_folder_of

        refuse_if_in_use(run_folder_of(Path(resume)))
        checkpoint = find_checkpoint(resume)
        data = load_checkpoint(checkpoint)["config"]
        data["output"] = str(run_folder_of(checkpoint))  # where it is now, not where it was started
    for section, values in (load_toml(args.config) if getattr(args, "config", None) else {}).items():
        if isinstance(values, dict) and isinstance(data.get(section), dict):
            data[section] = data[section] | values
        else:
            data[section] = values
    for key, value in vars(args).items():
        if key in ("command", "config", "handler", "dry_run"):
            continue
        if "." in key:
            section, name = key.split(".", 1)
            data.setdefault(section, {})[name] = value
        else:
            data[key] = value
    return from_dict(data, source=getattr(args, "config", None) or "settings")


def cmd_train(args: argparse.Namespace) -> None:
    from trilora.training.loop import train

    config = config_from_args(args)
    if args.dry_run:
        from trilora.training.memory import dry_run_report

        print(dry_run_report(config))
        return
    summary = train(config)
    if summary["exported"]:
        print(f"best step {summary['best_step']}, exported: {', '.join(summary['exported'].values())}")


def cmd_inspect(args: argparse.Namespace) -> None:
    from trilora.formats.inspect import describe, format_description

    print(format_description(describe(args.file)))


def cmd_generate(args: argparse.Namespace) -> None:
    from trilora.inference.generate import generate_from_args

    for path in generate_from_args(args):
        print(path)


def cmd_check_data(args: argparse.Namespace) -> None:
    from trilora.data.check import check_folder, format_report, require_usable

    report = check_folder(args.folder, args.resolution, args.trigger, args.caption_extension)
    print(report.to_json() if args.json else format_report(report))
    require_usable(report)


def cmd_demo(args: argparse.Namespace) -> None:
    from trilora.demo import run_demo

    run_demo(args.output, steps=args.steps, base=args.base, overwrite=args.overwrite)


def cmd_bench(args: argparse.Namespace) -> None:
    from trilora.toy.bench import bench_from_args

    bench_from_args(args)


def cmd_evaluate(args: argparse.Namespace) -> None:
    from trilora.evaluation.evaluate import evaluate_from_args

    evaluate_from_args(args)


def cmd_compare(args: argparse.Namespace) -> None:
    from trilora.evaluation.compare import compare_from_args

    compare_from_args(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="trilora", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="Train a LoRA or TriLoRA adapter.")
    add_config_flags(train)
    train.add_argument(
        "--dry-run",
        action="store_true",
        help="Print the trainable parameters, the adapter file size and a GPU memory estimate; "
        "load no weights or data, train nothing.",
    )
    train.set_defaults(handler=cmd_train)

    inspect = sub.add_parser("inspect", help="Describe an adapter file.")
    inspect.add_argument("file")
    inspect.set_defaults(handler=cmd_inspect)

    generate = sub.add_parser("generate", help="Generate images with a base model and adapters.")
    from trilora.inference.generate import add_generate_flags

    add_generate_flags(generate)
    generate.set_defaults(handler=cmd_generate)

    check = sub.add_parser("check-data", help="Report on a folder of images and captions before training.")
    check.add_argument("folder", metavar="DIR")
    check.add_argument("--resolution", type=int, default=512, help="Training resolution (default: 512).")
    check.add_argument("--trigger", help="A word put in front of every caption.")
    check.add_argument(
        "--caption-extension", default=".txt", help="Captions are <image stem>EXT (default: .txt)."
    )
    check.add_argument("--json", action="store_true", help="Print the report as JSON.")
    check.set_defaults(handler=cmd_check_data)

    demo = sub.add_parser(
        "demo", help="Teach the shipped toy base model an unseen style with TriLoRA, on a CPU in minutes."
    )
    demo.add_argument("--output", default="runs/demo")
    demo.add_argument(
        "--steps", type=int, default=400, help="At most this many steps (validation may stop sooner)."
    )
    demo.add_argument("--base", help="Another toy-world base model folder (default: the shipped one).")
    demo.add_argument(
        "--overwrite", action="store_true", help="Replace an earlier demo in --output (default: refuse)."
    )
    demo.set_defaults(handler=cmd_demo)

    bench = sub.add_parser("bench", help="Benchmark LoRA against TriLoRA in the toy world (report.md).")
    from trilora.toy.bench import add_bench_flags

    add_bench_flags(bench)
    bench.set_defaults(handler=cmd_bench)

    evaluate = sub.add_parser(
        "evaluate", help="FID, NFID, KID and CLIP score of adapters across strengths (report.html)."
    )
    from trilora.evaluation.evaluate import add_evaluate_flags

    add_evaluate_flags(evaluate)
    evaluate.set_defaults(handler=cmd_evaluate)

    compare = sub.add_parser(
        "compare", help="Train each method on the same data and settings, evaluate them in one report."
    )
    from trilora.evaluation.compare import add_compare_flags

    add_compare_flags(compare)
    compare.set_defaults(handler=cmd_compare)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="trilora: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        args.handler(args)
    except UserError as error:
        print(f"trilora: error: {error}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, Interrupted) as error:
        print(f"trilora: {error or 'interrupted'}", file=sys.stderr)
        return 130
    return 0
