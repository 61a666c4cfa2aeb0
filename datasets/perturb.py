"""Prompt perturbations (the paper's Figure 3): rebuild a record's prompts from its ``"attributes"`` with one
attribute changed.  One library form shared by ``perturb_prompts.py``, the study runner and the text-reliance
report (vlsm.text_report).

* ``random_word``: the value becomes one uncommon English word from ``assets/uncommon_words.txt``
  (a per-target list becomes a one-word list);
* ``opposite``: the value becomes its opposite (small <-> large, left <-> right, benign <-> malignant, ...;
  ``datasets.prompt_templates.OPPOSITES``) or, where there is none (medium, center, age), another value of the
  same attribute drawn at random; per-target lists are changed target by target;
* ``drop``: the attribute is removed, so the templates leave it out of the sentence.

Real datasets use ``datasets.prompt_templates``; the synthetic data its own templates.  Each record gets
``"perturbation": {"attribute", "kind", "from", "to", "changed"}``; the same seed gives the same records.
"""
from __future__ import annotations

import copy
import os
import random
import re

from . import prompt_templates as T
from . import synthetic

KINDS = ("random_word", "opposite", "drop")
DEFAULT_ATTRIBUTES = ("size", "colour", "shape", "location", "number")
PERTURBABLE = DEFAULT_ATTRIBUTES + ("view", "cycle", "sex", "age", "image_quality", "tumor_type")
ALIASES = {"color": "colour", "quality": "image_quality", "tumour_type": "tumor_type",
           "gender": "sex", "type": "tumor_type"}
WORD_LIST = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets",
                         "uncommon_words.txt")
AGE_SHIFT = 30  # "another" age: 30 years older (younger when that would pass 100)


def has_attributes(records: list[dict]) -> bool:
    """Whether every record carries the ``"attributes"`` the perturbations rebuild prompts from."""
    return all(isinstance(r.get("attributes"), dict) for r in records)


def load_words(path: str = WORD_LIST) -> list[str]:
    """The uncommon-word list (one word a line, blank lines and '#' comments ignored)."""
    with open(path) as f:
        words = [w.strip() for w in f if w.strip() and not w.startswith("#")]
    if not words:
        raise ValueError(f"{path} holds no words")
    return words


def parse_list(text: str, allowed, aliases=None, what="value") -> list[str]:
    items = [(aliases or {}).get(t.strip(), t.strip()) for t in text.split(",") if t.strip()]
    bad = [t for t in items if t not in allowed]
    if bad:
        raise ValueError(f"unknown {what} {bad}; choose from {', '.join(allowed)}")
    return items


def _other_value(attribute: str, value, rng: random.Random):
    """Opposite of one value, or another value of the same vocabulary at random."""
    if attribute == "age":
        age = int(value)
        return age + AGE_SHIFT if age + AGE_SHIFT <= 100 else age - AGE_SHIFT
    opposite = T.OPPOSITES.get(attribute, {}).get(value)
    if opposite is not None:
        return opposite
    choices = [v for v in T.VOCABULARY.get(attribute, ()) if v != value]
    if not choices:
        raise ValueError(f"no other value known for {attribute}={value!r}")
    return rng.choice(choices)


def perturb_value(attribute: str, value, kind: str, rng: random.Random, words: list[str]):
    """New value of one attribute (``None`` for "drop")."""
    if kind == "drop":
        return None
    if kind == "random_word":
        word = rng.choice(words)
        return [word] if isinstance(value, list) else word
    if kind == "opposite":
        if isinstance(value, list):
            return [_other_value(attribute, v, rng) for v in value]
        return _other_value(attribute, value, rng)
    raise ValueError(f"unknown perturbation kind {kind!r}; choose from {', '.join(KINDS)}")


