"""The rest of the tree, one section per command, and which sections each command reads.

`Tree` holds every section; a TOML file is checked against all of it (so one file can configure
every command, and a misspelt key anywhere is an error), and each command takes the fields its
`Command` names. Flags are the field names with `-` for `_`, unique within a command; `Command.flags`
renames the few that would collide (in `compare`, training's `--steps` is `--train-steps`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from trilora import __version__
from trilora.config.fields import bounds_text, build, iter_fields, opt, shown_default, to_toml
from trilora.config.tools import ToolsConfig
from trilora.config.training import METHODS, RunConfig
from trilora.errors import UserError

# Sampler names -> diffusers scheduler classes (imported when used: `--help` stays fast).
SCHEDULERS = {
    "ddim": "DDIMScheduler",
    "ddpm": "DDPMScheduler",
    "dpm++": "DPMSolverMultistepScheduler",
    "euler": "EulerDiscreteScheduler",
    "euler_a": "EulerAncestralDiscreteScheduler",
    "lms": "LMSDiscreteScheduler",
    "pndm": "PNDMScheduler",
    "unipc": "UniPCMultistepScheduler",
}


def size_ok(value: int | None) -> bool:
    return value is None or (value >= 8 and value % 8 == 0)


def refuse(checks: list[tuple[bool, str]]) -> None:
    for ok, message in checks:
        if not ok:
            raise UserError(message)


@dataclass
class SamplingConfig:
    """How images are generated, shared by `generate` and `evaluate`; the defaults are the TriLoRA
    paper's protocol (§4.2: seed 30, 20 steps, guidance 7.5)."""

    seed: int = opt(30, "Image k of each prompt starts from the latent of seed + k.", low=0, high=2**64 - 1)
    steps: int = opt(20, "Denoising steps.", low=1, high=1000)
    guidance: float = opt(7.5, "Classifier-free guidance scale.", low=0, high=100)
    num_images: int = opt(1, "Images per prompt.", metavar="K", low=1, high=10000)
    height: int | None = opt(
        None, "Image height, a multiple of 8 (default: the base model's).", low=8, high=4096
    )
    width: int | None = opt(
        None, "Image width, a multiple of 8 (default: the base model's).", low=8, high=4096
    )
    scheduler: str | None = opt(
        None, "Sampler (default: the base model's own).", choices=tuple(sorted(SCHEDULERS))
    )

    def validate(self) -> None:
        refuse([
            (self.num_images >= 1, f"--num-images must be at least 1, got {self.num_images}"),
            (self.steps >= 1, f"--steps must be at least 1, got {self.steps}"),
            (self.seed + self.num_images <= 2**64, f"--seed {self.seed} + --num-images {self.num_images} passes "
             "the largest seed, 2^64 - 1: choose a smaller seed"),
            (size_ok(self.height), f"--height must be a positive multiple of 8 (the VAE's factor), got {self.height}"),
            (size_ok(self.width), f"--width must be a positive multiple of 8 (the VAE's factor), got {self.width}"),
        ])  # fmt: skip


@dataclass
class GenerateConfig:
    prompt: list[str] = opt([], "The prompt (repeatable: each prompt is a row of the grid).", repeat=True,
                            metavar="TEXT")  # fmt: skip
    negative_prompt: str | None = opt(None, "What the images should not show.", metavar="TEXT")
    lora: list[str] = opt([], "Adapter file, with an optional strength (repeatable).", repeat=True,
                          metavar="FILE[:STRENGTH]", path=True)  # fmt: skip
    strengths: list[float] = opt([], "A prompt x strength grid from one model load: a column per value, each "
                                 "adapter's strength multiplied by it (e.g. 0,0.5,1); also writes grid.png.",
                                 comma=True, low=-10, high=10)  # fmt: skip
    adapters: str = opt("stacked", "With several --lora: stacked (all of them in each image) or apart (the "
                        "base model, then each adapter alone, side by side).", choices=("stacked", "apart"))  # fmt: skip
    device: str = opt("auto", "Device: auto, cpu, cuda, cuda:N.")
    output: str = opt("", "A .png file (one image) or a folder.", metavar="PATH", path=True)

    def validate(self) -> None:
        refuse([(bool(self.prompt) and all(p.strip() for p in self.prompt),
                 "no prompt: pass --prompt TEXT (an empty prompt is not one)"),
                (not self.strengths or bool(self.lora), "--strengths multiplies the adapters' strengths: give "
                 "--lora FILE too"),
                (bool(self.output), "no output: pass --output FILE.png or --output DIR")])  # fmt: skip


