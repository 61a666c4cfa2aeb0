"""The frozen-encoder feature cache (--cache-features): the decoder from cached features computes what the whole
model computes, a run with the cache trains like one without it, and the cache refuses when it would be wrong."""
import pytest
import torch

from models import create_model
from vlsm.feature_cache import FeatureCache, FeatureCacheError, check_usable
from vlsm.training import default_args, run_training


@pytest.mark.parametrize("name,size", [("clipseg", 64), ("biomedclipseg", 64), ("cris", 64)])
def test_decoder_from_cached_features_equals_the_forward_pass(name, size):
    torch.manual_seed(0)
    model = create_model(name, size="tiny", input_size=size, freeze_image_encoder=True,
                         freeze_text_encoder=True).eval()
    cache = FeatureCache(model, torch.device("cpu"))
    x = torch.randn(3, 3, size, size)
    texts = ["red round circle", "blue square", "a green triangle on the left"]
    with torch.no_grad():
        ref = model(x, **model.tokenize(texts))
        # features of each image / prompt computed alone, flattened, then stacked: what the cache does
        img = [torch.cat(f) for f in zip(*[cache._encode_images(x[i:i + 1]) for i in range(3)])]
        txt = [torch.cat(f) for f in zip(*[cache._encode_texts([t]) for t in texts])]
        got = cache.decoder(**{f"img{i}": f for i, f in enumerate(img)}, **{f"txt{i}": f for i, f in enumerate(txt)})
    assert got.shape == ref.shape
    assert torch.allclose(got, ref, atol=1e-4, rtol=1e-4), (got - ref).abs().max()


def test_refuses_when_the_cache_would_be_wrong():
    frozen = create_model("clipseg", size="tiny", freeze_image_encoder=True, freeze_text_encoder=True)
    check_usable(frozen, augment=False)
    with pytest.raises(FeatureCacheError, match="--augment"):
        check_usable(frozen, augment=True)
    half = create_model("clipseg", size="tiny", freeze_image_encoder=True)
    with pytest.raises(FeatureCacheError, match="both encoders frozen"):
        check_usable(half, augment=False)
    cnn = create_model("unet", size="tiny", freeze_image_encoder=True)
    with pytest.raises(FeatureCacheError, match="no frozen-encoder feature path"):
        check_usable(cnn, augment=False)


def test_refusal_reaches_train_before_any_run_folder(small_synthetic, tmp_path):
    data_root, prompts_root = small_synthetic
    args = default_args(data_root=data_root, prompts_root=prompts_root, output_dir=str(tmp_path), workers=0,
                        epochs=1, input_size=64, cache_features=True, freeze_image_encoder=True, no_test=True)
    with pytest.raises(FeatureCacheError, match="both encoders frozen"):
        run_training(args)
    assert not list(tmp_path.rglob("args.json"))


def test_training_with_the_feature_cache_matches_recomputing_the_encoders(small_synthetic, tmp_path):
    data_root, prompts_root = small_synthetic
    common = dict(data_root=data_root, prompts_root=prompts_root, output_dir=str(tmp_path), workers=0, epochs=2,
                  max_steps_per_epoch=4, batch_size=8, input_size=64, freeze_image_encoder=True,
                  freeze_text_encoder=True, no_test=True, seed=3)
    import json
    import os
    rows = {}
    for flag in (False, True):
        res = run_training(default_args(cache_features=flag, out=str(tmp_path / f"run_{flag}"), **common))
        rows[flag] = [json.loads(x) for x in open(os.path.join(res["run_dir"], "metrics.jsonl"))]
    assert len(rows[True]) == len(rows[False]) == 2
    for a, b in zip(rows[False], rows[True]):
        for k in ("train_loss", "val_loss", "val_dice", "val_iou"):
            assert b[k] == pytest.approx(a[k], rel=1e-4, abs=1e-5), (a["epoch"], k, a[k], b[k])
    assert rows[False][-1]["train_loss"] != rows[False][0]["train_loss"]  # the decoder did train
