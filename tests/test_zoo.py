"""Model zoo tests: BiomedCLIPSeg(-D), smp CNN baselines, freezing, layer taps, decoder copy, offline errors.

All models are tiny, random and built offline (HF_HUB_OFFLINE=1 and an empty hub cache)."""
from __future__ import annotations

import logging
import pickle

import pytest
import torch

from models import create_model
from models.biomedclipseg import (
    BertPromptTokenizer,
    build_biomedclipseg,
    build_biomedclipseg_d,
    make_tiny_bert_vocab,
    save_biomedclip_encoders,
)
from models.registry import BIOMEDCLIP_HUB_ID, CLIPSEG_HUB_ID
from models.smp_models import build_unet, load_encoder_file

torch.set_num_threads(1)
MY_MODELS = ["biomedclipseg", "biomedclipseg_d", "unet", "unetplusplus", "deeplabv3plus"]
WORDS = ["polyp", "round", "red", "lesion", "in", "the", "top", "left", "a", "tumor"]


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path_factory):
    """No network, empty Hugging Face and torch hub caches."""
    import huggingface_hub.constants as hc
    cache = tmp_path_factory.mktemp("empty_cache")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(cache))


@pytest.fixture(scope="module")
def vocab(tmp_path_factory):
    return make_tiny_bert_vocab(tmp_path_factory.mktemp("vocab"), WORDS)


def tiny(name, vocab, **kw):
    if name.startswith("biomedclipseg"):
        kw.setdefault("tokenizer_path", vocab)
    torch.manual_seed(0)
    return create_model(name, weights=None, size="tiny", **kw)


def batch(model, n=2):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 3, model.input_size, model.input_size, generator=g)
    return x, model.tokenize(["round polyp", "a red lesion in the top left"][:n])


def decoder_params(model):
    if model.uses_text:
        return dict(model.decoder.named_parameters())
    return {n: p for n, p in model.net.named_parameters() if not n.startswith("encoder.")}


# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", MY_MODELS)
def test_tiny_model_builds_offline_and_backprops_into_decoder(name, vocab):
    model = tiny(name, vocab)
    assert model.input_size == 128
    x, tok = batch(model)
    logits = model(x, **tok)
    assert logits.shape == (2, 1, 128, 128)
    assert torch.isfinite(logits).all()
    loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, torch.ones_like(logits))
    loss.backward()
    params = decoder_params(model)
    assert params
    no_grad = [n for n, p in params.items() if p.grad is None or p.grad.abs().sum() == 0]
    assert no_grad == []


@pytest.mark.parametrize("name", ["unet", "deeplabv3plus"])
def test_cnn_ignores_text_and_uses_imagenet_stats(name, vocab):
    model = tiny(name, vocab).eval()
    assert model.uses_text is False and model.tokenizer is None and model.tokenize(["x"]) == {}
    assert model.image_mean == (0.485, 0.456, 0.406) and model.text_encoder_modules() == []
    x, _ = batch(model)
    ids = torch.ones(2, 5, dtype=torch.long)
    assert torch.equal(model(x), model(x, input_ids=ids, attention_mask=ids))


# ---------------------------------------------------------------------------------------------
SETTINGS = [(True, False), (False, True), (True, True)]


@pytest.mark.parametrize("name,image,text", [(n, i, t) for n in ("biomedclipseg", "biomedclipseg_d")
                                             for i, t in SETTINGS] + [("unet", True, False),
                                                                       ("unetplusplus", True, False),
                                                                       ("deeplabv3plus", True, False)])
def test_frozen_parts_get_no_grad_stay_eval_and_do_not_change(name, image, text, vocab):
    model = tiny(name, vocab, freeze_image_encoder=image, freeze_text_encoder=text)
    frozen = (model.image_encoder_modules() if image else []) + (model.text_encoder_modules() if text else [])
    free = [m for m in model.image_encoder_modules() + model.text_encoder_modules() if m not in frozen]
    model.train()
    assert all(not m.training for f in frozen for m in f.modules())
    assert all(m.training for f in free for m in f.modules())
    before = {id(t): t.detach().clone() for f in frozen for t in list(f.parameters()) + list(f.buffers())}
    dec_before = {n: p.detach().clone() for n, p in decoder_params(model).items()}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=1e-2)
    x, tok = batch(model)
    model(x, **tok).sigmoid().mean().backward()
    assert all(p.grad is None and not p.requires_grad for f in frozen for p in f.parameters())
    opt.step()
    changed = [t for f in frozen for t in list(f.parameters()) + list(f.buffers())
               if not torch.equal(t, before[id(t)])]
    assert changed == []  # weights and BatchNorm running stats untouched
    assert any(not torch.equal(p, dec_before[n]) for n, p in decoder_params(model).items())
    for f in free:  # unfrozen encoders do train (their tapped blocks get gradients)
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in f.parameters())


