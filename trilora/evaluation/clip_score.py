"""CLIP score: how well images match their prompts (Hessel et al. 2021, https://arxiv.org/abs/2104.08718).

    CLIP score = max(100 · cos(E_image, E_text), 0)

per image and prompt, averaged over images - the definition of torchmetrics and of most text-to-image
papers (with clip-vit-large-patch14). The model is a transformers CLIP folder read from disk only.
"""

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from transformers import CLIPModel, CLIPTokenizer

from trilora.files import read_text_file

try:  # transformers 5: the PIL twin; its default processor would need torchvision and resizes differently
    from transformers import CLIPImageProcessorPil as CLIPImageProcessor
except ImportError:  # transformers 4: CLIPImageProcessor is the PIL one
    from transformers import CLIPImageProcessor

from trilora.errors import UserError

CLIP_MODEL_ID = "openai/clip-vit-large-patch14"


def clip_score_from_embeddings(image_embeddings: torch.Tensor, text_embeddings: torch.Tensor) -> torch.Tensor:
    """Scores (N,) of image embeddings (N, D) against their text embeddings (N, D), row by row."""
    cosine = torch.nn.functional.cosine_similarity(image_embeddings.double(), text_embeddings.double(), dim=1)
    return (100 * cosine).clamp(min=0)


@dataclass
class ClipScorer:
    model: CLIPModel
    tokenizer: CLIPTokenizer
    image_processor: CLIPImageProcessor  # resizes with PIL (bicubic), as CLIP was trained

    @torch.no_grad()
    def scores(self, images: list[Image.Image], prompts: list[str], batch_size: int = 32) -> torch.Tensor:
        """The CLIP score (N,) of each image against its prompt; prompts are cut at CLIP's 77 tokens."""
        if len(images) != len(prompts):
            raise ValueError(f"need one prompt per image; got {len(images)} images, {len(prompts)} prompts")
        device = self.model.device
        scores = []
        for start in range(0, len(images), batch_size):
            pixels = self.image_processor(images=images[start : start + batch_size], return_tensors="pt")
            tokens = self.tokenizer(
                prompts[start : start + batch_size],
                padding=True,
                truncation=True,
                max_length=self.tokenizer.model_max_length,
                return_tensors="pt",
            )
            image_embeddings = self.model.get_image_features(pixel_values=pixels["pixel_values"].to(device))
            text_embeddings = self.model.get_text_features(
                input_ids=tokens["input_ids"].to(device), attention_mask=tokens["attention_mask"].to(device)
            )
            scores.append(
                clip_score_from_embeddings(_tensor(image_embeddings), _tensor(text_embeddings)).cpu()
            )
        return torch.cat(scores) if scores else torch.zeros(0, dtype=torch.float64)


def _tensor(output) -> torch.Tensor:
    """get_*_features return a tensor, or in newer transformers an output whose pooler_output is it."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def missing_clip_message(path) -> str:
    return (
        f"CLIP model not found: {path}; download the {CLIP_MODEL_ID} folder from the Hugging Face hub "
        f"beforehand (e.g. `hf download {CLIP_MODEL_ID} --local-dir DIR`) and pass --clip-model DIR"
    )


def load_clip_scorer(path: str | Path | None, device: torch.device | str = "cpu") -> ClipScorer:
    """The CLIP model, tokenizer and image processor in the folder `path`; nothing is downloaded."""
    if path is None:
        raise UserError(missing_clip_message("no --clip-model given"))
    path = Path(path)
    if not (path / "config.json").is_file():
        raise UserError(missing_clip_message(f"{path} (no config.json)" if path.is_dir() else path))

    try:
        kind = json.loads(read_text_file(path / "config.json", "CLIP config")).get("model_type")
    except (ValueError, AttributeError):
        kind = None
    if kind != "clip":
        raise UserError(f"{path} holds a {kind or 'unknown'} model, not CLIP (its config.json says model_type "
                        f"{kind!r}); give a transformers CLIP folder such as {CLIP_MODEL_ID}")  # fmt: skip
    try:
        model = CLIPModel.from_pretrained(path, local_files_only=True)
        tokenizer = CLIPTokenizer.from_pretrained(path, local_files_only=True)
        image_processor = CLIPImageProcessor.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError, KeyError) as error:
        raise UserError(
            f"cannot load the CLIP model in {path}: {str(error).strip().splitlines()[0]}; it must be a transformers "
            f"CLIP folder such as {CLIP_MODEL_ID} (config.json, weights, tokenizer and preprocessor_config.json)"
        ) from None
    return ClipScorer(model.float().to(device).eval(), tokenizer, image_processor)