@dataclass
class EvaluateConfig:
    lora: list[str] = opt([], "Adapter to evaluate (repeatable).", repeat=True, metavar="FILE", path=True)
    name: list[str] = opt([], "Report name of each --lora, in order (default: file names).", repeat=True)
    prompts: str = opt(
        "",
        "Prompts: a text file (one a line) or a folder of .txt captions.",
        metavar="FILE|DIR",
        path=True,
    )
    reference: str = opt("", "Folder of real images to compare with.", metavar="DIR", path=True)
    strengths: list[float] = opt([0.0, 0.25, 0.5, 0.75, 1.0], "Adapter strengths, comma-separated "
                                 "(0 = the base model).", comma=True, low=0, high=10)  # fmt: skip
    batch_size: int = opt(4, "Images per generation batch (x 8 per metric-network batch).", low=1, high=1024)
    device: str = opt("auto", "Device: auto, cpu, cuda, cuda:N.")
    inception_weights: str | None = opt(None, "pt_inception-2015-12-05-6726825d.pth, the FID network of "
                                        "pytorch-fid and torch-fidelity.", metavar="FILE", path=True)  # fmt: skip
    clip_model: str | None = opt(
        None, "A transformers CLIP folder, e.g. openai/clip-vit-large-patch14.", metavar="DIR", path=True
    )
    kid_subsets: int = opt(100, "KID subsets.", low=1, high=100000)
    kid_subset_size: int | None = opt(
        None, "Images per KID subset (default: half the smaller set, at most 1000).", low=2, high=100000
    )
    clip_tolerance: float = opt(1.0, "The recommended strength has the lowest FID among those within this "
                                "many CLIP-score points of the best.", low=0, high=100)  # fmt: skip
    grid_prompts: int = opt(8, "Prompts shown in the report's image grids.", low=0, high=1000)
    cache: str | None = opt(
        None, "Cache of generated images (default: OUTPUT/cache).", metavar="DIR", path=True
    )
    output: str = opt("", "Report folder.", metavar="DIR", path=True)
    overwrite: bool = opt(False, "Replace an earlier report in --output (default: refuse); its image "
                          "cache is kept and reused.", saved=False)  # fmt: skip

    def validate(self) -> None:
        refuse([
            (self.batch_size >= 1, f"--batch-size must be at least 1, got {self.batch_size}"),
            (self.kid_subsets >= 1, "--kid-subsets must be at least 1"),
            (self.kid_subset_size is None or self.kid_subset_size >= 2, "--kid-subset-size must be at least 2"),
            (self.clip_tolerance >= 0, "--clip-tolerance must be 0 or more"),
            (self.grid_prompts >= 0, "--grid-prompts must be 0 or more"),
            (all(s >= 0 for s in self.strengths), "--strengths must be 0 or more (0 is the base model)"),
            (bool(self.strengths), "--strengths: give at least one strength, e.g. 0,0.5,1"),
            (bool(self.output), "no output folder: pass --output DIR"),
        ])  # fmt: skip


@dataclass
class CompareConfig:
    methods: list[str] = opt(list(METHODS), "Methods to train, comma-separated.", choices=METHODS, comma=True)

    def validate(self) -> None:
        refuse([(bool(self.methods) and len(set(self.methods)) == len(self.methods),
                 f"--methods must be distinct names among {', '.join(METHODS)}, comma-separated")])  # fmt: skip


