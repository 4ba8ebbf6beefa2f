"""The adapter toolbox (resize, merge, extract, convert) on the tiny model of every family, each
result checked against the exact answer computed another way: ΔW formed and decomposed with
torch.linalg, the base model with the adapter loaded by diffusers' PEFT loader, a planted ΔW."""

import contextlib
import io
import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from trilora.adapters.inject import (
    adapter_layers,
    add_adapters,
    lora_pairs,
    text_encoder_targets,
    unet_conv_targets,
    unet_targets,
)
from trilora.adapters.math import flat
from trilora.base.load import load_base
from trilora.base.tiny import save_tiny_pipeline
from trilora.cli import main
from trilora.families.registry import FAMILIES
from trilora.formats.adapter import read_adapter
from trilora.formats.kohya import save_kohya
from trilora.formats.ldm import text_encoders
from trilora.formats.metadata import kohya_metadata
from trilora.formats.native import save_adapter
from trilora.inference.generate import load_adapters
from trilora.tools.common import TOOL_KEY, sgm_config

RANK = 4


def run(*args) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in args])
    return code, out.getvalue(), err.getvalue()


def refused(*args) -> str:
    code, out, err = run(*args)
    assert code == 2 and err.startswith("trilora: error: ") and err.count("\n") == 1, (code, out, err)
    return err


def deltas(adapter) -> dict[str, torch.Tensor]:
    """Each module's ΔW = alpha/r · up @ down, formed (fp64), from an Adapter."""
    return {key: (adapter.alphas[key] / down.shape[0]) * (flat(up).double() @ flat(down).double())
            for key, (down, up) in adapter.pairs.items()}  # fmt: skip


def read(path):
    return read_adapter(path, sgm_config)


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def world(request, tmp_path_factory):
    """(family, its tiny model folder, a kohya adapter of rank 4 on the UNet and text encoder(s) with
    random factors, that adapter's path as a second, different adapter), configs pointed at the tiny model."""
    family = FAMILIES[request.param]
    root = tmp_path_factory.mktemp(family.name)
    folder = save_tiny_pipeline(root / "model", seed=0, family=family.name)
    (root / "configs").mkdir()
    (root / "configs" / family.name).symlink_to(folder)
    mp = pytest.MonkeyPatch()
    mp.setenv("TRILORA_CONFIGS", str(root / "configs"))
    files = [random_adapter(family, folder, root / f"adapter-{seed}.safetensors", seed) for seed in (0, 1)]
    yield family, folder, *files
    mp.undo()


def random_adapter(family, folder, path, seed: int):
    """A rank-4 LoRA with Gaussian factors on every target of the UNet and the text encoder(s)."""
    pipe = load_base(folder).pipe
    pairs = {}
    generator = torch.Generator().manual_seed(seed)
    for part in family.parts:
        model = getattr(pipe, part)
        add_adapters(
            model, unet_targets(model) if part == "unet" else text_encoder_targets(model), "lora", RANK, 2.0
        )
        if part == "unet":  # and LoCon's 3x3 convolutions: 4-D factors
            add_adapters(model, unet_conv_targets(model)[:4], "lora", RANK, 2.0)
        for layer in adapter_layers(model).values():
            layer.down.weight.data = torch.randn(layer.down.weight.shape, generator=generator) * 0.3
            layer.up.weight.data = torch.randn(layer.up.weight.shape, generator=generator) * 0.3
        pairs |= {f"{part}.{k}": v for k, v in lora_pairs(model).items()}
    header = kohya_metadata(
        {"method": "lora", "rank": RANK, "alpha": 2.0, "name": path.stem}, family.header("epsilon")
    )
    sgm = dict(pipe.unet.config) if family.kohya_sgm else None
    return save_kohya(path, pairs, 2.0, header, torch.float32, sgm)


