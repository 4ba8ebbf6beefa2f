"""trilora: fine-tune Stable Diffusion 1.x with LoRA and TriLoRA adapters."""

import os

# No model hub, ever: every file comes from the user's disk or from this package, whatever the
# environment says (HF_HUB_OFFLINE=0 must not let a library reach the hub).
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

__version__ = "0.1.0"