@dataclass
class BenchConfig:
    world: str = opt("toy", "Which benchmark (the toy world).", choices=("toy",))
    methods: list[str] = opt(list(METHODS), "Adapter types, comma-separated.", choices=METHODS, comma=True)
    ranks: list[int] = opt([4, 16], "Adapter ranks, comma-separated.", comma=True, low=1, high=1024)
    seeds: int = opt(3, "Training seeds 0..N-1 per method and rank.", low=1, high=1000)
    steps: int = opt(300, "Optimiser steps per run.", low=1, high=10000000)
    eval_every: int = opt(25, "Validate, checkpoint and score every N steps.", low=1, high=10000000)
    prompts: int = opt(48, "Test prompts per evaluation.", low=2, high=100000)
    lr: float = opt(1e-3, "Learning rate.", low=1e-12, high=10)
    patience: int = opt(
        5,
        "Patience of the replayed stopping rules (each also at twice it, and to the end).",
        low=0,
        high=100000,
    )
    output: str = opt("runs/bench-toy", "Report folder.", metavar="DIR", path=True)
    base: str | None = opt(
        None, "Toy base model folder (default: the shipped trilora/toy/base).", metavar="DIR", path=True
    )
    overwrite: bool = opt(False, "Replace an earlier benchmark in --output (default: refuse).", saved=False)
    resume: bool = opt(False, "Continue the bench in --output (same settings): finished runs are kept, an "
                       "interrupted one resumes from its last checkpoint, scores computed already are reused.",
                       saved=False)  # fmt: skip
    train_images: int = opt(30, "Training renders of the new style.", low=2, high=100000)
    train_colours: int = opt(3, "Wall colours of the training renders (the first N of red, blue, white); "
                             "test prompts ask for all eight, fidelity is also scored on the unseen ones.", low=1, high=3)  # fmt: skip
    signal_prompts: int = opt(0, "Held-out prompts (not the test prompts) scored at every checkpoint: the "
                              "generation signal for stopping (0 = none).", low=0, high=100000)  # fmt: skip
    truth_prompts: int = opt(0, "Ground-truth prompts scored at every checkpoint (the test prompts, extended; "
                             "0 = --prompts): the joint hit that stopping rules are judged by, with bootstrap "
                             "intervals.", low=0, high=100000)  # fmt: skip
    tune_seeds: int = opt(0, "Seeds 0..N-1 tune the stopping rules (the default is chosen on them), the others "
                          "are held out to report them (0 = no split).", low=0, high=1000)  # fmt: skip
    strengths: list[float] = opt([], "Also score each run's best and last adapter at these strengths "
                                 "(the strength-control curve), comma-separated.", comma=True, low=0, high=10)  # fmt: skip

    def validate(self) -> None:
        ranks, steps, every = self.ranks, self.steps, self.eval_every
        refuse([
            (bool(self.methods), f"--methods: give at least one of {', '.join(METHODS)}"),
            (bool(ranks) and min(ranks) >= 1, f"--ranks must all be at least 1, got {','.join(map(str, ranks))}"),
            (self.seeds >= 1, f"--seeds must be at least 1, got {self.seeds}"),
            (steps >= 1 and every >= 1, "--steps and --eval-every must be at least 1"),
            (every < 1 or steps % every == 0,
             f"--steps ({steps}) must be a multiple of --eval-every ({every}) so that the last step is scored"),
            (self.prompts >= 2, f"--prompts must be at least 2 (FID needs two images), got {self.prompts}"),
            (self.lr > 0, f"--lr must be positive, got {self.lr}"),
            (self.patience >= 0, f"--patience must be 0 or more, got {self.patience}"),
            (self.train_images >= 2, f"--train-images must be at least 2, got {self.train_images}"),
            (1 <= self.train_colours <= 3, f"--train-colours must be 1, 2 or 3, got {self.train_colours}"),
            (self.signal_prompts == 0 or self.signal_prompts >= 2, "--signal-prompts must be 0 or at least 2"),
            (self.tune_seeds < self.seeds, f"--tune-seeds ({self.tune_seeds}) must be below --seeds ({self.seeds}) "
             "so that some seeds are held out (0: no split)"),
            (all(s >= 0 for s in self.strengths), "--strengths must be 0 or more"),
            (not (self.resume and self.overwrite), "--resume and --overwrite contradict each other"),
        ])  # fmt: skip


@dataclass
class DemoConfig:
    output: str = opt("runs/demo", "Demo folder.", metavar="DIR", path=True)
    steps: int = opt(400, "At most this many steps (validation may stop sooner).", low=1, high=100000)
    base: str | None = opt(
        None, "Another toy-world base model folder (default: the shipped one).", metavar="DIR", path=True
    )
    overwrite: bool = opt(False, "Replace an earlier demo in --output (default: refuse).", saved=False)
    captions: str = opt("given", "Train on the renders' own captions, or on those `trilora caption --model toy` "
                        "writes for them (the seed workflow: uncaptioned images, auto-captioned).",
                        choices=("given", "toy"))  # fmt: skip

    def validate(self) -> None:
        refuse([(self.steps >= 1, f"--steps must be at least 1, got {self.steps}")])


