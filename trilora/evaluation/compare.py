"""`trilora compare`: the TriLoRA paper's experiment on the user's own data, in one command.

Each method (LoRA, TriLoRA) is trained with the same settings and seed into OUTPUT/train/METHOD, and
the exported adapters are evaluated together with `trilora evaluate`'s protocol: one report, the
base model first. By default the prompts are the training captions (with the trigger word) and the
reference images are the training images, as in the paper's NFID against the target style.
A method whose run folder already holds a finished run with the same settings is not trained again;
an interrupted one with the same settings is resumed from its last checkpoint. OUTPUT is locked
for the whole command, and an earlier report (or a method run with other settings) is replaced only
with --overwrite.
"""

import argparse
import json
import logging
from pathlib import Path

from trilora.config import RunConfig, from_dict, load_toml, to_dict
from trilora.errors import UserError

log = logging.getLogger("trilora")
METHODS = ("lora", "trilora")


def parse_methods(text: str) -> list[str]:
    methods = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods or len(set(methods)) != len(methods):
        raise UserError(
            f"--methods must be distinct names among {', '.join(METHODS)}, comma-separated; got {text!r}"
        )
    return methods


def method_config(args: argparse.Namespace, method: str) -> RunConfig:
    """The training settings of one method: the TOML file, then the flags; only the method and output differ."""
    data = load_toml(args.config) if args.config else {}
    data.pop("output", None)  # each method has its own folder
    sections = {
        "model": {"base": args.base, "base_config": args.base_config},
        "data": {"data": args.data, "val_data": args.val_data, "resolution": args.resolution},
        "adapter": {"method": method, "rank": args.rank, "alpha": args.alpha},
        "train": {
            "steps": args.train_steps,
            "lr": args.lr,
            "batch_size": args.train_batch_size,
            "seed": args.train_seed,
            "device": args.device,
        },
        "export": {"name": method},
    }
    for section, values in sections.items():
        table = data.setdefault(section, {})
        if not isinstance(table, dict):
            raise UserError(f"{args.config}: [{section}] must be a table of settings")
        table.update({k: v for k, v in values.items() if v is not None})
    data["output"] = str(Path(args.output) / "train" / method)
    return from_dict(data, source=args.config or "compare")


def settings_of(config: dict) -> dict:
    """A run's settings as compared between runs: how it was started (resume, overwrite) is not one."""
    config = json.loads(json.dumps(config))
    for key in ("resume", "overwrite"):
        config.get("checkpoint", {}).pop(key, None)
    return config


def earlier_run(config: RunConfig, overwrite: bool) -> tuple[str, dict | None]:
    """What the method's folder holds: ("finished", summary) or ("interrupted", None) for a run with
    exactly these settings, else ("new", None); a run with other settings is refused without
    --overwrite (with it, the training replaces it)."""
    from trilora.training.checkpoint import list_checkpoints

    output = Path(config.output)
    summary_file, config_file = output / "summary.json", output / "config.json"
    if not config_file.is_file():
        return "new", None
    try:
        same = settings_of(json.loads(config_file.read_text())) == settings_of(to_dict(config))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, TypeError, KeyError):
        same = False
    if not same:
        if overwrite:
            return "new", None
        raise UserError(f"{output} holds a run with other settings; give --overwrite to train it anew, "
                        "or choose another --output")  # fmt: skip
    if summary_file.is_file():
        summary = json.loads(summary_file.read_text())
        if Path(summary["exported"].get("kohya", "")).is_file():
            return "finished", summary
    return ("interrupted", None) if list_checkpoints(output) else ("new", None)


def compare_from_args(args: argparse.Namespace) -> dict:
    from trilora.data.folder import with_trigger
    from trilora.evaluation.evaluate import (
        check_settings,
        claim_output,
        evaluate,
        print_summary,
        settings_from_args,
    )
    from trilora.evaluation.inputs import read_prompts
    from trilora.training.loop import train

    methods = parse_methods(args.methods)
    configs = {method: method_config(args, method) for method in methods}
    for config in configs.values():
        config.validate()
    trigger = configs[methods[0]].data.trigger
    prompts = (
        read_prompts(args.prompts)
        if args.prompts
        else [with_trigger(p, trigger) for p in read_prompts(args.data)]
    )
    reference = Path(args.reference or args.data)
    settings = settings_from_args(args, [], prompts, reference, labels=methods)
    check_settings(settings)
    lock = claim_output(Path(args.output), args.overwrite, "compare")
    try:
        return compare_locked(args, methods, configs, settings, train, evaluate, print_summary)
    finally:
        lock.release()


def compare_locked(args, methods, configs, settings, train, evaluate, print_summary) -> dict:
    # Check the metric networks before hours of training.
    from trilora.evaluation.clip_score import load_clip_scorer
    from trilora.evaluation.inception import load_inception

    load_inception(settings.inception_weights)
    load_clip_scorer(settings.clip_model)

    summaries = {}
    for method, config in configs.items():
        state, summary = earlier_run(config, args.overwrite)
        if state == "finished":
            log.info("compare: %s already trained in %s; reusing it", method, config.output)
        else:
            if state == "interrupted":
                log.info("compare: resuming the interrupted %s run in %s", method, config.output)
                config.checkpoint.resume = config.output
            else:
                log.info("compare: training %s into %s", method, config.output)
                config.checkpoint.overwrite = args.overwrite
            summary = train(config)
        if not summary["exported"]:
            raise UserError(f"the {method} run in {config.output} exported no adapter")
        summaries[method] = summary
    settings.loras = [Path(summaries[m]["exported"]["kohya"]) for m in methods]
    settings.training = {
        method: {
            k: summaries[method].get(k) for k in ("rank", "alpha", "steps_run", "best_step", "best_val_loss")
        }
        for method in methods
    }
    results = evaluate(settings, lock_held=True)
    print_summary(results, Path(args.output))
    return results


def add_compare_flags(parser: argparse.ArgumentParser) -> None:
    from trilora.evaluation.evaluate import add_protocol_flags

    parser.add_argument("--data", required=True, metavar="DIR", help="Training images with .txt captions.")
    parser.add_argument(
        "--val-data", metavar="DIR", help="Validation images (default: held out from --data)."
    )
    parser.add_argument("--methods", default="lora,trilora", help="Methods to train, comma-separated.")
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="TOML of training settings (as for `trilora train`), shared by all methods.",
    )
    parser.add_argument("--rank", type=int, help="Adapter rank (default: the config's, else 16).")
    parser.add_argument("--alpha", type=float, help="Adapter alpha (default: the rank).")
    parser.add_argument("--train-steps", type=int, help="Training steps (default: the config's, else 1000).")
    parser.add_argument("--lr", type=float, help="Learning rate (default: the config's, else 1e-4).")
    parser.add_argument(
        "--train-batch-size", type=int, help="Training batch size (default: the config's, else 1)."
    )
    parser.add_argument(
        "--resolution", type=int, help="Training resolution (default: the config's, else 512)."
    )
    parser.add_argument(
        "--train-seed", type=int, help="Training seed, the same for every method (default: 0)."
    )
    add_protocol_flags(parser, defaults_from_data=True)