def test_freezing_text_of_a_cnn_is_an_error(vocab):
    with pytest.raises(ValueError, match="no text encoder"):
        tiny("unet", vocab, freeze_text_encoder=True)


# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("layers", [None, (0, 2)])
def test_exactly_the_requested_blocks_reach_the_decoder(layers, vocab):
    """extract_layers are 0-based block indices = HF CLIPSeg's hidden_states[i + 1] (index 0 = embeddings)."""
    kw = {} if layers is None else {"extract_layers": layers}
    model = tiny("biomedclipseg", vocab, **kw).eval()
    expected_layers = (1, 2, 3) if layers is None else layers
    assert model.extract_layers == expected_layers
    blocks = model.visual.trunk.blocks
    outputs, seen = {}, {}
    hooks = [b.register_forward_hook(lambda m, i, o, k=k: outputs.__setitem__(k, o)) for k, b in enumerate(blocks)]
    hooks.append(model.decoder.register_forward_pre_hook(
        lambda m, args, kwargs: seen.__setitem__("acts", list(args[0])), with_kwargs=True))
    x, tok = batch(model)
    with torch.no_grad():
        model(x, **tok)
        for h in hooks:
            h.remove()
        assert max(outputs) == max(expected_layers)  # later blocks are not run
        hidden_states = [model.visual.embed(x)]  # HF-style list: [embeddings, block 1 out, block 2 out, ...]
        for b in blocks:
            hidden_states.append(b(hidden_states[-1]))
    acts = seen["acts"]
    assert len(acts) == len(expected_layers)
    for act, i in zip(acts, expected_layers):
        assert act is outputs[i]
        assert torch.allclose(act, hidden_states[i + 1], atol=1e-6)
        assert not torch.allclose(act, hidden_states[i], atol=1e-3)  # not the off-by-one neighbours
        if i + 2 < len(hidden_states):
            assert not torch.allclose(act, hidden_states[i + 2], atol=1e-3)


def test_bad_extract_layers_are_rejected(vocab):
    with pytest.raises(ValueError, match="extract_layers"):
        tiny("biomedclipseg", vocab, extract_layers=(2, 4))  # tiny ViT has blocks 0..3


# ---------------------------------------------------------------------------------------------
def tiny_clipseg(folder, projection_dim=32):
    from transformers import CLIPSegConfig, CLIPSegForImageSegmentation
    torch.manual_seed(3)
    cfg = CLIPSegConfig(
        text_config={"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2, "num_attention_heads": 2,
                     "vocab_size": 100, "max_position_embeddings": 16},
        vision_config={"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 4,
                       "num_attention_heads": 2, "image_size": 128, "patch_size": 16},
        projection_dim=projection_dim, extract_layers=[1, 2, 3], reduce_dim=16, decoder_num_attention_heads=2,
        decoder_intermediate_size=32, use_complex_transposed_convolution=True)
    model = CLIPSegForImageSegmentation(cfg)
    model.save_pretrained(folder)
    return model


def test_decoder_is_copied_from_a_saved_clipseg(tmp_path, vocab, caplog):
    src = tiny_clipseg(tmp_path / "clipseg")
    with caplog.at_level(logging.INFO, logger="models.biomedclipseg"):
        model = tiny("biomedclipseg_d", vocab, clipseg_weights=str(tmp_path / "clipseg"))
    ref = src.decoder.state_dict()
    ours = model.decoder.state_dict()
    assert set(ours) == set(ref)
    assert all(torch.equal(ours[k], ref[k]) for k in ref)
    assert sorted(model.decoder_init_report["copied"]) == sorted(ref)
    assert model.decoder_init_report["shape_mismatch"] == []
    assert f"copied {len(ref)}/{len(ref)} decoder tensors" in caplog.text
    x, tok = batch(model)
    assert model(x, **tok).shape == (2, 1, 128, 128)