@dataclass
class CaptionConfig:
    model: str = opt("", "Captioning model: a BLIP folder (BlipForConditionalGeneration, e.g. "
                     "Salesforce/blip-image-captioning-large), a WD14-style tagger folder (model.onnx + "
                     "selected_tags.csv, e.g. SmilingWolf/wd-vit-tagger-v3), or `toy` (the toy world's).",
                     metavar="PATH", path=True)  # fmt: skip
    prefix: str | None = opt(
        None, "Put this first in every caption written (a trigger word).", metavar="TEXT"
    )
    overwrite: bool = opt(False, "Replace existing captions too (default: caption only images without one).",
                          saved=False)  # fmt: skip
    batch_size: int = opt(8, "Images per batch.", low=1, high=1024)
    device: str = opt("auto", "Device: auto, cpu, cuda, cuda:N.")
    beams: int = opt(3, "BLIP: beam-search width (1 = greedy).", low=1, high=64)
    min_length: int = opt(5, "BLIP: fewest tokens in a caption.", low=1, high=512)
    max_length: int = opt(75, "BLIP: most tokens in a caption.", low=1, high=512)
    text: str | None = opt(None, "BLIP: conditional captioning, the caption continues this text "
                           "(e.g. 'a painting of').", metavar="TEXT")  # fmt: skip
    general_threshold: float = opt(0.35, "Tagger: lowest confidence of a general tag.", low=0, high=1)
    character_threshold: float = opt(0.85, "Tagger: lowest confidence of a character tag.", low=0, high=1)
    undesired_tags: list[str] = opt([], "Tagger: tags never written, comma-separated.", comma=True)
    keep_underscores: bool = opt(False, "Tagger: keep the tags' underscores (default: spaces, except in "
                                 "emoticons such as ^_^).")  # fmt: skip

    def validate(self) -> None:
        refuse([
            (bool(self.model), "no captioning model: pass --model PATH (a BLIP or WD14 tagger folder) or --model toy"),
            (self.batch_size >= 1, f"--batch-size must be at least 1, got {self.batch_size}"),
            (self.beams >= 1, f"--beams must be at least 1, got {self.beams}"),
            (1 <= self.min_length <= self.max_length,
             f"need 1 <= --min-length <= --max-length, got {self.min_length} and {self.max_length}"),
            (0 <= self.general_threshold <= 1 and 0 <= self.character_threshold <= 1,
             "--general-threshold and --character-threshold must be in [0, 1]"),
        ])  # fmt: skip


@dataclass
class UIConfig:
    root: str = opt("ui-workspace", "The workspace: every folder the UI reads or writes is under it (made, with "
                    "the toy world's demo data, on first start).", metavar="DIR", path=True)  # fmt: skip
    host: str = opt("127.0.0.1", "Address to listen on; any but a loopback address needs --token.")
    port: int = opt(7860, "Port to listen on (0: any free one).", low=0, high=65535)
    token: str | None = opt(None, "Secret the browser must send with every request (default: a new random "
                            "one, in the printed address); `auto` makes one for a non-loopback --host.")  # fmt: skip
    max_jobs: int = opt(1, "Training jobs at once; more wait in the queue.", low=1, high=64)
    models: list[str] = opt([], "A folder of models the UI offers where they are, read-only (an A1111 or ComfyUI "
                            "`models` folder; repeatable): base models, LoRAs and metric models in it are "
                            "listed and may be named by the forms, never copied or written.", repeat=True,
                            metavar="DIR", path=True)  # fmt: skip

    def validate(self) -> None:
        refuse([(0 <= self.port <= 65535, f"--port must be in 0..65535, got {self.port}"),
                (self.max_jobs >= 1, f"--max-jobs must be at least 1, got {self.max_jobs}")])  # fmt: skip


@dataclass
class Tree(RunConfig):
    """Every section of every command: what a `--config` file may hold (the training run's first)."""

    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    compare: CompareConfig = field(default_factory=CompareConfig)
    bench: BenchConfig = field(default_factory=BenchConfig)
    demo: DemoConfig = field(default_factory=DemoConfig)
    caption: CaptionConfig = field(default_factory=CaptionConfig)
    ui: UIConfig = field(default_factory=UIConfig)
    tools: ToolsConfig = field(default_factory=ToolsConfig)

    def run_config(self) -> RunConfig:
        """The training run's part of the tree (what `trilora train` saves as config.json)."""
        return RunConfig(output=self.output, **{name: getattr(self, name) for name in RUN_SECTIONS})


RUN_SECTIONS = ("model", "data", "adapter", "train", "validation", "checkpoint", "export")
TRAINING = {name: None for name in RUN_SECTIONS}


