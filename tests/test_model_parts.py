"""Every registered model as its three parts (models/base.py): ``encode_image``, ``encode_text``, ``decode``.

``forward`` is exactly ``decode(encode_image(x), encode_text(ids, mask))``, and one image encoded once decodes N
prompts (``decode_prompts``) as ``forward`` does on the image repeated N times: what the feature cache, the
adapters of a later issue and an interactive app (one image, many prompts) build on."""
import pytest
import torch

from models import create_model, get_spec, list_models
from models.base import feature_batch_size, feature_tensors, map_features

SIZE = 64  # every tiny model takes it: divisible by CRIS's 32, the CNNs' 8 and the ViTs' patches
PROMPTS = ["red round circle", "a blue square", "the green triangle on the left"]


@pytest.fixture(scope="module", params=list_models())
def model(request):
    torch.manual_seed(0)
    return create_model(request.param, size="tiny", input_size=SIZE).eval()


def images(n: int) -> torch.Tensor:
    return torch.randn(n, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))


def text_features(model, texts):
    tok = model.tokenize(texts)
    return tok, model.encode_text(tok.get("input_ids"), tok.get("attention_mask"))


def test_forward_is_decode_of_the_encoders(model):
    x = images(3)
    with torch.no_grad():
        tok, txt = text_features(model, PROMPTS)
        ref = model(x, **tok)
        img = model.encode_image(x)
        got = model.decode(img, txt)
    assert ref.shape == (3, 1, *ref.shape[-2:])
    assert torch.equal(got, ref)
    assert feature_batch_size(img) == 3 and all(t.shape[0] == 3 for t in feature_tensors(img))
    if model.uses_text:
        assert feature_batch_size(txt) == 3
    else:
        assert txt is None


def test_one_image_decodes_many_prompts(model):
    x = images(1)
    with torch.no_grad():
        tok, txt = text_features(model, PROMPTS)
        ref = model(x.expand(3, -1, -1, -1), **tok)
        img = model.encode_image(x)  # once
        if model.uses_text:
            got = model.decode_prompts(img, txt)
        else:  # no prompts: the image features broadcast all the same
            got = model.decode(model.expand_image_features(img, 3), txt)
    assert got.shape == ref.shape
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    if model.uses_text:  # the prompts matter: not one mask broadcast three times
        assert (got[0] - got[1]).abs().max() > 0


def test_decode_prompts_refuses_mismatched_batches(model):
    if not model.uses_text:
        pytest.skip("text-free: decode_prompts has no prompts to match")
    with torch.no_grad():
        img = model.encode_image(images(2))
        _, txt = text_features(model, PROMPTS)
        with pytest.raises(ValueError, match="batch 2 cannot go with 3 prompts"):
            model.decode_prompts(img, txt)
        same = model.decode_prompts(img, text_features(model, PROMPTS[:2])[1])  # B images, B prompts: decode
    assert same.shape[0] == 2


def test_frozen_encoders_give_features_without_autograd():
    for name in list_models():
        model = create_model(name, size="tiny", input_size=SIZE, freeze_image_encoder=True,
                             freeze_text_encoder=get_spec(name).uses_text)
        _, txt = text_features(model, PROMPTS[:2])
        img = model.encode_image(images(2))
        assert not any(t.requires_grad for t in feature_tensors(img) + feature_tensors(txt)), name
        assert model.decode(img, txt).requires_grad, name  # the decoder still trains


def test_feature_helpers_keep_the_nesting():
    a, b, c = torch.zeros(2, 1), torch.ones(2, 3), torch.full((2,), 2.0)
    feats = ([a, b], c)
    assert feature_tensors(feats) == [a, b, c]
    doubled = map_features(lambda t: t * 2, feats)
    assert isinstance(doubled, tuple) and isinstance(doubled[0], list) and torch.equal(doubled[1], c * 2)
    assert map_features(lambda t: t, None) is None and feature_batch_size(None) is None
    assert feature_batch_size(feats) == 2
