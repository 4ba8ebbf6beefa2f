"""What the Stable Diffusion 1.x and 2.x families share: their diffusers folders, how a caption
becomes conditioning (one CLIP tokenizer padded to 77 tokens, the text encoder's last hidden state
after its final layer norm; SD 2.x's 23-layer OpenCLIP makes that the penultimate block of the
original 24) and how the UNet is called (cross-attention on that state, nothing added), kohya's
version header."""

from trilora.families.family import Family


def sd_family(**differences):
    """A `Family` of the StableDiffusionPipeline: what SD 1.x and 2.x share, and `differences`."""
    shared = dict(pipeline="StableDiffusionPipeline", parts=("unet", "text_encoder"), tokenize=tokenize,
                  encode=encode, denoise=denoise)  # fmt: skip
    return Family(**shared, **differences)


def sd_folder(model_index: dict) -> bool:
    return model_index.get("_class_name") == "StableDiffusionPipeline"


def version_header(version: str, v2: bool, architecture: str, prediction_type: str, always: bool) -> dict:
    """kohya's `ss_base_model_version` (`sd_v1`, `sd_v2`, `_v` added for v prediction: sd-scripts'
    model_util.get_model_version_str_for_sd1_sd2), `ss_v2`, and the modelspec architecture
    (sai_model_spec.py) with its prediction type, always or (SD 1.x, as trilora wrote it first) for v."""
    v = prediction_type == "v_prediction"
    header = {
        "ss_base_model_version": version + ("_v" if v else ""),
        "ss_v2": str(v2),
        "modelspec.architecture": architecture,
    }
    if always or v:
        header["modelspec.prediction_type"] = "v" if v else "epsilon"
    return header


def tokenize(pipe, captions: list[str]):
    """Token ids padded to the tokenizer's length (77 for CLIP): (N, 77)."""
    tokenizer = pipe.tokenizer
    return tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                     return_tensors="pt").input_ids  # fmt: skip


def encode(pipe, input_ids):
    """The last hidden state the UNet attends to: (N, 77) -> (N, 77, D)."""
    return pipe.text_encoder(input_ids.to(pipe.text_encoder.device))[0]


def denoise(unet, noisy, timesteps, condition, sizes=None):
    """The UNet's prediction; SD takes no size conditioning (`sizes` unused)."""
    return unet(noisy, timesteps, condition).sample