def test_decoder_copy_reports_tensors_that_do_not_fit(tmp_path, vocab, caplog):
    src = tiny_clipseg(tmp_path / "clipseg", projection_dim=48)  # FiLM layers 48 -> 16 instead of 32 -> 16
    with caplog.at_level(logging.INFO, logger="models.biomedclipseg"):
        model = tiny("biomedclipseg_d", vocab, clipseg_weights=str(tmp_path / "clipseg"))
    report = model.decoder_init_report
    bad = sorted(s.split(":")[0] for s in report["shape_mismatch"])
    assert bad == ["film_add.weight", "film_mul.weight"]
    assert len(report["copied"]) == len(src.decoder.state_dict()) - 2
    assert torch.equal(model.decoder.reduces[0].weight, src.decoder.reduces[0].weight)
    assert "left at random init" in caplog.text and "film_mul.weight" in caplog.text


def test_biomedclipseg_d_without_weights_has_random_decoder_and_needs_no_download(vocab):
    model = tiny("biomedclipseg_d", vocab)  # clipseg_weights="auto" + weights=None -> random decoder
    assert model.decoder_init_report is None


# ---------------------------------------------------------------------------------------------
def test_biomedclip_folder_round_trip(tmp_path, vocab):
    a = tiny("biomedclipseg", vocab)
    folder = save_biomedclip_encoders(a, tmp_path / "biomedclip")
    torch.manual_seed(123)
    b = build_biomedclipseg(weights=str(folder), size="tiny")  # tokenizer from folder/vocab.txt
    for k, v in a.visual.state_dict().items():
        assert torch.equal(v, b.visual.state_dict()[k]), k
    for k, v in a.text.state_dict().items():
        assert torch.equal(v, b.text.state_dict()[k]), k
    assert not torch.equal(a.decoder.film_mul.weight, b.decoder.film_mul.weight)  # decoder stays random
    assert b.tokenize(["round polyp"])["input_ids"].tolist() == a.tokenize(["round polyp"])["input_ids"].tolist()


def test_base_architecture_matches_open_clip_biomedclip_checkpoint_layout(monkeypatch):
    """Our base encoders have exactly the tensor names/shapes of open_clip's BiomedCLIP (built on meta)."""
    import open_clip
    import transformers
    from open_clip import hf_model

    from models.biomedclipseg import SIZES
    bert = transformers.BertConfig(**SIZES["base"]["text"])
    monkeypatch.setattr(hf_model.AutoConfig, "from_pretrained", lambda *a, **k: bert)
    vision_cfg = {"timm_model_name": "vit_base_patch16_224", "timm_model_pretrained": False, "timm_pool": "",
                  "timm_proj": "linear", "image_size": 224}
    text_cfg = {"hf_model_name": "microsoft/BiomedNLP-PubMedBERT-base-uncased-abstract", "hf_proj_type": "mlp",
                "hf_pooler_type": "cls_last_hidden_state_pooler", "context_length": 256,
                "hf_model_pretrained": False}
    with torch.device("meta"):
        oc = open_clip.CustomTextCLIP(embed_dim=512, vision_cfg=vision_cfg, text_cfg=text_cfg)
        ours = build_biomedclipseg()
    theirs = {k: tuple(v.shape) for k, v in oc.state_dict().items() if k != "logit_scale"}
    mine = {f"visual.{k}": tuple(v.shape) for k, v in ours.visual.state_dict().items()}
    mine.update({f"text.{k}": tuple(v.shape) for k, v in ours.text.state_dict().items()})
    assert mine == theirs
    assert sum(p.numel() for p in ours.decoder.parameters()) == 1_127_009  # CLIPSeg rd64-refined decoder


# ---------------------------------------------------------------------------------------------
def test_bert_tokenizer_ids_padding_truncation_and_pickle(vocab):
    tok = BertPromptTokenizer(vocab, context_length=6)
    with open(vocab) as f:
        words = f.read().split("\n")
    with pytest.warns(UserWarning, match="1 prompt.*PubMedBERT text context"):
        out = tok(["Round polyp", "a red lesion in the top left"])
    assert out["input_ids"][0].tolist() == [2, words.index("round"), words.index("polyp"), 3, 0, 0]
    assert out["attention_mask"].tolist() == [[1, 1, 1, 1, 0, 0], [1] * 6]
    assert out["input_ids"][1].tolist() == [2] + [words.index(w) for w in ["a", "red", "lesion", "in"]] + [3]
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # later truncations are only counted
        tok(["a red lesion in the top left"])
    assert tok.warner.n_truncated == 2
    clone = pickle.loads(pickle.dumps(tok))
    assert torch.equal(clone(["round polyp"])["input_ids"], tok(["round polyp"])["input_ids"])