def test_resize_to_the_same_rank_gives_back_the_update(world, tmp_path):
    family, _, adapter_file, _ = world
    code, out, _ = run("resize", adapter_file, "--rank", RANK, "--output", tmp_path / "same.safetensors")
    assert code == 0, out
    before, after = deltas(read(adapter_file)), deltas(read(tmp_path / "same.safetensors"))
    assert before.keys() == after.keys() and len(before) > 10
    assert any(down.shape[-1] == 3 for down, _ in read(tmp_path / "same.safetensors").pairs.values())  # LoCon
    for key, delta in before.items():
        assert torch.allclose(after[key], delta, rtol=0, atol=1e-5 * delta.abs().max()), key
    diffusers = deltas(read(tmp_path / "same-diffusers"))  # the other layout says the same
    assert all(torch.allclose(diffusers[k], after[k], atol=1e-6) for k in after)
    assert read(tmp_path / "same.safetensors").family is family


def test_resize_to_a_lower_rank_has_the_eckart_young_error(world, tmp_path):
    _, _, adapter_file, _ = world
    code, out, _ = run("resize", adapter_file, "--rank", 2, "--output", tmp_path / "r2.safetensors")
    assert code == 0
    before, after = deltas(read(adapter_file)), deltas(read(tmp_path / "r2.safetensors"))
    largest = 0.0
    for key, delta in before.items():
        s = torch.linalg.svdvals(delta)
        expected = float((s[2:].square().sum() / s.square().sum()).sqrt())  # the tail, from ΔW itself
        error = float(torch.linalg.matrix_norm(after[key] - delta) / torch.linalg.matrix_norm(delta))
        assert abs(error - expected) <= 1e-4 * expected, key
        assert read(tmp_path / "r2.safetensors").pairs[key][0].shape[0] == 2
        largest = max(largest, expected)
    with safe_open(str(tmp_path / "r2.safetensors"), "pt") as f:
        metadata = f.metadata()
    record = json.loads(metadata[TOOL_KEY])
    assert record["command"] == "resize" and record["sources"][0]["sha256"]
    assert max(p["largest_error"] for p in record["kept"].values()) == pytest.approx(largest, rel=1e-4)
    assert metadata["ss_network_dim"] == "2" and metadata["ss_base_model_version"]  # A1111 still lists it
    assert "UNet:" in out and "% of the Frobenius energy kept" in out


def test_resize_by_energy_keeps_the_fewest_ranks_that_reach_it(world, tmp_path):
    _, _, adapter_file, _ = world
    assert run("resize", adapter_file, "--energy", 0.9, "--output", tmp_path / "e.safetensors")[0] == 0
    resized = read(tmp_path / "e.safetensors")
    for key, delta in deltas(read(adapter_file)).items():
        shares = torch.cumsum(torch.linalg.svdvals(delta).square(), 0)
        shares = shares / shares[-1]
        k = resized.pairs[key][0].shape[0]
        assert shares[k - 1] >= 0.9 - 1e-9 and (k == 1 or shares[k - 2] < 0.9), key


def test_resize_never_grows_and_bad_choices_write_nothing(world, tmp_path):
    _, _, adapter_file, _ = world
    for args in (["--rank", RANK + 1], [], ["--rank", 2, "--energy", 0.9]):
        refused("resize", adapter_file, *args, "--output", tmp_path / "x.safetensors")
    refused("resize", adapter_file, "--rank", 2, "--output", tmp_path / "x.bin")
    refused("resize", adapter_file, "--rank", 2, "--output", adapter_file)  # onto its input
    assert list(tmp_path.iterdir()) == []
    assert run("resize", adapter_file, "--rank", 2, "--output", tmp_path / "x.safetensors")[0] == 0
    refused(
        "resize", adapter_file, "--rank", 2, "--output", tmp_path / "x.safetensors"
    )  # exists: --overwrite
    assert (
        run("resize", adapter_file, "--rank", 1, "--output", tmp_path / "x.safetensors", "--overwrite")[0]
        == 0
    )
    (tmp_path / "mine.safetensors").write_bytes(b"not ours")
    refused("resize", adapter_file, "--rank", 2, "--output", tmp_path / "mine.safetensors", "--overwrite")
    assert (tmp_path / "mine.safetensors").read_bytes() == b"not ours"


