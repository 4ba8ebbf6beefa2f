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

import copy
import json
import logging
from pathlib import Path

from trilora.config import RunConfig, Tree, settings_toml, to_dict, unsaved_keys
from trilora.errors import UserError
from trilora.evaluation.inputs import read_prompts

log = logging.getLogger("trilora")


def method_config(tree: Tree, method: str) -> RunConfig:
    """The training settings of one method: the tree's training sections; only the method, the
    output folder and the export name differ, and training runs on evaluation's --device."""
    config = copy.deepcopy(tree.run_config())
    config.adapter.method = method
    config.output = str(Path(tree.evaluate.output) / "train" / method)
    config.export.name = method
    config.train.device = tree.evaluate.device
    config.checkpoint.resume, config.checkpoint.overwrite = None, False
    return config


def settings_of(config: dict) -> dict:
    """A run's settings as compared between runs: how it was started (resume, overwrite) is not one."""

    config = json.loads(json.dumps(config))
    for key in unsaved_keys():
        section, _, name = key.rpartition(".")
        (config.get(section, {}) if section else config).pop(name, None)
    return config


def earlier_run(config: RunConfig, overwrite: bool) -> tuple[str, dict | None]:
    """What the method's folder holds: ("finished", summary) or ("interrupted", None) for a run with
    exactly these settings, else ("new", None); a run with other settings is refused without
    --overwrite (with it, the training replaces it)."""
    # here, not at the top: torch (~1.5 s), which importing this module does not need
    from trilora.training.checkpoint import list_checkpoints
    from trilora.training.export import finished_summary

    output = Path(config.output)
    config_file = output / "config.json"
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
    if summary := finished_summary(output):
        return "finished", summary
    return ("interrupted", None) if list_checkpoints(output) else ("new", None)


def compare_command(tree: Tree) -> dict:
    # here, not at the top: torch (~1.5 s), which importing this module does not need
    from trilora.data.folder import with_trigger

    # here, not at the top: torch (~1.5 s), which importing this module does not need
    from trilora.evaluation.evaluate import Evaluation, adapter_labels, check_settings, claim_output

    tree.compare.validate()
    tree.evaluate.validate()
    methods = tree.compare.methods
    configs = {method: method_config(tree, method) for method in methods}
    for config in configs.values():
        config.validate()
    data = tree.data.data
    if not data:
        raise UserError("no training data: pass --data DIR (compare trains on it, and by default evaluates "
                        "against its images and captions)")  # fmt: skip
    prompts = (
        read_prompts(tree.evaluate.prompts)
        if tree.evaluate.prompts
        else [with_trigger(p, tree.data.trigger) for p in read_prompts(data)]
    )
    job = Evaluation(tree.model, tree.sampling, tree.evaluate, prompts, Path(tree.evaluate.reference or data),
                     [], adapter_labels([], None), settings_text=settings_toml(tree, "compare"))  # fmt: skip
    check_settings(job)
    lock = claim_output(job.output, tree.evaluate.overwrite, "compare")
    try:
        return compare_locked(job, methods, configs)
    finally:
        lock.release()


def compare_locked(job, methods: list[str], configs: dict[str, RunConfig]) -> dict:
    # here, not at the top: torch (~1.5 s) and transformers (~1 s), which importing this module does not need
    from trilora.evaluation.clip_score import load_clip_scorer

    # here, not at the top: torch (~1.5 s), which importing this module does not need
    from trilora.evaluation.evaluate import evaluate, optional_path, print_summary

    # here, not at the top: torch (~1.5 s), which importing this module does not need
    from trilora.evaluation.inception import load_inception

    # here, not at the top: diffusers (~3 s), torch (~1.5 s) and transformers (~1 s), which importing this module does not need
    from trilora.scorers import stopping_scorer

    # here, not at the top: torch (~1.5 s), which importing this module does not need
    from trilora.training.loop import train

    # Check the metric networks before hours of training.
    load_inception(optional_path(job.settings.inception_weights))
    load_clip_scorer(optional_path(job.settings.clip_model))
    overwrite = job.settings.overwrite

    summaries = {}
    for method, config in configs.items():
        state, summary = earlier_run(config, overwrite)
        if state == "finished":
            log.info("compare: %s already trained in %s; reusing it", method, config.output)
        else:
            if state == "interrupted":
                log.info("compare: resuming the interrupted %s run in %s", method, config.output)
                config.checkpoint.resume = config.output
            else:
                log.info("compare: training %s into %s", method, config.output)
                config.checkpoint.overwrite = overwrite
            summary = train(config, find_scorer=stopping_scorer)
        if not summary["exported"]:
            raise UserError(f"the {method} run in {config.output} exported no adapter")
        summaries[method] = summary
    job.loras, job.labels = [Path(summaries[m]["exported"]["kohya"]) for m in methods], methods
    job.training = {
        method: {
            k: summaries[method].get(k) for k in ("rank", "alpha", "steps_run", "best_step", "best_val_loss")
        }
        for method in methods
    }
    results = evaluate(job, lock_held=True)
    print_summary(results, job.output)
    return results
