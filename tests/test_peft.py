"""Parameter-efficient methods as model wrappers (models/peft, docs/peft.md): what trains, what stays bit for bit,
what a PEFT checkpoint holds and how it loads, LoRA merging, the refusals and ``python -m models --peft``."""
import contextlib
import copy
import io

import pytest
import torch

import models.__main__ as zoo
from models import create_model
from models.peft import PEFT_METHODS, apply_peft, load_peft_state, merge_lora, peft_config, peft_state_dict
from models.peft.prompt_tuning import (
    biomedclip_text_with_context,
    clipseg_text_with_context,
    cris_text_with_context,
    token_embedding,
)

SIZE = 64  # every tiny VLSM takes it (CRIS: divisible by 32; ViT patches 8 and 16)
PROMPTS = ["red round circle", "a blue square on the left"]
# every method with its defaults, plus the variants that take other code paths
CASES = [("adapter-shallow", {}), ("adapter-dense", {}), ("lora", {}), ("coop", {}), ("vpt", {}),
         ("vpt", {"vpt_deep": True}), ("adapter-shallow", {"adapter_in": "vision,cond", "train_decoder": True})]


def tiny(name: str, seed: int = 0):
    torch.manual_seed(seed)
    return create_model(name, size="tiny", weights=None, input_size=SIZE)


def batch(model, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(len(PROMPTS), 3, SIZE, SIZE, generator=g)
    masks = (torch.rand(len(PROMPTS), 1, SIZE, SIZE, generator=g) > 0.5).float()
    return x, model.tokenize(PROMPTS), masks


def logits(model, x, tok):
    model.eval()
    with torch.no_grad():
        return model(x, **tok)


def train_steps(model, steps: int = 3):
    """A few AdamW steps (weight decay on, as in training) on random data, in train mode."""
    x, tok, masks = batch(model)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=1e-3)
    model.train()
    for _ in range(steps):
        out = torch.nn.functional.interpolate(model(x, **tok), size=masks.shape[-2:], mode="bilinear")
        loss = torch.nn.functional.binary_cross_entropy_with_logits(out, masks)
        opt.zero_grad()
        loss.backward()
        opt.step()


def snapshot(model) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# ----------------------------------------------------------------------------------------------------- LoRA at step 0
@pytest.mark.parametrize("name", ["clipseg", "cris"])
def test_lora_at_initialisation_reproduces_the_base_logits_exactly(name):
    model = tiny(name)
    x, tok, _ = batch(model)
    # CRIS's attention pool takes another (fused) kernel when none of its weights requires grad (~3e-8 apart), so
    # the base is compared frozen, as the PEFT model is
    model.requires_grad_(False)
    base = logits(model, x, tok)
    model.requires_grad_(True)
    apply_peft(model, "lora")
    assert any("lora_B" in n for n in peft_state_dict(model))
    assert all(torch.count_nonzero(v) == 0 for n, v in peft_state_dict(model).items() if "lora_B" in n)
    assert torch.equal(logits(model, x, tok), base)


# ---------------------------------------------------------------------- training: what changes, what is saved, reload
@pytest.mark.parametrize("method,options", CASES, ids=[f"{m}{'-' + '-'.join(o) if o else ''}" for m, o in CASES])
def test_training_changes_only_the_method_tensors_and_the_peft_state_round_trips(method, options):
    model = apply_peft(tiny("clipseg"), method, **options)
    state0 = peft_state_dict(model)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert set(state0) == trainable  # CLIPSeg has no BatchNorm: the trained tensors are the trainable parameters
    assert model.parameter_counts()["trainable"] == sum(v.numel() for v in state0.values()) > 0
    if not options.get("train_decoder"):
        assert all(k.startswith("peft_method.") or "lora_" in k for k in state0)

    before = snapshot(model)
    train_steps(model)
    after = model.state_dict()
    trained = set(peft_state_dict(model))
    frozen_changed = [k for k in before if k not in trained and not torch.equal(before[k], after[k])]
    assert not frozen_changed, frozen_changed[:5]
    unchanged = [k for k in trained if torch.equal(before[k], after[k])]
    assert not unchanged, unchanged[:5]
    if options.get("vpt_deep"):  # each layer's own prompt tokens reach the loss
        rows = (before["peft_method.prompts"] - after["peft_method.prompts"]).flatten(1).abs().amax(1)
        assert rows.shape[0] == 4 and bool((rows > 0).all())  # tiny taps (1, 2, 3): layers 0..3

    # a checkpoint: the base weights + the record + only these tensors
    x, tok, _ = batch(model, seed=2)
    want = logits(model, x, tok)
    state, record = peft_state_dict(model), peft_config(model)
    rebuilt = apply_peft(tiny("clipseg"), **record)
    load_peft_state(rebuilt, state)
    assert peft_config(rebuilt) == record
    assert torch.equal(logits(rebuilt, x, tok), want)


