"""One image, many prompts: the prompt explorer's model side, apart from any user interface.

:class:`PromptExplorer` encodes an image once (``encode_image`` on one image), keeps its features, and turns each
new prompt into a probability map at the image's original size with one text encoding and one decode
(``encode_text`` + ``decode_prompts``, docs/models.md "One image, many prompts").  Both the image features and
the per-prompt probability maps are cached, so:

- N prompts on one image cost one image encoding, N text encodings and N decodes;
- a prompt seen before on the same image costs nothing (no forward pass);
- a threshold change re-thresholds the cached probabilities (no forward pass).

``explorer.counts`` says how many image encodings, text encodings and decodes were run (the tests count them).

On top of the maps: the per-prompt table (area in pixels and mm² when the spacing is known, mean probability
inside the mask) and :meth:`PromptExplorer.text_reliance`, the "does it read the text?" comparison for one image
(the typed prompt against the empty prompt, gibberish of the same length and another image's prompt, with the
Dice between each mask and the typed prompt's mask: ``text_report.py`` for one image).

:func:`bench_app` times 5 prompts against 1 prompt on one image (``bench.py`` reports it).
"""
from __future__ import annotations

import hashlib
import random
import threading
import time
from collections import OrderedDict

import numpy as np
import torch

from datasets import SegTransform
from util.metrics import dice_iou, mask_statistics, upsample_logits
from util.runtime import pick_device, prepare_images

from ..text_report import gibberish

#: outline colours, one per prompt in order (bright, far apart, none of them black: the outline's halo is black)
PALETTE = ((0, 255, 0), (255, 0, 255), (0, 200, 255), (255, 200, 0), (255, 64, 64), (140, 110, 255),
           (255, 255, 255), (0, 255, 170), (255, 140, 0), (170, 255, 0))
MAX_PROMPTS = len(PALETTE)
#: bytes of probability maps kept (float32 at the original size; least recently used maps go first)
MAP_CACHE_BYTES = 512 * 2 ** 20
IMAGE_CACHE = 4  # images whose features are kept
TABLE_COLUMNS = ("prompt", "colour", "area_px", "area_fraction", "area_mm2", "mean_prob_in_mask", "max_prob")
RELIANCE_COLUMNS = ("prompt", "condition", "text", "area_px", "mean_prob_in_mask", "dice_vs_typed")
#: a prompt of another image when there is no test manifest to take one from (names nothing medical)
FALLBACK_OTHER_PROMPT = "a red bicycle leaning against a brick wall"


class AppInputError(ValueError):
    """Something the user gave that cannot be used (an unreadable image, no prompt, a threshold outside [0, 1],
    a volume without a slice); the message says what and how to fix it."""


def colour_hex(colour) -> str:
    return "#%02x%02x%02x" % tuple(colour)


def check_threshold(value) -> float:
    """A probability threshold in [0, 1], else :class:`AppInputError`."""
    try:
        t = float(value)
    except (TypeError, ValueError):
        raise AppInputError(f"the threshold must be a number in [0, 1], got {value!r}") from None
    if not 0.0 <= t <= 1.0:  # also refuses NaN
        raise AppInputError(f"the threshold must be in [0, 1], got {t:g}")
    return t


def parse_prompts(text) -> list[str]:
    """The prompts of a text box, one per line: blank lines dropped, repeats kept once, at most
    :data:`MAX_PROMPTS` (one outline colour each)."""
    prompts = list(dict.fromkeys(line.strip() for line in str(text or "").splitlines() if line.strip()))
    if not prompts:
        raise AppInputError("the prompt box is empty: type what to segment, one prompt per line")
    if len(prompts) > MAX_PROMPTS:
        raise AppInputError(f"{len(prompts)} prompts: at most {MAX_PROMPTS} at a time (one colour each)")
    return prompts


def image_key(rgb: np.ndarray) -> str:
    """The cache key of an image: a hash of its pixels and shape (the same pixels, however they came, share
    their features)."""
    h = hashlib.sha1(str(rgb.shape).encode())
    h.update(np.ascontiguousarray(rgb).tobytes())
    return h.hexdigest()[:20]


def as_rgb(image) -> np.ndarray:
    """uint8 HxWx3 from a PIL image or an array (grey repeated, alpha dropped)."""
    arr = np.asarray(image.convert("RGB") if hasattr(image, "convert") else image)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4) or arr.dtype != np.uint8:
        raise AppInputError(f"expected an 8-bit RGB or grey image, got an array {arr.dtype} of shape {arr.shape}")
    return np.ascontiguousarray(arr[..., :3])


