"""What the Stable Diffusion 1.x and 2.x families share: their diffusers folders, kohya's version header."""


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