def test_base_biomedclipseg_without_vocab_fails_only_when_tokenizing():
    with torch.device("meta"):
        model = build_biomedclipseg()
    assert model.input_size == 224
    with pytest.raises(RuntimeError, match="tokenizer_path"):
        model.tokenize(["polyp"])


def test_tiny_biomedclipseg_without_vocab_uses_the_default_tiny_vocab():
    model = build_biomedclipseg(size="tiny")
    ids = model.tokenize(["red circle", "zebra"])["input_ids"]
    assert ids.shape[0] == 2 and (ids[0] != ids[1]).any()


# ---------------------------------------------------------------------------------------------
def test_offline_hub_ids_give_clear_errors(vocab):
    with pytest.raises(FileNotFoundError, match=r"(?s)BiomedCLIP weights.*not in the local Hugging Face cache.*"
                                                r"--weights PATH"):
        build_biomedclipseg(weights=f"hf-hub:{BIOMEDCLIP_HUB_ID}")
    with pytest.raises(FileNotFoundError, match=r"(?s)pretrained CLIPSeg decoder.*biomedclipseg_d reads it from there"):
        build_biomedclipseg_d(size="tiny", tokenizer_path=vocab, clipseg_weights=CLIPSEG_HUB_ID)
    with pytest.raises(FileNotFoundError, match=r"(?s)ImageNet weights for resnet18.*--weights /path/to/"):
        build_unet(weights="imagenet", size="tiny")
    with pytest.raises(FileNotFoundError, match="give 'imagenet', a ResNet state-dict file"):
        build_unet(weights="/no/such/file.pth", size="tiny")


def test_cnn_encoder_loads_a_local_resnet_state_dict(tmp_path):
    import torchvision
    torch.manual_seed(5)
    ref = torchvision.models.resnet18(weights=None).state_dict()  # torchvision layout, incl. fc and layer3/4
    path = tmp_path / "resnet18.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in ref.items()}}, path)
    model = build_unet(weights=str(path), size="tiny")
    enc = model.net.encoder.state_dict()
    assert enc and all(torch.equal(v, ref[k]) for k, v in enc.items())
    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="not a state dict for this ResNet encoder"):
        load_encoder_file(build_unet(size="tiny").net.encoder, tmp_path / "bad.pth")


# ---------------------------------------------------------------------------------------------
def test_parameter_table_counts():
    from models.__main__ import count_row, format_table
    row = count_row("unet", "tiny")
    model = build_unet(size="tiny")
    total = sum(p.numel() for p in model.parameters())
    enc = sum(p.numel() for p in model.net.encoder.parameters())
    assert row["input"] == 128 and row["total"] == total and row["none"] == total
    assert row["image"] == total - enc and row["text"] is None and row["both"] is None
    bad = count_row("no_such_model", "tiny")
    assert "error" in bad
    table = format_table([row, bad])
    assert "| unet | 128 |" in table and "no_such_model: not built" in table


def test_parameter_table_biomedclipseg_base_on_meta():
    from models.__main__ import count_row
    row = count_row("biomedclipseg", "base")
    assert row["device"] == "meta" and row["input"] == 224
    assert row["both"] == 1_127_009 and row["total"] == 197_029_729
    assert row["image"] + row["text"] == row["total"] + row["both"]  # frozen parts are disjoint


def test_random_decoder_starts_small_and_fits_a_fixed_batch(vocab):
    """Guards the decoder initialisation (transformers' post_init would give N(0, 1) weights, logits std ~65)."""
    model = tiny("biomedclipseg", vocab).train()
    yy, xx = torch.meshgrid(torch.arange(128), torch.arange(128), indexing="ij")
    mask = (((yy - 64) ** 2 + (xx - 50) ** 2) < 20 ** 2).float()[None, None].repeat(4, 1, 1, 1)
    x = torch.randn(4, 3, 128, 128, generator=torch.Generator().manual_seed(2)) * 0.3 + mask
    tok = model.tokenize(["round polyp"] * 4)
    with torch.no_grad():
        assert model(x, **tok).std() < 1.0
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(40):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x, **tok), mask)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