def mask_row(label: str, prob: np.ndarray, mask: np.ndarray, spacing=None) -> dict:
    """Area (pixels, fraction, mm² when ``spacing`` = (row, col) mm is known), mean probability inside the mask
    and the largest probability of the image (util.metrics.mask_statistics, rounded for the page)."""
    st = mask_statistics(prob, mask, spacing)
    return {"prompt": label, "area_px": st["area_px"], "area_fraction": round(st["area_fraction"], 6),
            "area_mm2": "" if st["area_mm2"] is None else round(st["area_mm2"], 3),
            "mean_prob_in_mask": "" if st["mean_prob_in_mask"] is None else round(st["mean_prob_in_mask"], 4),
            "max_prob": round(st["max_prob"], 4)}


def mask_dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice between two masks, with the toolkit's empty-mask rule (both empty: 1)."""
    return float(dice_iou(torch.from_numpy(a), torch.from_numpy(b))[0])


class PromptExplorer:
    """A model with its caches: image features per image, a probability map per (image, prompt).

    Thread-safe (a web app calls it from several threads): one lock around the model and the caches.
    """

    def __init__(self, model, threshold: float = 0.5, device="cpu", image_cache: int = IMAGE_CACHE,
                 map_cache_bytes: int = MAP_CACHE_BYTES):
        self.model = model.eval()
        self.device = torch.device(device)
        self.threshold = check_threshold(threshold)
        self.transform = SegTransform(model.input_size, model.image_mean, model.image_std)
        self.counts = {"image_encodings": 0, "text_encodings": 0, "decodes": 0}
        self._features: OrderedDict = OrderedDict()  # image key -> image features of batch 1
        self._maps: OrderedDict = OrderedDict()      # (image key, prompt) -> float32 HxW probabilities
        self._map_bytes = 0
        self._image_cache, self._map_cache_bytes = image_cache, map_cache_bytes
        self._lock = threading.RLock()

    # ----------------------------------------------------------------------------- what the model is
    @property
    def uses_text(self) -> bool:
        return bool(getattr(self.model, "uses_text", True))

    def labels(self) -> list[str]:
        """What a text-free model segments: its class names (``--multiclass``) or its name (one mask)."""
        names = getattr(self.model, "class_names", None)
        return list(names) if names else [f"{getattr(self.model, 'name', 'model')} (no text)"]

    # ----------------------------------------------------------------------------- the forward passes
    def _encode_image(self, rgb: np.ndarray, key: str):
        """The image features of ``rgb`` (batch 1), computed once per image: the data cache's resize rule
        (``SegTransform.resize``), normalised on the device (``prepare_images``), then ``encode_image``."""
        if key in self._features:
            self._features.move_to_end(key)
            return self._features[key]
        x, _ = self.transform.resize(_pil(rgb), np.zeros(rgb.shape[:2], bool))
        features = self.model.encode_image(prepare_images(x[None], self.model, self.device))
        self.counts["image_encodings"] += 1
        self._features[key] = features
        while len(self._features) > self._image_cache:
            old, _ = self._features.popitem(last=False)
            for k in [k for k in self._maps if k[0] == old]:
                self._drop_map(k)
        return features

    def _drop_map(self, k) -> None:
        self._map_bytes -= self._maps.pop(k).nbytes

    def _keep_map(self, k, prob: np.ndarray) -> None:
        self._maps[k] = prob
        self._map_bytes += prob.nbytes
        while self._map_bytes > self._map_cache_bytes and len(self._maps) > 1:
            self._drop_map(next(iter(self._maps)))

    @torch.no_grad()
    def probabilities(self, rgb: np.ndarray, prompts: list[str] | None = None) -> list[np.ndarray]:
        """One float32 probability map per prompt at the image's original size (bilinear logits, then sigmoid,
        as evaluation does).  Only prompts not seen before on this image run the model: one text encoding and
        one decode each, the image encoded at most once.  A text-free model ignores ``prompts`` and gives one
        map per :meth:`labels`."""
        rgb = as_rgb(rgb)
        key = image_key(rgb)
        texts = list(prompts or []) if self.uses_text else self.labels()
        if self.uses_text and not texts:
            raise AppInputError("no prompt given: type what to segment, one prompt per line")
        with self._lock:
            got = {}
            for t in dict.fromkeys(texts):
                if (key, t) in self._maps:
                    self._maps.move_to_end((key, t))
                    got[t] = self._maps[(key, t)]
            missing = [t for t in dict.fromkeys(texts) if t not in got]
            if missing:
                features = self._encode_image(rgb, key)
                if self.uses_text:
                    tok = self.model.tokenize(missing, self.device)
                    text_features = self.model.encode_text(tok["input_ids"], tok.get("attention_mask"))
                    self.counts["text_encodings"] += len(missing)
                    logits = self.model.decode_prompts(features, text_features)  # (N, 1, h, w)
                    self.counts["decodes"] += len(missing)
                else:
                    logits = self.model.decode(features, None).transpose(0, 1)  # (1, C, h, w) -> (C, 1, h, w)
                    self.counts["decodes"] += 1
                probs = torch.sigmoid(upsample_logits(logits, rgb.shape[:2]))[:, 0].cpu().numpy()
                for text, prob in zip(missing, probs):
                    got[text] = np.ascontiguousarray(prob, dtype=np.float32)
                    self._keep_map((key, text), got[text])
            return [got[t] for t in texts]

    # ----------------------------------------------------------------------------- what the page shows
    def segment(self, rgb: np.ndarray, prompts: list[str] | None, threshold: float | None = None,
                spacing=None) -> dict:
        """Masks and their table for ``prompts`` on ``rgb``: ``{"labels", "probs", "masks", "rows",
        "threshold"}``; rows as :data:`TABLE_COLUMNS` (``colour`` is the outline colour).  Cached maps are only
        re-thresholded."""
        t = self.threshold if threshold is None else check_threshold(threshold)
        probs = self.probabilities(rgb, prompts)
        labels = list(prompts) if self.uses_text else self.labels()
        masks = [p > t for p in probs]
        rows = [{**mask_row(label, p, m, spacing), "colour": colour_hex(PALETTE[i % len(PALETTE)])}
                for i, (label, p, m) in enumerate(zip(labels, probs, masks))]
        return {"labels": labels, "probs": probs, "masks": masks, "rows": rows, "threshold": t}

    def text_reliance(self, rgb: np.ndarray, prompts: list[str], threshold: float | None = None,
                      other_prompt: str | None = None, seed: int = 0) -> dict:
        """Does the model read the text on this image?  For each typed prompt: its mask against the masks of the
        empty prompt, gibberish of the same length (every letter replaced, spaces kept, as text_report.py) and
        another image's prompt (``other_prompt``), with the Dice between each and the typed prompt's mask (both
        empty: 1).  High Dice everywhere = the words do not matter here.

        Returns ``{"rows", "masks", "verdict", "threshold"}``: rows as :data:`RELIANCE_COLUMNS`, ``masks`` one
        list of (condition, text, mask) per prompt."""
        if not self.uses_text:
            raise AppInputError("this model reads no text (a text-free CNN): there is no prompt to compare")
        t = self.threshold if threshold is None else check_threshold(threshold)
        rng = random.Random(f"{seed}:gibberish")
        conditions = []
        for p in prompts:
            conditions.append([("typed", p), ("empty", ""), ("gibberish", gibberish(p, rng))]
                              + ([("other image", other_prompt)] if other_prompt else []))
        texts = [text for cs in conditions for _, text in cs]
        maps = dict(zip(texts, self.probabilities(rgb, texts)))
        rows, masks, wrong = [], [], []
        for p, cs in zip(prompts, conditions):
            ref = maps[p] > t
            panel = []
            for condition, text in cs:
                m = maps[text] > t
                d = mask_dice(m, ref)
                if condition != "typed":
                    wrong.append(d)
                row = mask_row(p, maps[text], m)
                rows.append({"prompt": p, "condition": condition, "text": text, "area_px": row["area_px"],
                             "mean_prob_in_mask": row["mean_prob_in_mask"], "dice_vs_typed": round(d, 4)})
                panel.append((condition, text, m))
            masks.append(panel)
        typed_empty = all(not (maps[p] > t).any() for p in prompts)
        return {"rows": rows, "masks": masks, "threshold": t,
                "verdict": reliance_verdict(wrong, typed_empty, other_prompt is not None and other_prompt != "")}

    def clear(self) -> None:
        """Forget every cached feature and map (the counts stay)."""
        with self._lock:
            self._features.clear()
            self._maps.clear()
            self._map_bytes = 0


