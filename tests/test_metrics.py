import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from util.metrics import dice_iou, upsample_logits
from vlsm.losses import SegLoss, soft_dice_loss


def test_dice_iou_on_known_masks():
    a = torch.zeros(10, 10, dtype=torch.bool)
    b = torch.zeros(10, 10, dtype=torch.bool)
    a[0:4, 0:5] = True   # 20 px
    b[2:6, 0:5] = True   # 20 px, overlap rows 2-3 -> 10 px
    d, j = dice_iou(a, b)
    assert d == pytest.approx(2 * 10 / 40)
    assert j == pytest.approx(10 / 30)


def test_empty_mask_rule():
    z = torch.zeros(5, 5, dtype=torch.bool)
    o = z.clone()
    o[2, 2] = True
    assert dice_iou(z, z) == (1.0, 1.0)       # both empty: perfect
    assert dice_iou(o, z) == (0.0, 0.0)       # false positive on an empty mask
    assert dice_iou(z, o) == (0.0, 0.0)       # missed target


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="differ in shape"):
        dice_iou(torch.zeros(3, 3), torch.zeros(4, 4))


def test_upsample_to_original_size_recovers_a_large_square():
    # a 64x48 mask, predicted at 32x32 model resolution, scored at the original size
    target = torch.zeros(48, 64, dtype=torch.bool)
    target[12:36, 16:48] = True
    small = torch.nn.functional.interpolate(target[None, None].float(), size=(32, 32), mode="bilinear")
    logits = (small - 0.5) * 20
    up = upsample_logits(logits[0], target.shape)[0]
    assert up.shape == target.shape
    d, _ = dice_iou(torch.sigmoid(up) > 0.5, target)
    assert d > 0.97


def test_loss_is_float32_and_zero_bce_weight_drops_bce():
    logits = torch.randn(2, 1, 8, 8, dtype=torch.float16)
    target = (torch.rand(2, 1, 16, 16) > 0.5).float()
    out = SegLoss("dice+bce", 0.2)(logits, target)
    assert out["loss"].dtype == torch.float32
    assert out["loss"].item() == pytest.approx(out["dice_loss"].item() + 0.2 * out["bce_loss"].item(), rel=1e-6)
    assert SegLoss("dice", 0.0)(logits, target).keys() == {"dice_loss", "loss"}


def test_soft_dice_loss_near_zero_for_confident_correct_logits():
    t = (torch.rand(2, 1, 16, 16) > 0.5).float()
    assert soft_dice_loss((t - 0.5) * 40, t).item() < 1e-3
    assert soft_dice_loss((0.5 - t) * 40, t).item() > 0.99


masks = arrays(np.bool_, st.tuples(st.integers(1, 12), st.integers(1, 12)))


@settings(max_examples=60, deadline=None)
@given(masks, st.data())
def test_dice_properties(a, data):
    b = data.draw(arrays(np.bool_, a.shape))
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    d, j = dice_iou(ta, tb)
    assert 0.0 <= d <= 1.0 and 0.0 <= j <= 1.0
    assert not np.isnan(d) and not np.isnan(j)
    assert (d, j) == dice_iou(tb, ta)                 # symmetric
    assert dice_iou(ta, ta) == (1.0, 1.0)             # identical masks
    assert d == pytest.approx(2 * j / (1 + j))        # Dice and IoU agree


@settings(max_examples=25, deadline=None)
@given(st.integers(8, 24), st.integers(8, 24), st.integers(2, 4))
def test_dice_resize_invariance(h, w, scale):
    """Scoring a nearest-upscaled prediction against the upscaled target gives the same Dice."""
    rng = np.random.default_rng(h * 100 + w)
    a = torch.from_numpy(rng.random((h, w)) > 0.5)
    b = torch.from_numpy(rng.random((h, w)) > 0.5)
    up = lambda m: m.repeat_interleave(scale, 0).repeat_interleave(scale, 1)
    assert dice_iou(up(a), up(b))[0] == pytest.approx(dice_iou(a, b)[0], abs=1e-9)


# ----------------------------------------------------------------------------- batched metrics (engine.evaluate)

from util.metrics import batch_dice_iou, mask_at_size, score_at_sizes  # noqa: E402


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 5), st.integers(1, 9), st.integers(1, 9), st.data())
def test_batched_dice_iou_equals_the_per_image_rule(b, h, w, data):
    p = torch.from_numpy(data.draw(arrays(np.bool_, (b, h, w))))
    t = torch.from_numpy(data.draw(arrays(np.bool_, (b, h, w))))
    p[0], t[0] = False, False  # always one both-empty pair
    d, j = batch_dice_iou(p, t)
    assert [(x, y) for x, y in zip(d.tolist(), j.tolist())] == [dice_iou(p[i], t[i]) for i in range(b)]


def test_score_at_sizes_groups_original_sizes_and_matches_one_image_at_a_time():
    torch.manual_seed(0)
    logits = torch.randn(5, 1, 8, 8) * 4
    targets = [torch.rand(12, 10) > 0.5, torch.rand(9, 14) > 0.5, torch.rand(12, 10) > 0.5,
               torch.zeros(9, 14, dtype=torch.bool), torch.rand(12, 10) > 0.5]
    logits[3] = -50  # empty prediction on an empty target: 1
    counts, masks = score_at_sizes(logits, targets, 0.5, keep_masks=True)
    d, j = batch_dice_iou(torch.zeros(1, 1, 1, dtype=torch.bool), torch.zeros(1, 1, 1, dtype=torch.bool))
    assert (d.item(), j.item()) == (1.0, 1.0)
    for i, t in enumerate(targets):
        pred = mask_at_size(logits[i], t.shape, 0.5)
        assert torch.equal(masks[i], pred)
        assert counts[i].tolist() == [int((pred & t).sum()), int(pred.sum()), int(t.sum())]
    same = torch.stack([targets[0], targets[2], targets[4]])  # one size: a tensor of targets, one group
    assert torch.equal(score_at_sizes(logits[[0, 2, 4]], same, 0.5), counts[[0, 2, 4]])