def test_a_trilora_file_resizes_by_truncating_sigma(world, tmp_path):
    """With orthonormal U and V and a diagonal, descending Σ (TriLoRA's form), the best rank-k
    approximation keeps Σ's first k values: resize gives exactly that."""
    family, folder, _, _ = world
    unet = load_base(folder).pipe.unet
    name = unet_targets(unet)[0]
    out_features, in_features = unet.get_submodule(name).weight.shape[:2]
    generator = torch.Generator().manual_seed(3)
    u = torch.linalg.qr(torch.randn(out_features, RANK, generator=generator)).Q
    v = torch.linalg.qr(torch.randn(in_features, RANK, generator=generator)).Q
    sigma = torch.diag(torch.tensor([4.0, 2.0, 1.0, 0.5]))
    kernel = (1,) * (unet.get_submodule(name).weight.ndim - 2)
    state = {f"unet.{name}.down": v.T.reshape(RANK, in_features, *kernel).contiguous(),
             f"unet.{name}.mid": sigma, f"unet.{name}.up": u.reshape(out_features, RANK, *kernel).contiguous()}  # fmt: skip
    native = tmp_path / "adapter.safetensors"
    save_adapter(native, state, {"method": "trilora", "rank": RANK, "alpha": RANK, "family": family.name})
    assert (
        run("resize", native, "--rank", 2, "--output", tmp_path / "t2.safetensors", "--save-dtype", "fp32")[0]
        == 0
    )
    got = deltas(read(tmp_path / "t2.safetensors"))[f"unet.{name}"]
    assert torch.allclose(got, (u[:, :2] @ sigma[:2, :2] @ v[:, :2].T).double(), atol=1e-6)


def test_convert_kohya_to_diffusers_and_back_is_byte_identical(world, tmp_path):
    family, _, adapter_file, _ = world
    assert run("convert", adapter_file, "--to", "diffusers", "--output", tmp_path / "d")[0] == 0
    assert run("convert", tmp_path / "d", "--to", "kohya", "--output", tmp_path / "k.safetensors")[0] == 0
    original, back = load_file(str(adapter_file)), load_file(str(tmp_path / "k.safetensors"))
    assert original.keys() == back.keys()
    for key, tensor in original.items():
        assert tensor.dtype == back[key].dtype and tensor.numpy().tobytes() == back[key].numpy().tobytes(), (
            key
        )
    with safe_open(str(adapter_file), "pt") as a, safe_open(str(tmp_path / "k.safetensors"), "pt") as b:
        kept = b.metadata()
        assert a.metadata().items() <= kept.items() and json.loads(kept[TOOL_KEY])["command"] == "convert"
    assert read(tmp_path / "d").family is family
    refused(
        "convert", adapter_file, "--to", "kohya", "--output", tmp_path / "folder"
    )  # a kohya file is .safetensors


def test_merge_into_the_base_equals_the_base_with_the_adapter(world, tmp_path):
    family, folder, adapter_file, _ = world
    merged = tmp_path / "merged.safetensors"
    code, out, err = run("merge", "--base", folder, "--lora", f"{adapter_file}:0.7", "--output", merged,
                         "--save-dtype", "fp32")  # fmt: skip
    assert code == 0, err
    # diffusers' own single-file loader reads it (the configs given: nothing is downloaded)
    from_file = family.pipeline_class().from_single_file(
        str(merged), config=str(folder), local_files_only=True
    )
    reference = load_base(folder).pipe
    load_adapters(reference, [(adapter_file, 0.7)])
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 1000, (1, 77), generator=generator)
    for got, want in zip(text_encoders(from_file), text_encoders(reference), strict=True):
        with torch.no_grad():
            a, b = got(ids).last_hidden_state, want(ids).last_hidden_state
        assert torch.allclose(a, b, atol=1e-4 * b.abs().max()), "text encoder"
    latents = torch.randn(1, 4, 8, 8, generator=generator)
    text = torch.randn(1, 77, reference.unet.config.cross_attention_dim, generator=generator)
    extra = {}
    if family.kohya_sgm:  # SDXL's size and pooled-text conditioning
        extra = {"added_cond_kwargs": {"text_embeds": torch.randn(1, reference.text_encoder_2.config.projection_dim,
                                                                  generator=generator),
                                       "time_ids": torch.tensor([[32.0, 32, 0, 0, 32, 32]])}}  # fmt: skip
    with torch.no_grad():
        a = from_file.unet(latents, torch.tensor([500]), encoder_hidden_states=text, **extra).sample
        b = reference.unet(latents, torch.tensor([500]), encoder_hidden_states=text, **extra).sample
    assert torch.allclose(a, b, atol=1e-4 * b.abs().max())
    assert json.loads(load_metadata(merged)[TOOL_KEY])["family"] == family.name