def reliance_verdict(wrong_dice: list[float], typed_empty: bool, has_other: bool) -> str:
    """One sentence on the comparison: how far the masks of the wrong prompts stay from the typed prompt's."""
    if typed_empty:
        return ("The typed prompt gives an empty mask at this threshold, so the comparison says little: lower the "
                "threshold or change the prompt.")
    mean = sum(wrong_dice) / len(wrong_dice)
    what = "the empty prompt, gibberish" + (" and another image's prompt" if has_other else "")
    if mean >= 0.8:
        return (f"With {what}, the mask stays almost the same (mean Dice {mean:.2f} with the typed prompt's mask): "
                f"on this image the model hardly reads the text.")
    if mean <= 0.3:
        return (f"With {what}, the mask changes (mean Dice {mean:.2f} with the typed prompt's mask): on this image "
                f"the model reads the text.")
    return (f"With {what}, the mask partly changes (mean Dice {mean:.2f} with the typed prompt's mask): the text "
            f"steers the mask only in part.")


def _pil(rgb: np.ndarray):
    from PIL import Image
    return Image.fromarray(rgb)


# ----------------------------------------------------------------------------- cost of N prompts


def bench_app(model=None, device="auto", n_prompts: int = 5, repeats: int = 3, image_hw=(576, 720),
              clock: str = "auto", quiet: bool = False) -> dict:
    """Time N prompts against 1 prompt on one image through :class:`PromptExplorer` (fresh caches each time:
    one image encoding + N text encodings and decodes + upsampling to the original size), and, for comparison,
    N full forward passes (the image encoded N times).  ``model``: default a full-size CLIPSeg with random
    weights (nothing downloaded).  ``clock``: ``wall`` (CUDA synchronised) or ``cpu`` (this process's CPU time,
    which other processes on a shared machine do not inflate); ``auto`` = ``cpu`` on the CPU, ``wall`` on CUDA.
    Prints one line and returns the seconds (medians of ``repeats`` interleaved runs after a warm-up) and the
    ratios."""
    from models import create_model
    device = pick_device(device) if isinstance(device, str) else device
    if clock == "auto":
        clock = "cpu" if device.type == "cpu" else "wall"
    now = time.process_time if clock == "cpu" else time.perf_counter
    if model is None:
        model = create_model("clipseg", weights=None, size="base")
    model = model.to(device).eval()
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (*image_hw, 3), dtype=np.uint8)
    prompts = ["polyp", "a small round polyp in the centre", "the large pink polyp on the left",
               "an elongated lesion at the top right", "two polyps", "the background"]
    prompts = (prompts * (n_prompts // len(prompts) + 1))[:n_prompts]

    tf = SegTransform(model.input_size, model.image_mean, model.image_std)

    def explorer_once(texts) -> float:
        ex = PromptExplorer(model, 0.5, device)  # fresh caches: the image is encoded again
        _sync(device)
        t0 = now()
        ex.probabilities(rgb, texts)
        _sync(device)
        return now() - t0

    @torch.no_grad()
    def separate_once(texts) -> float:
        _sync(device)
        t0 = now()
        for text in texts:  # what N separate requests cost: the image encoded every time
            x, _ = tf.resize(_pil(rgb), np.zeros(rgb.shape[:2], bool))
            logits = model(prepare_images(x[None], model, device), **model.tokenize([text], device))
            torch.sigmoid(upsample_logits(logits, rgb.shape[:2])).cpu()
        _sync(device)
        return now() - t0

    times = {"one": [], "many": [], "separate": []}
    for r in range(max(1, repeats) + 1):  # interleaved, so that a busy machine slows all three alike; run 0 warms up
        one_s, many_s, separate_s = explorer_once(prompts[:1]), explorer_once(prompts), separate_once(prompts)
        if r:
            times["one"].append(one_s)
            times["many"].append(many_s)
            times["separate"].append(separate_s)
    one, many, naive = (float(np.median(times[k])) for k in ("one", "many", "separate"))
    out = {"model": getattr(model, "name", "model"), "input": model.input_size, "image": list(image_hw),
           "device": str(device), "clock": clock, "n_prompts": n_prompts, "one_prompt_s": one, "n_prompts_s": many,
           "ratio": many / one, "separate_forwards_s": naive, "separate_ratio": naive / one}
    if not quiet:
        print(f"prompt explorer, {out['model']} at {out['input']} px, one {image_hw[0]}x{image_hw[1]} image on "
              f"{device} ({clock} time): {n_prompts} prompts {many:.3f} s, 1 prompt {one:.3f} s: "
              f"{out['ratio']:.2f}x (one image encoding + {n_prompts} text encodings and decodes); {n_prompts} "
              f"separate forward passes {naive:.3f} s: {out['separate_ratio']:.2f}x")
    return out


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