def perturb_record(record: dict, dataset: str, attribute: str, kind: str,
                   rng: random.Random, words: list[str]) -> dict:
    """A copy of ``record`` with one attribute perturbed and its prompts rebuilt."""
    attrs = record.get("attributes")
    if not isinstance(attrs, dict):
        raise ValueError(f"record {record.get('img_name', '?')} has no 'attributes': "
                         "run `python make_prompts.py --data NAME` on the manifest first")
    new = copy.deepcopy(record)
    value = attrs.get(attribute)
    if value is None:
        new["perturbation"] = {"attribute": attribute, "kind": kind, "from": None, "to": None,
                               "changed": False}
        new["prompts"] = T.build_prompts(dataset, attrs)
        return new
    changed = dict(attrs)
    to = perturb_value(attribute, value, kind, rng, words)
    if to is None:
        changed.pop(attribute)
    else:
        changed[attribute] = to
    new["attributes"] = changed
    new["prompts"] = T.build_prompts(dataset, changed)
    new["perturbation"] = {"attribute": attribute, "kind": kind, "from": value, "to": to,
                           "changed": True}
    return new


_SYNTH_ADJECTIVES = {cls: adj for cls, (adj, _) in synthetic.SHAPES.items()}


def _synthetic_prompts(obj: dict, attribute: str, new) -> dict:
    """Synthetic prompts (class = shape name) with one attribute changed; ``shape`` is the shape adjective."""
    if attribute == "shape":
        adj = _SYNTH_ADJECTIVES[obj["shape"]]
        old, repl = f"{adj} {obj['shape']}", f"{new} {obj['shape']}" if new else obj["shape"]
        prompts = {k: ([t.replace(old, repl) for t in v] if isinstance(v, list) else v.replace(old, repl))
                   for k, v in synthetic.prompts_for(obj).items()}
    else:
        prompts = synthetic.prompts_for({**obj, attribute: new if new is not None else "\0"})

    def tidy(t: str) -> str:
        t = re.sub(r",? located in the \0 of the image", "", t)
        return " ".join(t.replace("\0", " ").split())

    return {k: [tidy(t) for t in v] if isinstance(v, list) else tidy(v) for k, v in prompts.items()}


def _perturb_synthetic(record: dict, attribute: str, kind: str, rng: random.Random, words: list[str]) -> dict:
    obj = record.get("attributes") or {}
    new = copy.deepcopy(record)
    if attribute not in ("shape", "colour", "size", "location") or attribute not in obj:
        new["perturbation"] = {"attribute": attribute, "kind": kind, "from": None, "to": None, "changed": False}
        return new
    value = _SYNTH_ADJECTIVES[obj["shape"]] if attribute == "shape" else obj[attribute]
    if kind == "opposite" and attribute == "shape":
        to = rng.choice(sorted(a for a in _SYNTH_ADJECTIVES.values() if a != value))
    elif kind == "opposite" and attribute == "colour" and value not in T.OPPOSITES["colour"]:
        to = rng.choice(sorted(c for c in synthetic.COLOURS if c != value))
    else:
        to = perturb_value(attribute, value, kind, rng, words)
    new["prompts"] = _synthetic_prompts(obj, attribute, to)
    new["perturbation"] = {"attribute": attribute, "kind": kind, "from": value, "to": to, "changed": True}
    return new


def perturb_records(records: list[dict], dataset: str, attribute: str, kind: str, seed: int = 0,
                    words: list[str] | None = None) -> list[dict]:
    """Copies of ``records`` whose prompts are rebuilt from ``"attributes"`` with ``attribute`` changed by
    ``kind`` (random_word: an uncommon word; opposite: the opposite value, or another value of the attribute;
    drop: left out).  Each record gets ``"perturbation": {attribute, kind, from, to, changed}``; a record without
    the attribute is kept with ``changed: false``.  The seed fixes every random choice."""
    if kind not in KINDS:
        raise ValueError(f"unknown perturbation kind {kind!r}; choose from {', '.join(KINDS)}")
    words = words or load_words()
    rng = random.Random(f"{seed}:{attribute}:{kind}")
    if dataset == "synthetic":
        return [_perturb_synthetic(r, attribute, kind, rng, words) for r in records]
    T.family_of(dataset)
    return [perturb_record(r, dataset, attribute, kind, rng, words) for r in records]


perturb_manifest = perturb_records  # the name perturb_prompts.py has always used