def load_metadata(path) -> dict:
    with safe_open(str(path), "pt") as f:
        return f.metadata()


def test_merging_two_adapters_at_the_sum_of_ranks_is_exact_and_below_it_the_best(world, tmp_path):
    family, _, first, second = world
    args = ["merge", "--lora", f"{first}:0.7", "--lora", f"{second}:-0.5", "--save-dtype", "fp32"]
    assert run(*args, "--output", tmp_path / "ab.safetensors")[0] == 0
    a, b, ab = deltas(read(first)), deltas(read(second)), deltas(read(tmp_path / "ab.safetensors"))
    for key in a:
        want = 0.7 * a[key] - 0.5 * b[key]
        assert torch.allclose(ab[key], want, rtol=0, atol=1e-5 * want.abs().max()), key
    assert read(tmp_path / "ab.safetensors").pairs[key][0].shape[0] == 2 * RANK
    assert read(tmp_path / "ab.safetensors").family is family
    assert run(*args, "--rank", 3, "--output", tmp_path / "ab3.safetensors")[0] == 0
    ab3 = deltas(read(tmp_path / "ab3.safetensors"))
    for key in a:
        want = 0.7 * a[key] - 0.5 * b[key]
        s = torch.linalg.svdvals(want)
        expected = float((s[3:].square().sum() / s.square().sum()).sqrt())
        error = float(torch.linalg.matrix_norm(ab3[key] - want) / torch.linalg.matrix_norm(want))
        assert abs(error - expected) <= 1e-4 * expected, key


def test_extract_recovers_a_planted_update_and_has_the_svd_tail_on_a_full_rank_one(world, tmp_path):
    family, folder, _, _ = world
    pipe = load_base(folder).pipe
    names = unet_targets(pipe.unet)
    generator = torch.Generator().manual_seed(5)
    planted = {}
    for name in names[:3]:  # a rank-2 update on three modules
        weight = pipe.unet.get_submodule(name).weight
        low = torch.randn(weight.shape[0], 2, generator=generator) @ torch.randn(
            2, weight[0].numel(), generator=generator
        )
        planted[f"unet.{name}"] = low.double()
        weight.data += low.reshape(weight.shape) * 1.0
    noise_name = names[3]  # and a full-rank one on a fourth
    weight = pipe.unet.get_submodule(noise_name).weight
    noise = torch.randn(weight.shape, generator=generator) * 0.1
    weight.data += noise
    encoder = pipe.text_encoder  # and a rank-2 update in the (first) text encoder
    te_name = text_encoder_targets(encoder)[0]
    te_weight = encoder.get_submodule(te_name).weight
    te_low = torch.randn(te_weight.shape[0], 2, generator=generator) @ torch.randn(
        2, te_weight.shape[1], generator=generator
    )
    te_weight.data += te_low
    pipe.save_pretrained(tmp_path / "tuned", safe_serialization=True)
    code, out, err = run("extract", "--base", folder, "--tuned", tmp_path / "tuned", "--rank", 2,
                         "--output", tmp_path / "x.safetensors", "--save-dtype", "fp32")  # fmt: skip
    assert code == 0, err
    extracted = read(tmp_path / "x.safetensors")
    got = deltas(extracted)
    te_key = f"text_encoder.{te_name.removeprefix('text_model.')}"
    assert set(got) == set(planted) | {f"unet.{noise_name}", te_key}  # unchanged modules left out
    for key, want in planted.items():
        assert torch.allclose(got[key], want, atol=1e-4 * want.abs().max()), key
    assert torch.allclose(got[te_key], te_low.double(), atol=1e-4 * te_low.abs().max())
    want = flat(noise).double()
    s = torch.linalg.svdvals(want)
    expected = float((s[2:].square().sum() / s.square().sum()).sqrt())
    error = float(torch.linalg.matrix_norm(got[f"unet.{noise_name}"] - want) / torch.linalg.matrix_norm(want))
    assert abs(error - expected) <= 1e-4 * expected
    assert extracted.family is family and load_metadata(tmp_path / "x.safetensors")["ss_base_model_version"]
    refused(
        "extract", "--base", folder, "--tuned", folder, "--rank", 2, "--output", tmp_path / "y.safetensors"
    )
    assert not (tmp_path / "y.safetensors").exists()


