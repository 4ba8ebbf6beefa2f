"""Tiny random-weight captioning models for tests, built from configs (nothing downloads):
a BLIP with a 16-word vocabulary, and a WD14-shaped ONNX tagger whose tags follow colour."""

from pathlib import Path

import numpy as np

WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "photo", "of", "red", "blue", "circle",
         "square", "house", "the", "on", "green", "[DEC]"]  # fmt: skip


def save_tiny_blip(folder: Path, seed: int = 0) -> Path:
    """A BlipForConditionalGeneration folder (model, tokenizer, preprocessor) at 32 px."""
    # here, not at the top: torch (~1.5 s), which importing this module does not need
    import torch

    # here, not at the top: transformers (~1 s), which importing this module does not need
    from transformers import (
        BertTokenizerFast,
        BlipConfig,
        BlipForConditionalGeneration,
        BlipImageProcessor,
        BlipProcessor,
    )

    tokenizer = BertTokenizerFast(vocab={word: i for i, word in enumerate(WORDS[:-1])})
    tokenizer.add_special_tokens({"bos_token": "[DEC]"})
    ids = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.sep_token_id,
               sep_token_id=tokenizer.sep_token_id, pad_token_id=tokenizer.pad_token_id)  # fmt: skip
    config = BlipConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=64, **ids),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=32,
    )  # fmt: skip
    torch.manual_seed(seed)
    BlipForConditionalGeneration(config).save_pretrained(folder)
    BlipProcessor(BlipImageProcessor(size={"height": 32, "width": 32}), tokenizer).save_pretrained(folder)
    return folder


# (name, category, weights on the mean B, G, R of the input, bias): category 9 rating, 0 general, 4 character
TAGGER_TAGS = [
    ("general", 9, (0.0, 0.0, 0.0), 5.0),
    ("red_background", 0, (-0.05, 0.0, 0.05), 0.0),
    ("blue_background", 0, (0.05, 0.0, -0.05), 0.0),
    ("^_^", 0, (0.0, 0.0, 0.0), 3.0),
    ("long_hair", 0, (0.0, 0.0, 0.0), -0.2),  # confidence 0.45: above the default 0.35
    ("hatsune_miku", 4, (0.0, 0.0, 0.0), 2.5),  # 0.92: above the default character threshold 0.85
]


def save_tiny_tagger(folder: Path, size: int = 16) -> Path:
    """model.onnx (NHWC BGR 0-255 in, one sigmoid per tag out, from the mean colour) + selected_tags.csv."""
    # onnx: only for building test models (the dev extra), not a dependency of trilora
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weights = np.array([w for _, _, w, _ in TAGGER_TAGS], dtype=np.float32).T  # (3, tags)
    bias = np.array([b for *_, b in TAGGER_TAGS], dtype=np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("ReduceMean", ["input", "axes"], ["mean"], keepdims=0),
            helper.make_node("MatMul", ["mean", "weights"], ["logits"]),
            helper.make_node("Add", ["logits", "bias"], ["shifted"]),
            helper.make_node("Sigmoid", ["shifted"], ["output"]),
        ],
        "tiny_tagger",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", size, size, 3])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", len(TAGGER_TAGS)])],
        [numpy_helper.from_array(np.array([1, 2], dtype=np.int64), "axes"),
         numpy_helper.from_array(weights, "weights"), numpy_helper.from_array(bias, "bias")],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(folder / "model.onnx"))
    rows = ["tag_id,name,category,count"] + [f"{i},{n},{c},100" for i, (n, c, _, _) in enumerate(TAGGER_TAGS)]
    (folder / "selected_tags.csv").write_text("\n".join(rows) + "\n")
    return folder
