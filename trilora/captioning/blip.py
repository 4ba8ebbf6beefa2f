"""BLIP captions (Li et al. 2022) through transformers, from a local folder: what the seed and
kohya's make_captions.py use. `--text` makes them conditional: the caption continues that text."""

from pathlib import Path

import torch

from trilora.config import CaptionConfig
from trilora.errors import UserError


class BlipCaptioner:
    def __init__(self, folder: Path, settings: CaptionConfig, device: torch.device):
        # here, not at the top: transformers (~1 s), which importing this module does not need
        from transformers import BlipForConditionalGeneration, BlipProcessor

        dtype = torch.float16 if device.type == "cuda" else torch.float32
        try:
            self.processor = BlipProcessor.from_pretrained(folder, local_files_only=True)
            self.model = BlipForConditionalGeneration.from_pretrained(
                folder, local_files_only=True, dtype=dtype
            )
        except (OSError, ValueError) as error:
            raise UserError(f"cannot load BLIP from {folder}: {str(error).splitlines()[0]}; it needs the "
                            "model, tokenizer and preprocessor files of the downloaded folder") from None  # fmt: skip
        self.model.to(device).eval()
        self.device, self.dtype, self.settings = device, dtype, settings
        positions = self.model.config.text_config.max_position_embeddings
        if settings.max_length > positions:
            raise UserError(f"--max-length {settings.max_length} is beyond this BLIP's {positions} text positions; "
                            f"give --max-length {positions} or less")  # fmt: skip
        if settings.text is not None:
            prompt = len(self.processor.tokenizer(settings.text)["input_ids"])
            if prompt >= settings.max_length:
                raise UserError(f"--text is {prompt} tokens, which leaves no room under --max-length "
                                f"{settings.max_length}: shorten it or raise --max-length")  # fmt: skip

    @torch.no_grad()
    def __call__(self, images) -> list[str]:
        s = self.settings
        text = None if s.text is None else [s.text] * len(images)
        inputs = self.processor(images=images, text=text, return_tensors="pt").to(self.device)
        inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
        tokens = self.model.generate(
            **inputs, num_beams=s.beams, min_length=s.min_length, max_length=s.max_length
        )
        return [" ".join(c.split()) for c in self.processor.batch_decode(tokens, skip_special_tokens=True)]