def test_bad_input_is_one_line_and_writes_nothing(tmp_path):
    """Classes of bad input to every tool: files that are not LoRAs, damaged pairs, non-finite values,
    outputs that cannot be (under a file, a name too long, a path as a name), models that are missing."""
    key = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    good = {f"{key}.lora_down.weight": torch.randn(4, 8), f"{key}.lora_up.weight": torch.randn(8, 4),
            f"{key}.alpha": torch.tensor(4.0)}  # fmt: skip
    files = {"nan": good | {f"{key}.lora_up.weight": torch.full((8, 4), float("nan"))},
             "unpaired": good | {f"{key}.lora_up.weight": torch.randn(8, 3)},
             "three-d": good | {f"{key}.lora_down.weight": torch.randn(4, 8, 2)},
             "empty": {f"{key}.lora_down.weight": torch.zeros(0, 8), f"{key}.lora_up.weight": torch.zeros(8, 0)},
             "not-lora": {"model.diffusion_model.input_blocks.0.0.weight": torch.randn(4, 4)}}  # fmt: skip
    from safetensors.torch import save_file

    inputs = tmp_path / "in"
    inputs.mkdir()
    for name, tensors in files.items():
        save_file(tensors, str(inputs / f"{name}.safetensors"))
    (inputs / "text.safetensors").write_text("not a safetensors file")
    save_file(good, str(inputs / "good.safetensors"))
    out = tmp_path / "out"
    for name in [*files, "text", "missing"]:
        refused("resize", inputs / f"{name}.safetensors", "--rank", 2, "--output", out / "r.safetensors")
        refused("convert", inputs / f"{name}.safetensors", "--to", "diffusers", "--output", out / "d")
        refused("merge", "--lora", inputs / f"{name}.safetensors", "--output", out / "m.safetensors")
    (tmp_path / "a-file").write_text("x")
    for output in (
        tmp_path / "a-file" / "r.safetensors",
        out / ("x" * 250 + ".safetensors"),
        out / ".hidden.safetensors",
    ):
        refused("resize", inputs / "good.safetensors", "--rank", 2, "--output", output)
    refused(
        "merge", "--lora", inputs / "good.safetensors:11", "--output", out / "m.safetensors"
    )  # beyond ±10
    refused(
        "extract",
        "--base",
        tmp_path / "none",
        "--tuned",
        inputs,
        "--rank",
        2,
        "--output",
        out / "x.safetensors",
    )
    refused(
        "extract", "--base", inputs, "--tuned", inputs / "..", "--output", out / "x.safetensors"
    )  # no rank given
    assert not out.exists() and (tmp_path / "a-file").read_text() == "x"
    assert run("resize", inputs / "good.safetensors", "--rank", 2, "--output", out / "r.safetensors")[0] == 0