def test_evaluate_rows_keep_their_keys_and_pass_extra_fields_through():
    import engine

    class Const(torch.nn.Module):
        uses_text = False
        image_mean, image_std = (0.5,) * 3, (0.25,) * 3

        def forward(self, x):
            return x[:, :1, ::2, ::2] * 10  # logits from the first channel, half resolution

    g = torch.Generator().manual_seed(1)
    orig = [torch.rand(10, 12, generator=g) > 0.5, torch.rand(7, 9, generator=g) > 0.5]
    batch = {"image": torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8, generator=g),
             "mask": (torch.rand(2, 1, 8, 8, generator=g) > 0.5).float(), "orig_mask": orig,
             "text": ["a", "b"], "prompt_key": ["p1", "p2"], "dataset": ["d", "d"], "name": ["x.png", "y.png"],
             "mask_name": ["x_m.png", "y_m.png"], "index": [0, 1], "skipped": []}
    res = engine.evaluate(Const(), [batch], torch.device("cpu"), per_image=True)
    keys = ["dataset", "img_name", "mask_name", "prompt", "dice", "iou", "gt_pixels", "pred_pixels", "inter_pixels",
            "pixels", "hd95_px", "prompt_key"]
    assert [list(r) for r in res["rows"]] == [keys, keys]
    from util.runtime import prepare_images
    x = prepare_images(batch["image"], Const(), torch.device("cpu"))  # uint8 is normalised on the device
    assert torch.allclose(x, (batch["image"].float() / 255 - 0.5) / 0.25, atol=1e-6)
    for i, r in enumerate(res["rows"]):
        pred = mask_at_size(x[i:i + 1, :1, ::2, ::2][0] * 10, orig[i].shape, 0.5)
        assert (r["dice"], r["iou"]) == dice_iou(pred, orig[i])
        assert r["pixels"] == orig[i].numel() and r["prompt_key"] == batch["prompt_key"][i]
    assert res["n"] == 2 and res["dice"] == pytest.approx(np.mean([r["dice"] for r in res["rows"]]))


# ----------------------------------------------------------------------------- HD95

def _surface_hd95(a: np.ndarray, b: np.ndarray, spacing=(1.0, 1.0)) -> float:
    """HD95 from first principles: surface pixels (the mask minus its erosion), every distance from one surface
    to the nearest point of the other, the 95th percentile of each direction, the larger of the two."""
    from scipy import ndimage
    sa = np.argwhere(a & ~ndimage.binary_erosion(a)) * np.asarray(spacing)
    sb = np.argwhere(b & ~ndimage.binary_erosion(b)) * np.asarray(spacing)
    d = np.sqrt(((sa[:, None, :] - sb[None, :, :]) ** 2).sum(-1))
    return float(max(np.percentile(d.min(1), 95), np.percentile(d.min(0), 95)))


def test_hd95_known_distances_spacing_and_empty_masks():
    import math

    from util.metrics import hd95
    a, b = torch.zeros(40, 40, dtype=torch.bool), torch.zeros(40, 40, dtype=torch.bool)
    a[10, 10], b[10, 22] = True, True              # two points 12 columns apart
    assert hd95(a, b) == pytest.approx(12.0)
    assert hd95(a, b, spacing=(3.0, 0.5)) == pytest.approx(6.0)   # (row, column) mm: 12 columns x 0.5 mm
    b2 = torch.zeros_like(b)
    b2[16, 10] = True                                 # 6 rows apart: the row spacing applies
    assert hd95(a, b2, spacing=(3.0, 0.5)) == pytest.approx(18.0)
    assert hd95(a, a) == 0.0
    assert math.isnan(hd95(a, torch.zeros_like(a))) and math.isnan(hd95(torch.zeros_like(a), torch.zeros_like(a)))


def test_hd95_matches_first_principles_on_random_blobs():
    from scipy import ndimage

    from util.metrics import hd95
    rng = np.random.default_rng(0)
    for _ in range(5):
        a = ndimage.binary_opening(ndimage.gaussian_filter(rng.random((48, 64)), 3) > 0.5)
        b = ndimage.binary_opening(ndimage.gaussian_filter(rng.random((48, 64)), 3) > 0.5)
        if not a.any() or not b.any():
            continue
        for sp in ((1.0, 1.0), (0.7, 1.3)):
            assert hd95(torch.from_numpy(a), torch.from_numpy(b), sp) == pytest.approx(_surface_hd95(a, b, sp),
                                                                                         rel=1e-5, abs=1e-5)


def test_summary_hd95_units_and_exclusions():
    from util.summary import summarize
    row = dict(dice=1.0, iou=1.0, gt_pixels=5, pred_pixels=5, inter_pixels=5, pixels=100)
    rows = [dict(row, hd95_px=2.0, hd95_mm=1.0), dict(row, hd95_px=4.0, hd95_mm=3.0),
            dict(row, hd95_px=float("nan"), hd95_mm=float("nan"))]
    s = summarize(rows)
    assert (s["hd95_unit"], s["hd95_mean"], s["hd95_n"], s["hd95_excluded"]) == ("mm", 2.0, 2, 1)
    rows[0]["hd95_mm"] = ""                           # one record without a spacing: pixels, said so
    s = summarize(rows)
    assert (s["hd95_unit"], s["hd95_mean"]) == ("px", 3.0)