@pytest.mark.parametrize("name,method", [("cris", "adapter-dense"), ("cris", "coop"), ("biomedclipseg", "vpt"),
                                         ("biomedclipseg", "adapter-shallow")])
def test_other_families_train_only_the_method_and_keep_batchnorm_statistics(name, method):
    model = apply_peft(tiny(name), method, train_decoder=False)
    before = snapshot(model)
    train_steps(model, steps=2)
    after, trained = model.state_dict(), set(peft_state_dict(model))
    assert [k for k in before if k not in trained and not torch.equal(before[k], after[k])] == []
    assert all(not torch.equal(before[k], after[k]) for k in trained)


def test_frozen_mode_train_lets_batchnorm_statistics_update_and_saves_them():
    """``set_frozen_mode("train")`` (the released code's behaviour): frozen BatchNorms follow the model's mode, so
    their statistics change, and the PEFT state carries them."""
    model = apply_peft(tiny("cris"), "adapter-dense").set_frozen_mode("train")
    before = snapshot(model)
    train_steps(model, steps=2)
    stats = "backbone.visual.bn1.running_mean"
    assert not torch.equal(before[stats], model.state_dict()[stats]) and stats in peft_state_dict(model)
    x, tok, _ = batch(model, seed=2)
    rebuilt = load_peft_state(apply_peft(tiny("cris"), **peft_config(model)), peft_state_dict(model))
    assert torch.equal(logits(rebuilt, x, tok), logits(model, x, tok))  # eval mode: the saved statistics


def test_train_mode_keeps_frozen_parts_in_eval_and_the_method_in_train():
    model = apply_peft(tiny("cris"), "adapter-shallow", train_decoder=True).train()
    assert model.training and model.peft_method.training
    assert not any(m.training for m in model.backbone.modules())
    assert all(m.training for m in model.decoder.modules()) and model.neck.training
    model.eval()
    assert not any(m.training for m in model.modules())


def test_deepcopy_gives_an_independent_model_with_its_own_hooks():
    model = apply_peft(tiny("clipseg"), "adapter-dense")
    x, tok, _ = batch(model)
    twin = copy.deepcopy(model)
    assert torch.equal(logits(twin, x, tok), logits(model, x, tok))
    with torch.no_grad():
        twin.peft_method.vision_attn[0].fc2.bias.add_(1.0)
    assert not torch.equal(logits(twin, x, tok), logits(model, x, tok))  # the twin's hooks use the twin's adapters
    assert torch.equal(logits(model, x, tok), logits(copy.deepcopy(model), x, tok))


