import warnings

import pytest
import torch

from models import create_model, get_preset, list_models
from models.text import ClipTokenizer


def test_clip_tokenizer_matches_reference_ids_and_pads_with_zero():
    tok = ClipTokenizer(context_length=17)
    out = tok(["one small pink round polyp"])
    ids = out["input_ids"][0].tolist()
    assert ids[:8] == [49406, 637, 2442, 3360, 2522, 6833, 335, 49407] and ids[8:] == [0] * 9
    assert out["attention_mask"][0].tolist() == [1] * 8 + [0] * 9


def test_truncation_warns_once_with_count():
    tok = ClipTokenizer(context_length=8)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        out = tok(["a " * 20, "b " * 20, "short"])
        tok(["c " * 20])
    msgs = [str(x.message) for x in w if "truncated" in str(x.message)]
    assert len(msgs) == 1 and msgs[0].startswith("2 prompt(s)")
    assert tok.warner.n_truncated == 3
    assert out["input_ids"][0, -1].item() == 49407  # EOT kept at the end


def test_registry_lists_all_paper_models_and_presets():
    assert set(list_models()) == {"clipseg", "cris", "biomedclipseg", "biomedclipseg_d", "unet", "unetplusplus",
                                  "deeplabv3plus"}
    assert get_preset("clipseg")["lr"] == 2e-3 and get_preset("cris")["lr"] == 2e-5
    assert get_preset("unet")["loss"] == "dice"
    with pytest.raises(ValueError, match="unknown model"):
        create_model("segformer")


def test_clipseg_encoders_get_gradients_unless_frozen():
    """transformers' own forward runs the encoders under no_grad; ours must not."""
    m = create_model("clipseg", size="tiny")
    x = torch.randn(2, 3, 96, 96)
    out = m(x, **m.tokenize(["red circle", "blue square"]))
    assert out.shape == (2, 1, 48, 48)  # patch 8, refined decoder: half resolution
    out.mean().backward()
    assert m.hf.clip.vision_model.embeddings.patch_embedding.weight.grad.abs().sum() > 0
    assert m.hf.clip.text_model.embeddings.token_embedding.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("image, text", [(True, False), (False, True), (True, True)])
def test_frozen_parts_do_not_change_and_stay_in_eval(image, text):
    m = create_model("clipseg", size="tiny", freeze_image_encoder=image, freeze_text_encoder=text)
    m.train()
    frozen = [p for mod in m.frozen_modules() for p in mod.parameters()]
    assert frozen and all(not p.requires_grad for p in frozen)
    assert all(not mod.training for mod in m.frozen_modules())
    before = [p.detach().clone() for p in frozen]
    dec_before = m.hf.decoder.film_mul.weight.detach().clone()
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-2)
    m(torch.randn(2, 3, 96, 96), **m.tokenize(["a", "b"])).mean().backward()
    opt.step()
    assert all(torch.equal(a, b) for a, b in zip(before, frozen))
    assert not torch.equal(dec_before, m.hf.decoder.film_mul.weight)
    counts = m.parameter_counts()
    assert counts["trainable"] < counts["total"]


def test_batch_of_one_and_text_changes_output():
    m = create_model("clipseg", size="tiny").eval()
    x = torch.randn(1, 3, 96, 96)
    a = m(x, **m.tokenize(["red circle"]))
    b = m(x, **m.tokenize(["blue star"]))
    assert a.shape == (1, 1, 48, 48) and not torch.allclose(a, b)


def test_save_pretrained_folder_loads_back(tmp_path):
    m = create_model("clipseg", size="tiny").eval()
    m.hf.save_pretrained(tmp_path / "tiny_clipseg")
    m2 = create_model("clipseg", weights=str(tmp_path / "tiny_clipseg"), input_size=96).eval()
    x = torch.randn(2, 3, 96, 96)
    tok = m.tokenize(["red circle", "small blue star"])
    assert torch.allclose(m(x, **tok), m2(x, **tok), atol=1e-6)


def test_offline_hub_id_gives_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="--weights /path/to/clipseg-rd64-refined"):
        create_model("clipseg", weights="CIDAS/clipseg-rd64-refined-not-cached")
    with pytest.raises(FileNotFoundError, match="save_pretrained"):
        create_model("clipseg", weights="./no/such/folder")


def test_full_size_clipseg_matches_the_paper_parameter_count():
    with torch.device("meta"):
        m = create_model("clipseg", size="base")
    total = m.parameter_counts()["total"]
    assert 150.5e6 < total < 151.0e6  # paper: ~150.7M
    assert sum(p.numel() for p in m.hf.decoder.parameters()) == pytest.approx(1.13e6, rel=0.05)


def test_checkpoint_rebuild_args_reproduce_a_model_loaded_from_a_folder(tmp_path):
    """A model fine-tuned from a local folder is rebuilt from its checkpoint without that folder."""
    m = create_model("clipseg", size="tiny").eval()
    m.hf.save_pretrained(tmp_path / "w")
    loaded = create_model("clipseg", weights=str(tmp_path / "w")).eval()
    torch.save({"build_args": loaded.build_args, "model": loaded.state_dict()}, tmp_path / "ck.pth")
    ck = torch.load(tmp_path / "ck.pth", weights_only=True)
    rebuilt = create_model("clipseg", **ck["build_args"]).eval()
    rebuilt.load_state_dict(ck["model"])
    x = torch.randn(1, 3, 96, 96)
    tok = m.tokenize(["red circle"])
    diff = (rebuilt(x, **tok) - loaded(x, **tok)).abs().max().item()
    assert rebuilt.input_size == 96 and diff < 1e-5, diff