@dataclass(frozen=True)
class Command:
    """Which settings a command reads: section -> its field names (None: all; section None: top level)."""

    name: str
    sections: dict[str | None, tuple[str, ...] | None]
    except_: tuple[str, ...] = ()  # "section.field"s of those sections the command does not read
    flags: dict[str, str] = field(default_factory=dict)  # "section.field" -> flag, where not the field's name
    positional: tuple[str, ...] = ()  # "section.field"s given as positional arguments
    modes: dict[str, str] = field(default_factory=dict)  # flags that choose what to do, not settings
    notes: dict[str, str] = field(default_factory=dict)  # "section.field" -> what its default is here

    def fields(self):
        """(key "section.field", section, dataclass field, type, flag name) of every setting it reads."""
        for section, spec, annotation in iter_fields(Tree):
            if section not in self.sections:
                continue
            names = self.sections[section]
            key = f"{section}.{spec.name}" if section else spec.name
            if (names is None or spec.name in names) and key not in self.except_:
                flag = self.flags.get(key, spec.name.replace("_", "-"))
                yield key, section, spec, annotation, flag


COMMANDS = {
    command.name: command
    for command in [
        Command(
            "train",
            {None: ("output",), **TRAINING},
            modes={
                "dry_run": "Print the trainable parameters, the adapter file size and a GPU memory "
                "estimate; load no weights or data, train nothing."
            },
        ),  # fmt: skip
        Command("generate", {"model": None, "sampling": None, "generate": None}),
        Command("evaluate", {"model": None, "sampling": None, "evaluate": None}),
        Command(
            "compare",
            {"model": None, "sampling": None, "evaluate": None, "compare": None, **TRAINING},
            except_=(
                "evaluate.lora",
                "evaluate.name",
                "adapter.method",
                "train.device",
                "export.name",
                "checkpoint.resume",
                "checkpoint.overwrite",
                "validation.clip_model",
            ),  # per method, or compare's own (its trainings stop on the validation loss or the toy judge)
            flags={
                "train.steps": "train-steps",
                "train.batch_size": "train-batch-size",
                "train.seed": "train-seed",
            },
            notes={
                "evaluate.prompts": "default: the --data captions, with the trigger word",
                "evaluate.reference": "default: the --data images",
                "evaluate.device": "also training's",
            },
        ),  # fmt: skip
        Command(
            "check-data",
            {"data": ("data", "resolution", "trigger", "caption_extension")},
            positional=("data.data",),
            modes={"json": "Print the report as JSON."},
        ),  # fmt: skip
        Command("bench", {"bench": None}, positional=("bench.world",)),
        Command(
            "caption", {"data": ("data", "caption_extension"), "caption": None}, positional=("data.data",)
        ),
        Command("demo", {"demo": None}),
        Command("ui", {"ui": None}),
        Command(
            "resize",
            {"tools": ("file", "rank", "energy", "max_error", "save_dtype", "output", "overwrite")},
            positional=("tools.file",),
        ),
        Command(
            "merge",
            {"model": None, "tools": ("lora", "rank", "save_dtype", "device", "output", "overwrite")},
            notes={
                "model.base": "a checkpoint to fold the adapters into; without it they merge into one adapter"
            },
        ),  # fmt: skip
        Command(
            "extract",
            {
                "model": None,
                "tools": (
                    "tuned",
                    "rank",
                    "energy",
                    "max_error",
                    "save_dtype",
                    "device",
                    "output",
                    "overwrite",
                ),
            },
        ),  # fmt: skip
        Command(
            "convert",
            {"tools": ("file", "to", "save_dtype", "output", "overwrite")},
            positional=("tools.file",),
        ),
    ]
}


def tree_from_dict(data: dict[str, Any], source: str, command: str) -> Tree:
    return build(Tree, data, source, f"`trilora {command} --help`")


def command_settings(tree: RunConfig, command: str) -> dict[str, Any]:
    """The settings `command` reads, nested by section, less how it was started (--overwrite,
    --resume): what it saves beside its outputs as settings.toml, for `--config` to rerun."""
    out: dict[str, Any] = {}
    for _, section, spec, _, _ in COMMANDS[command].fields():
        if not spec.metadata["saved"]:
            continue
        value = getattr(getattr(tree, section) if section else tree, spec.name)
        (out.setdefault(section, {}) if section else out)[spec.name] = value
    return out


SETTINGS_FILE = "settings.toml"


def settings_toml(tree: RunConfig, command: str) -> str:
    """settings.toml of a command's outputs: `trilora COMMAND --config settings.toml` runs it again."""

    header = f"trilora {__version__}: the settings of this `trilora {command}`; rerun with --config"
    return to_toml(command_settings(tree, command), header)


def flag_help(spec) -> str:
    """The field's help with its default, as `--help` prints it."""
    notes = [f"default: {shown_default(spec)}"] if shown_default(spec) else []
    notes += [f"range {bounds_text(spec)}"] if bounds_text(spec) else []
    return f"{spec.metadata['help']} ({'; '.join(notes)})" if notes else spec.metadata["help"]
