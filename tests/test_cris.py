"""CRIS: faithfulness to the original (golden tensors, full-size key map), checkpoints, text, training."""
import os

import pytest
import torch
import torch.nn.functional as F

from models import create_model, get_preset
from models.cris import (
    PRESETS,
    CRISConfig,
    build_clip_backbone,
    build_cris,
    export_original_state_dict,
    load_cris_checkpoint,
    load_original_state_dict,
    save_cris_checkpoint,
)

REF = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared", "reference", "cris")
GOLDEN = os.path.join(REF, "tiny_golden.pt")
TSV = os.path.join(REF, "rn50_state_dict.tsv")


@pytest.fixture(scope="module")
def golden():
    if not os.path.isfile(GOLDEN):
        pytest.skip("tiny_golden.pt not available in ../shared/reference/cris")
    return torch.load(GOLDEN, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def golden_model(golden):
    model = build_cris(config=golden["config"]).eval()
    load_original_state_dict(model, golden["state_dict"])
    return model


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return build_cris(size="tiny").eval()


# ---- (1) golden tensors of the original implementation -------------------------------------
def test_golden_output_and_every_intermediate_match(golden, golden_model):
    with torch.no_grad():
        out, rec = golden_model(golden["image"], golden["text_ids"], return_intermediates=True)
    err = (out - golden["output"]).abs().max().item()
    assert out.shape == (2, 1, 24, 24) and err < 2e-4, err
    assert golden["output"].abs().max() > 5  # the comparison is not trivially small
    assert set(golden["intermediates"]) <= set(rec)
    for name, ref in golden["intermediates"].items():
        got = rec[name]
        assert got.shape == ref.shape, name
        if ref.dtype == torch.bool:
            assert torch.equal(got, ref), name
        else:
            assert (got - ref).abs().max().item() < 2e-4, name


def test_golden_float64_matches_reference_float64(golden, golden_model):
    import copy
    m64 = copy.deepcopy(golden_model).double()
    with torch.no_grad():
        out = m64(golden["image"].double(), golden["text_ids"])
    assert (out - golden["output_fp64"]).abs().max().item() < 1e-9


def test_golden_pad_id_matters_and_mask_follows_pad_id(golden, golden_model):
    ids49407 = golden["debug"]["text_ids_pad_49407"]
    ref_wrong = golden["debug"]["output_if_pad_ids_are_49407"]
    with torch.no_grad():
        wrong = golden_model(golden["image"], ids49407)  # no mask: pads not recognised, as in the original
        fixed = golden_model(golden["image"], ids49407, attention_mask=(golden["text_ids"] != 0).long())
        swapped = golden_model(golden["image"], golden["text_ids"].flip(0))
    assert (wrong - ref_wrong).abs().max().item() < 2e-4
    assert (wrong - golden["output"]).abs().max().item() > 1.0  # the pad convention changes the output
    # with the attention mask the 49407 pads are ignored: same output as zero padding
    assert (fixed - golden["output"]).abs().max().item() < 2e-4
    assert (swapped - golden["debug"]["output_texts_swapped"]).abs().max().item() < 2e-4


def test_golden_config_round_trip(golden):
    cfg = CRISConfig.from_dict(golden["config"])
    assert cfg.word_len == 17 and cfg.fpn_out == (6, 12, 24) and cfg.attnpool_heads == 2
    assert CRISConfig.from_dict(cfg.to_dict()) == cfg
    bad = {"clip": dict(golden["config"]["clip"]), "cris": dict(golden["config"]["cris"], intermediate=True)}
    with pytest.raises(ValueError, match="intermediate"):
        CRISConfig.from_dict(bad)


# ---- (2) full-size key map -----------------------------------------------------------------
def test_full_size_state_dict_matches_original_keys_shapes_order_and_count():
    if not os.path.isfile(TSV):
        pytest.skip("rn50_state_dict.tsv not available")
    model = build_cris(size="base")
    counts = model.parameter_counts()
    assert 146_000_000 <= counts["total"] <= 147_000_000 and counts["total"] == 146_849_122
    sd = export_original_state_dict(model)
    ref = []
    with open(TSV) as f:
        for line in f:
            key, shape, _ = line.rstrip("\n").split("\t")
            ref.append((key, tuple(int(s) for s in shape.split(",")) if shape else ()))
    assert [(k, tuple(v.shape)) for k, v in sd.items()] == ref  # 662 keys, same order and shapes
    assert model.input_size == 416 and model.default_threshold == 0.35
    # the visual tower is exactly CLIP RN50 plus the CRIS-only connect branch
    n_connect = sum(p.numel() for n, p in model.backbone.visual.attnpool.connect.named_parameters())
    assert n_connect == 2_099_200


# ---- (3) checkpoints in the original format -----------------------------------------------
def test_checkpoint_round_trip_original_format(tmp_path, tiny):
    path = save_cris_checkpoint(tiny, str(tmp_path / "best_model.pth"), epoch=3, cur_iou=0.5, best_iou=0.4)
    raw = torch.load(path, weights_only=True)
    assert set(raw) >= {"epoch", "cur_iou", "best_iou", "prec", "state_dict"} and raw["epoch"] == 3
    assert raw["state_dict"] and all(k.startswith("module.") for k in raw["state_dict"])
    torch.manual_seed(123)
    other = build_cris(size="tiny").eval()
    x = torch.randn(2, 3, 64, 64)
    tok = tiny.tokenize(["round polyp", "small square"])
    with torch.no_grad():
        before = other(x, **tok)
        meta = load_cris_checkpoint(other, path)
        after = other(x, **tok)
        ref = tiny(x, **tok)
    assert meta["epoch"] == 3 and meta["best_iou"] == 0.4
    assert (before - ref).abs().max() > 1e-3 and torch.equal(after, ref)
    # the builder option loads the same file
    again = build_cris(size="tiny", cris_checkpoint=path).eval()
    with torch.no_grad():
        assert torch.equal(again(x, **tok), ref)


def test_golden_state_dict_loads_as_original_training_checkpoint(tmp_path, golden):
    """The original train.py saved DDP-wrapped keys (module.*) under 'state_dict'."""
    path = tmp_path / "last_model.pth"
    torch.save({"epoch": 1, "cur_iou": 0.1, "best_iou": 0.0, "prec": {"Pr@50": 0.0},
                "state_dict": {"module." + k: v for k, v in golden["state_dict"].items()}}, path)
    model = build_cris(config=golden["config"], cris_checkpoint=str(path)).eval()
    with torch.no_grad():
        out = model(golden["image"], golden["text_ids"])
    assert (out - golden["output"]).abs().max().item() < 2e-4


class _NeedsCode:
    pass


def test_checkpoint_errors_are_clear(tmp_path, tiny):
    sd = export_original_state_dict(tiny)
    sd.pop("proj.txt.bias")
    sd["proj.extra"] = torch.zeros(1)
    with pytest.raises(KeyError, match=r"missing 1 \[proj.txt.bias\].*unexpected 1 \[proj.extra\]"):
        load_original_state_dict(build_cris(size="tiny"), sd)
    with pytest.raises(ValueError, match="wrong shape"):
        load_original_state_dict(build_cris(size="tiny", num_layers=1, dim_ffn=32, num_head=1),
                                 {k: v for k, v in export_original_state_dict(tiny).items()
                                  if not k.startswith("decoder.layers.1")})
    bad = tmp_path / "pickled.pth"
    torch.save({"state_dict": {}, "obj": _NeedsCode()}, bad)
    with pytest.raises(ValueError, match="weights_only=True"):
        load_cris_checkpoint(tiny, str(bad))
    with pytest.raises(FileNotFoundError):
        load_cris_checkpoint(tiny, str(tmp_path / "absent.pth"))


# ---- (4) text: word length and prompt ------------------------------------------------------
def test_output_independent_of_word_len_but_depends_on_prompt(tiny):
    torch.manual_seed(1)
    x = torch.randn(2, 3, 64, 64)
    texts = ["one small pink round polyp", "large tumor at the bottom left"]
    short = build_cris(size="tiny", word_len=12).tokenizer
    assert tiny.tokenizer.context_length == 77 and short.context_length == 12
    t77, t12 = tiny.tokenizer(texts), short(texts)
    with torch.no_grad():
        out77 = tiny(x, **t77)
        out12 = tiny(x, **t12)
        out12_nomask = tiny(x, t12["input_ids"])  # mask from ids == 0
        other = tiny(x, **tiny.tokenizer(["large tumor at the bottom left", "one small pink round polyp"]))
    assert out77.shape == (2, 1, 16, 16)
    assert (out77 - out12).abs().max().item() < 1e-5
    assert torch.equal(out12, out12_nomask)
    assert (out77 - other).abs().amax(dim=(1, 2, 3)).min().item() > 1e-3  # each sample changes


def test_registry_build_freeze_and_metadata():
    m = create_model("cris", size="tiny", freeze_text_encoder=True)
    assert m.input_size == 128 and m.default_threshold == 0.35 and m.uses_text
    assert m.image_mean == (0.48145466, 0.4578275, 0.40821073)
    bb = m.backbone
    for p in (bb.positional_embedding, bb.text_projection, bb.token_embedding.weight, bb.ln_final.weight):
        assert not p.requires_grad
    assert bb.visual.conv1.weight.requires_grad and m.proj.txt.weight.requires_grad
    n_text = sum(p.numel() for mod in m.text_encoder_modules() for p in mod.parameters())
    n_img = sum(p.numel() for mod in m.image_encoder_modules() for p in mod.parameters())
    n_rest = sum(p.numel() for mod in (m.neck, m.decoder, m.proj) for p in mod.parameters())
    assert n_text + n_img + n_rest == m.parameter_counts()["total"]
    assert len(export_original_state_dict(m)) == len(m.state_dict())  # the ParamGroup adds no keys
    assert get_preset("cris", "arxiv")["dropout"] == 0.2
    assert build_cris(size="tiny", dropout=0.2).decoder.layers[0].dropout1.p == 0.2
    with pytest.raises(TypeError, match="unknown CRIS options"):
        build_cris(size="tiny", bogus=1)
    with pytest.raises(ValueError, match="divisible by 32"):
        m(torch.zeros(1, 3, 100, 100), **m.tokenize(["a"]))


# ---- (5) training ---------------------------------------------------------------------------
def _square_batch(n=4, size=64):
    g = torch.Generator().manual_seed(0)
    images, masks, texts = torch.randn(n, 3, size, size, generator=g) * 0.3, torch.zeros(n, 1, size, size), []
    for i in range(n):
        s = size // 4 + 4 * i
        y, x = (torch.randint(0, size - s, (2,), generator=g)).tolist()
        masks[i, :, y:y + s, x:x + s] = 1
        images[i, :, y:y + s, x:x + s] += 1.5
        texts.append("bright square")
    return images, masks, texts


def test_tiny_cris_overfits_small_batch():
    torch.manual_seed(0)
    model = build_cris(size="tiny").train()
    images, masks, texts = _square_batch()
    tok = model.tokenize(texts)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(40):
        logits = model(images, **tok)
        logits = F.interpolate(logits, size=masks.shape[-2:], mode="bilinear", align_corners=False)
        prob = logits.sigmoid()
        dice = 1 - (2 * (prob * masks).sum((1, 2, 3)) + 1) / (prob.sum((1, 2, 3)) + masks.sum((1, 2, 3)) + 1)
        loss = dice.mean() + 0.2 * F.binary_cross_entropy_with_logits(logits, masks)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses
    assert model.backbone.logit_scale.grad is None  # unused, as in the original


def test_training_batch_of_one_works():
    model = build_cris(size="tiny").train()
    out = model(torch.randn(1, 3, 64, 64), **model.tokenize(["x"]))
    out.mean().backward()
    assert out.shape == (1, 1, 16, 16)


# ---- (6) CLIP weights ------------------------------------------------------------------------
def test_openai_weights_offline_error_names_file(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(FileNotFoundError, match=r"RN50\.pt.*--weights /path/RN50\.pt"):
        build_cris(weights="openai")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_cris(weights=str(tmp_path / "nothing.pt"), size="tiny")


def _openai_style_tiny_clip_file(tmp_path):
    """A plain open_clip/OpenAI CLIP of the tiny dims, saved like OpenAI's weights (fp16, metadata keys)."""
    from open_clip.model import CLIP
    cfg = PRESETS["tiny"]
    torch.manual_seed(7)
    clip = CLIP(cfg.embed_dim,
                {"layers": cfg.vision_layers, "width": cfg.vision_width, "image_size": cfg.image_resolution,
                 "head_width": cfg.vision_width * 32 // cfg.attnpool_heads},
                {"context_length": 77, "vocab_size": 49408, "width": cfg.transformer_width,
                 "heads": cfg.transformer_heads, "layers": cfg.transformer_layers}, quick_gelu=True)
    sd = {k: v.half() for k, v in clip.state_dict().items() if v.is_floating_point()}
    sd.update({k: v for k, v in clip.state_dict().items() if not v.is_floating_point()})
    sd.update(input_resolution=torch.tensor(64), context_length=torch.tensor(77), vocab_size=torch.tensor(49408))
    path = tmp_path / "RN50_tiny.pt"
    torch.save(sd, path)
    return str(path), clip


def test_clip_weights_from_local_file(tmp_path):
    path, clip = _openai_style_tiny_clip_file(tmp_path)
    model = build_cris(weights=path, size="tiny")
    ref = clip.state_dict()
    mine = model.backbone.state_dict()
    for k in ("visual.conv1.weight", "visual.attnpool.q_proj.weight", "transformer.resblocks.1.attn.in_proj_weight",
              "token_embedding.weight", "text_projection", "positional_embedding"):
        assert torch.equal(mine[k], ref[k].half().float()), k
    assert torch.equal(mine["visual.attnpool.connect.1.weight"],
                       torch.ones_like(mine["visual.attnpool.connect.1.weight"]))
    # the weights do not fit another size: clear error
    with pytest.raises(ValueError, match="shape mismatches"):
        build_cris(weights=path, size="tiny", vision_width=4, fpn_in=(32, 64, 64))


def test_dense_attnpool_reduces_to_clip_attnpool_on_native_grid():
    """On CLIP's own 7x7 grid the dense pool's tokens use the same per-position embeddings as CLIP."""
    cfg = PRESETS["tiny"]
    pool = build_clip_backbone(cfg).visual.attnpool
    pe = pool.spatial_positional_embedding(2, 2)
    assert torch.allclose(pe, pool.positional_embedding[1:], atol=1e-6)


def test_clip_weights_from_torchscript_archive(tmp_path):
    """OpenAI released RN50.pt as a TorchScript archive; it is read with torch.jit.load like open_clip does."""
    import warnings
    _, clip = _openai_style_tiny_clip_file(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scripted = torch.jit.script(clip.eval())
    path = str(tmp_path / "RN50_tiny_script.pt")
    scripted.save(path)
    model = build_cris(weights=path, size="tiny")
    ref = clip.state_dict()
    for k in ("visual.layer4.0.conv2.weight", "transformer.resblocks.0.mlp.c_fc.weight", "ln_final.bias"):
        assert torch.equal(model.backbone.state_dict()[k], ref[k]), k


def test_train_py_cris_checkpoint_exports_to_the_original_format(small_synthetic, tmp_path):
    import train
    from models.cris.__main__ import get_args_parser
    from models.cris.__main__ import main as export_main
    from models.registry import model_from_checkpoint
    data_root, prompts_root = small_synthetic
    run = train.main(train.get_args_parser().parse_args(
        ["--model", "cris", "--data-root", data_root, "--prompts-root", prompts_root, "--output-dir", str(tmp_path),
         "--workers", "0", "--epochs", "1", "--max-steps-per-epoch", "1", "--batch-size", "4", "--input-size", "64",
         "--no-test"]))["run_dir"]
    out = export_main(get_args_parser().parse_args([run, str(tmp_path / "orig.pth")]))
    sd = torch.load(out, weights_only=True)["state_dict"]
    assert all(k.startswith("module.") for k in sd)
    model, _ = model_from_checkpoint(run)
    fresh = build_cris(size="tiny", input_size=64)
    load_cris_checkpoint(fresh, out)
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), model.state_dict().values()))