# ------------------------------------------------------------------------------------------------------------ merging
@pytest.mark.parametrize("name", ["clipseg", "cris"])
def test_merged_lora_is_a_plain_model_with_the_same_logits(name):
    model = apply_peft(tiny(name), "lora", lora_rank=4, lora_alpha=8)
    train_steps(model)  # B is no longer zero
    x, tok, _ = batch(model, seed=2)
    unmerged = logits(model, x, tok)
    base_class = type(tiny(name))
    merged = merge_lora(model)
    assert type(merged) is base_class and not hasattr(merged, "peft") and peft_config(merged) is None
    assert all(p.requires_grad for p in merged.parameters()) and merged.frozen == {"image": False, "text": False}
    assert not any("lora" in k or "base_layer" in k for k in merged.state_dict())
    got = logits(merged, x, tok)
    torch.testing.assert_close(got, unmerged, rtol=1e-5, atol=1e-5)
    plain = tiny(name, seed=5)
    plain.load_state_dict(merged.state_dict())  # strict: the keys of a model from create_model
    torch.testing.assert_close(logits(plain, x, tok), unmerged, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------------------------- faithful building
@pytest.mark.parametrize("name", ["clipseg", "biomedclipseg", "cris"])
@pytest.mark.parametrize("method", ["adapter-shallow", "adapter-dense"])
def test_adapters_with_a_zero_branch_leave_the_logits_unchanged(name, method):
    """Each adapter is x + relu(fc2(relu(fc1(x)))): with fc2 zeroed it is the identity wherever it is placed, so
    hooks and feature routing change nothing else.  (Not the shallow text adapters: VLSM-Adapter adds their whole
    output, the tapped text state included, to the conditional embedding.)"""
    options = {"adapter_in": "vision,cond"} if method == "adapter-shallow" else {}
    model = tiny(name)
    x, tok, _ = batch(model)
    model.requires_grad_(False)  # compared frozen, as the PEFT model is (see the LoRA test)
    base = logits(model, x, tok)
    model.requires_grad_(True)
    apply_peft(model, method, **options)
    with torch.no_grad():
        for m in model.peft_method.modules():
            if hasattr(m, "fc2"):
                m.fc2.weight.zero_()
                m.fc2.bias.zero_()
    torch.testing.assert_close(logits(model, x, tok), base, rtol=0, atol=1e-6)


@pytest.mark.parametrize("name,fn", [("clipseg", clipseg_text_with_context), ("cris", cris_text_with_context),
                                     ("biomedclipseg", biomedclip_text_with_context)])
def test_coop_text_pass_without_context_is_the_models_own(name, fn):
    """CoOp re-runs each text encoder on inserted embeddings: with no context it is encode_text exactly."""
    model = tiny(name).eval()
    tok = model.tokenize(PROMPTS)
    empty = torch.zeros(0, token_embedding(model).embedding_dim)
    with torch.no_grad():
        ref = model.encode_text(tok["input_ids"], tok["attention_mask"])
        got = fn(model, tok["input_ids"], tok["attention_mask"], empty)
    for a, b in zip(ref if isinstance(ref, tuple) else [ref], got if isinstance(got, tuple) else [got]):
        assert torch.equal(a, b)


def test_vpt_tokens_enter_before_the_layernorm_reach_the_decoder_and_leave_before_the_upsampling():
    model = tiny("clipseg")
    x, tok, _ = batch(model)
    plain_shape = logits(model, x, tok).shape
    apply_peft(model, "vpt", vpt_tokens=3).eval()
    vision = model.hf.clip.vision_model
    seen = []
    vision.encoder.layers[0].register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    with torch.no_grad():
        feats = model.encode_image(x)
        out = model(x, **tok)
        prompts = vision.pre_layrnorm(model.peft_method.prompts[0])
    grid = (SIZE // 8) ** 2
    assert seen[0].shape[1] == 1 + grid + 3 and torch.equal(seen[0][0, -3:], prompts)
    assert [f.shape[1] for f in feats] == [1 + grid + 3] * 3  # the decoder reads them with the patches
    assert out.shape == plain_shape


def test_coop_context_starts_from_the_words_of_ctx_init():
    model = apply_peft(tiny("clipseg"), "coop")
    emb = model.hf.clip.text_model.embeddings.token_embedding
    ids = model.tokenize(["a photo of a"])["input_ids"][0, 1:5]
    assert model.peft["ctx_init"] == "a photo of a"
    assert torch.equal(model.peft_method.ctx.detach(), emb.weight[ids].detach())
    other = apply_peft(tiny("clipseg"), "coop", n_ctx=6)  # the default phrase is 4 tokens: random, and recorded
    assert other.peft["ctx_init"] is None and other.peft_method.ctx.shape == (6, 64)


# ------------------------------------------------------------------------------------------------------------ refusals
@pytest.mark.parametrize("name,method,options,words", [
    ("unet", "coop", {}, "reads no text"),
    ("unet", "lora", {}, "text-free CNN"),
    ("cris", "vpt", {}, "ResNet"),
    ("cris", "adapter-dense", {"adapter_in": "vision"}, "no attention or MLP branch"),
    ("clipseg", "adapter-shallow", {"adapter_in": "vision,speech"}, "unknown part 'speech'"),
    ("clipseg", "lora", {"lora_targets": "to_q,to_k"}, "candidates (name endings): "),
    ("cris", "lora", {"lora_targets": "attnpool.q_proj"}, "bypassed"),
    ("clipseg", "prefix", {}, "unknown --peft method"),
    ("clipseg", "vpt", {"adapter_dim": 3}, "has no option adapter_dim"),
    ("clipseg", "coop", {"ctx_init": "a photo of a", "n_ctx": 2}, "is 4 tokens"),
])
def test_refusals_are_one_line(name, method, options, words):
    model = create_model(name, size="tiny", weights=None)
    with pytest.raises(ValueError) as e:
        apply_peft(model, method, **options)
    assert words in str(e.value) and "\n" not in str(e.value)
    assert getattr(model, "peft", None) is None


def test_lora_targets_listing_names_candidates():
    with pytest.raises(ValueError, match=r"candidates .*q_proj.*") as e:
        apply_peft(tiny("clipseg"), "lora", lora_targets=["nothing_like_this"])
    assert "clipseg" in str(e.value)


def test_freeze_and_a_second_method_are_refused():
    model = apply_peft(tiny("clipseg"), "vpt")
    with pytest.raises(ValueError, match="set by apply_peft"):
        model.freeze(image=True)
    with pytest.raises(ValueError, match="already has --peft vpt"):
        apply_peft(model, "coop")
    with pytest.raises(ValueError, match="only LoRA merges"):
        merge_lora(model)
    with pytest.raises(ValueError, match="does not fit"):
        load_peft_state(model, {"peft_method.prompts": torch.zeros(1, 4, 64), "extra": torch.zeros(1)})


# ------------------------------------------------------------------------------------------------ python -m models
def run_zoo(*argv) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert zoo.main(zoo.get_args_parser().parse_args(list(argv))) == 0
    return out.getvalue()


def adapter_size(dim: int, width: int) -> int:
    return dim * width + width + width * dim + dim


@pytest.mark.parametrize("method", ["adapter-shallow", "adapter-dense"])
def test_python_m_models_peft_prints_clipseg_trainable_counts(method):
    text = run_zoo("--size", "tiny", "--models", "clipseg,unet", "--peft", method)
    # tiny CLIPSeg: vision width 64 (4 layers, taps 1, 2, 3), text width 64 (2 layers), projection 64
    if method == "adapter-shallow":  # 3 vision taps, text tap 1 only (2 text layers), cond of width 256
        want = 3 * adapter_size(64, 512) + 1 * adapter_size(64, 512) + adapter_size(64, 256)
    else:  # 2 adapters in each of the first max(taps) = 3 vision and min(3, 2) text layers, + cond
        want = 2 * 3 * adapter_size(64, 64) + 2 * 2 * adapter_size(64, 64) + adapter_size(64, 256)
    row = next(line for line in text.splitlines() if line.startswith("| clipseg |"))
    assert f"| {want:,} |" in row
    assert "- unet: --peft" in text and "text-free CNN" in text
    assert want == apply_peft(tiny("clipseg"), method).parameter_counts()["trainable"]


def test_python_m_models_peft_options_are_checked():
    text = run_zoo("--size", "tiny", "--models", "clipseg", "--peft", "lora", "--lora-rank", "2")
    assert "lora_rank=2" in text
    with pytest.raises(ValueError, match="--adapter-dim does not apply to --peft lora"):
        run_zoo("--size", "tiny", "--models", "clipseg", "--peft", "lora", "--adapter-dim", "8")
    assert set(PEFT_METHODS) == {"adapter-shallow", "adapter-dense", "lora", "coop", "vpt"}
