"""Our adapter keys (`<part>.<module path>`) and the module paths that adapter files use: the one
place of that rule, for every format.

Both the kohya and the diffusers layout name the text encoders' modules as transformers' older
`CLIPTextModel` did, under `text_model.`; transformers 5's `CLIPTextModel` has no such level, its
`CLIPTextModelWithProjection` (SDXL's second encoder) has. Keys read from files leave it out
(`our_key`); `model_path` puts it back for a model that has that level.
"""

PARTS = ("unet", "text_encoder", "text_encoder_2")
TEXT_MODEL = "text_model."


def file_path(key: str) -> tuple[str, str]:
    """`unet.down_blocks.0...` -> ("unet", "down_blocks.0..."); `text_encoder.encoder.layers.0...` ->
    ("text_encoder", "text_model.encoder.layers.0...")."""
    part, _, path = key.partition(".")
    if part not in PARTS:
        raise ValueError(f"adapter key {key!r} does not start with one of {PARTS}")
    if part.startswith("text_encoder") and not path.startswith(TEXT_MODEL):
        path = TEXT_MODEL + path
    return part, path


def our_key(part: str, path: str) -> str:
    """The inverse of `file_path`: our key of a file's module path."""
    return f"{part}.{path.removeprefix(TEXT_MODEL)}"


def model_path(model, path: str) -> str:
    """The path of our key's module in a text encoder `model` (with `text_model.` where it has that level)."""
    return TEXT_MODEL + path if hasattr(model, "text_model") and not path.startswith(TEXT_MODEL) else path


def module_of(pipe, key: str):
    """The module of `pipe` that the adapter key `<part>.<path>` names, or None where it has none (or
    none with a weight)."""
    part, _, path = key.partition(".")
    model = getattr(pipe, part, None)
    try:
        module = model.get_submodule(model_path(model, path)) if model is not None else None
    except AttributeError:
        return None
    return module if hasattr(module, "weight") else None
