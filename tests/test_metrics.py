import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from vlsm.losses import SegLoss, soft_dice_loss
from vlsm.metrics import dice_iou, upsample_logits


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
