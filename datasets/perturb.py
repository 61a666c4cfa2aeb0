"""Prompt perturbations (the paper's Figures 3 and 4): a record's prompts with one attribute changed.  One
library form shared by ``perturb_prompts.py``, the study runner, the text-reliance report (vlsm.text_report) and
the Figure 4 plot (vlsm.figures).

Two sources of the values:

* a record with ``"attributes"`` (``make_prompts.py``): its prompts are rebuilt from them by the templates;
* a record of the paper's released manifests (no attributes): the values are read back from its own prompts by the
  non-radiology template, P2 = ``<shape> P1``, P3 = ``<colour> P2``, P4 = ``<size> P3``, P5 = ``<number> P4``,
  P6 = ``P5, located in <location> of the image`` (:func:`recover_attributes`), and only the value's words are
  replaced, in every prompt that holds them: the released wording stays.  A record whose prompts do not follow
  the template (BKAI's "no polyp" records) is kept unperturbed, with the reason, and counted
  (:func:`unmatched`).

* ``random_word``: the value becomes one uncommon English word from ``assets/uncommon_words.txt``
  (a per-target list becomes a one-word list);
* ``opposite``: the value becomes its opposite (small <-> large, left <-> right, benign <-> malignant, ...;
  ``datasets.prompt_templates.OPPOSITES``) or, where there is none (medium, center, age), another value of the
  same attribute drawn at random; per-target lists are changed target by target;
* ``drop``: the attribute is removed, so the templates leave it out of the sentence;
* ``same_set``: another value of the attribute drawn from the values the records themselves hold (the dataset's
  value set, the paper's Figure 4).

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

KINDS = ("random_word", "opposite", "drop", "same_set")
DEFAULT_ATTRIBUTES = ("size", "colour", "shape", "location", "number")
PERTURBABLE = DEFAULT_ATTRIBUTES + ("view", "cycle", "sex", "age", "image_quality", "tumor_type")
ALIASES = {"color": "colour", "quality": "image_quality", "tumour_type": "tumor_type",
           "gender": "sex", "type": "tumor_type"}
WORD_LIST = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets",
                         "uncommon_words.txt")
AGE_SHIFT = 30  # "another" age: 30 years older (younger when that would pass 100)
#: the attributes the released non-radiology prompts carry, with the prompt that adds each (P2..P6)
RELEASED = {"shape": "p2", "colour": "p3", "size": "p4", "number": "p5", "location": "p6"}
LOCATED, OF_IMAGE = "located in ", " of the image"


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


def recover_attributes(record: dict, dataset: str) -> tuple[dict | None, str]:
    """(shape, colour, size, number, location) read back from a released record's prompts P1..P6 by the
    non-radiology template, or (None, why the record does not follow it).  Values are the phrases as released
    ("top left, right", "small, medium")."""
    family = T.family_of(dataset)
    if family != "non_radiology":
        return None, f"no template to read the released {family} prompts back"
    p = record.get("prompts") or {}
    texts = [p.get(f"p{i}") for i in range(1, 7)]
    if not all(isinstance(t, str) and t for t in texts):
        return None, "P1..P6 are not all non-empty texts"
    values = {}
    for i, attribute in enumerate(("shape", "colour", "size", "number"), start=2):
        prev, cur = texts[i - 2], texts[i - 1]
        if not cur.endswith(" " + prev) or len(cur) <= len(prev) + 1:
            return None, f"P{i} {cur!r} is not '<{attribute}> P{i - 1}'"
        values[attribute] = cur[:-len(prev) - 1]
    p5, p6 = texts[4], texts[5]
    head = p5 + ", " + LOCATED
    if not (p6.startswith(head) and p6.endswith(OF_IMAGE)) or len(p6) <= len(head) + len(OF_IMAGE):
        return None, f"P6 {p6!r} is not 'P5, located in <location> of the image'"
    values["location"] = p6[len(head):-len(OF_IMAGE)]
    return values, ""


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


def _hashable(value):
    return tuple(value) if isinstance(value, list) else value


def _same_set_value(value, value_set, rng: random.Random):
    """Another value of ``value_set`` (the values the dataset's records hold), or ``value`` when there is none."""
    others = sorted({_hashable(v) for v in value_set} - {_hashable(value)}, key=str)
    if not others:
        return value
    pick = rng.choice(others)
    return list(pick) if isinstance(pick, tuple) else pick


def perturb_value(attribute: str, value, kind: str, rng: random.Random, words: list[str], value_set=()):
    """New value of one attribute (``None`` for "drop"); ``value_set``: the dataset's values (``same_set``)."""
    if kind == "drop":
        return None
    if kind == "same_set":
        return _same_set_value(value, value_set, rng)
    if kind == "random_word":
        word = rng.choice(words)
        return [word] if isinstance(value, list) else word
    if kind == "opposite":
        if isinstance(value, list):
            return [_other_value(attribute, v, rng) for v in value]
        return _other_value(attribute, value, rng)
    raise ValueError(f"unknown perturbation kind {kind!r}; choose from {', '.join(KINDS)}")


def perturb_record(record: dict, dataset: str, attribute: str, kind: str,
                   rng: random.Random, words: list[str], value_set=()) -> dict:
    """A copy of ``record`` with one attribute perturbed and its prompts rebuilt from its attributes."""
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
    to = perturb_value(attribute, value, kind, rng, words, value_set)
    if to is None:
        changed.pop(attribute)
    else:
        changed[attribute] = to
    new["attributes"] = changed
    new["prompts"] = T.build_prompts(dataset, changed)
    new["perturbation"] = {"attribute": attribute, "kind": kind, "from": value, "to": to,
                           "changed": to != value}
    return new


def _released_value(attribute: str, value: str, kind: str, rng: random.Random, words: list[str], value_set):
    """The new phrase of a released value: a word, the opposite of each comma-separated part ("top left, right"
    -> "bottom right, left"), another phrase of the dataset, or None (drop)."""
    if kind == "opposite":
        return ", ".join(_other_value(attribute, part, rng) for part in value.split(", "))
    return perturb_value(attribute, value, kind, rng, words, value_set)


def _replace_released(prompts: dict, attribute: str, values: dict, to: str | None) -> dict:
    """``prompts`` with the words of one recovered value replaced by ``to`` (removed when None), wherever the
    phrase that carries it appears (P2..P6 and the P8/P9 texts that extend P5)."""
    p = {k: prompts.get(k) for k in ("p1", "p2", "p3", "p4", "p5")}
    if attribute == "location":
        loc = values["location"]
        pairs = [(", " + LOCATED + loc + OF_IMAGE, "" if to is None else ", " + LOCATED + to + OF_IMAGE),
                 (" " + LOCATED + loc + OF_IMAGE, "" if to is None else " " + LOCATED + to + OF_IMAGE)]
    else:
        key = RELEASED[attribute]
        before = p[f"p{int(key[1]) - 1}"]
        pairs = [(p[key], before if to is None else f"{to} {before}")]

    def change(text):
        if not isinstance(text, str):
            return text
        for old, new in pairs:
            if old in text:
                return text.replace(old, new, 1)
        return text
    return {k: [change(t) for t in v] if isinstance(v, list) else change(v) for k, v in prompts.items()}


def perturb_released(record: dict, dataset: str, attribute: str, kind: str, rng: random.Random,
                     words: list[str], value_set=()) -> dict:
    """A copy of a released record (no attributes) with one value replaced in its own prompts; a record that does
    not follow the template is kept, with ``perturbation.unmatched`` saying why."""
    new = copy.deepcopy(record)
    values, why = recover_attributes(record, dataset)
    if values is None or attribute not in values:
        reason = why or f"the released prompts carry no {attribute}"
        new["perturbation"] = {"attribute": attribute, "kind": kind, "from": None, "to": None, "changed": False,
                               **({"unmatched": why} if why else {}), **({} if why else {"reason": reason})}
        return new
    value = values[attribute]
    to = _released_value(attribute, value, kind, rng, words, value_set)
    new["prompts"] = _replace_released(record["prompts"], attribute, values, to)
    new["perturbation"] = {"attribute": attribute, "kind": kind, "from": value, "to": to, "changed": to != value,
                           "source": "released prompts"}
    return new


def dataset_values(records: list[dict], dataset: str, attribute: str) -> list:
    """The values of ``attribute`` the records hold (from their attributes, else read back from their released
    prompts), each once, in order: the set ``same_set`` draws from."""
    out, seen = [], set()
    for r in records:
        attrs = r.get("attributes")
        if isinstance(attrs, dict):
            v = (_SYNTH_ADJECTIVES.get(attrs.get("shape")) if dataset == "synthetic" and attribute == "shape"
                 else attrs.get(attribute))
        elif dataset != "synthetic":
            v = (recover_attributes(r, dataset)[0] or {}).get(attribute)
        else:
            v = None
        if v is not None and _hashable(v) not in seen:
            seen.add(_hashable(v))
            out.append(v)
    return out


def unmatched(records: list[dict]) -> list[tuple[str, str]]:
    """(image name, why) of each perturbed record kept unperturbed because its prompts do not follow the
    dataset's template."""
    return [(r.get("img_name", "?"), r["perturbation"]["unmatched"]) for r in records
            if r.get("perturbation", {}).get("unmatched")]


def perturbable(records: list[dict], dataset: str) -> bool:
    """Whether perturbations can change these records: synthetic, records with attributes, or released prompts
    that follow the template."""
    if dataset == "synthetic" or has_attributes(records):
        return True
    try:
        return any(recover_attributes(r, dataset)[0] is not None for r in records)
    except ValueError:  # a dataset without templates
        return False


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


def _perturb_synthetic(record: dict, attribute: str, kind: str, rng: random.Random, words: list[str],
                       value_set=()) -> dict:
    obj = record.get("attributes") or {}
    new = copy.deepcopy(record)
    if attribute not in ("shape", "colour", "size", "location") or attribute not in obj:
        new["perturbation"] = {"attribute": attribute, "kind": kind, "from": None, "to": None, "changed": False}
        return new
    value = _SYNTH_ADJECTIVES[obj["shape"]] if attribute == "shape" else obj[attribute]
    if kind == "same_set":
        to = _same_set_value(value, value_set, rng)
    elif kind == "opposite" and attribute == "shape":
        to = rng.choice(sorted(a for a in _SYNTH_ADJECTIVES.values() if a != value))
    elif kind == "opposite" and attribute == "colour" and value not in T.OPPOSITES["colour"]:
        to = rng.choice(sorted(c for c in synthetic.COLOURS if c != value))
    else:
        to = perturb_value(attribute, value, kind, rng, words)
    new["prompts"] = _synthetic_prompts(obj, attribute, to)
    new["perturbation"] = {"attribute": attribute, "kind": kind, "from": value, "to": to, "changed": to != value}
    return new


def perturb_records(records: list[dict], dataset: str, attribute: str, kind: str, seed: int = 0,
                    words: list[str] | None = None) -> list[dict]:
    """Copies of ``records`` with ``attribute`` changed by ``kind`` (random_word: an uncommon word; opposite: the
    opposite value, or another value of the attribute; drop: left out; same_set: another value the records hold).
    A record with ``"attributes"`` has its prompts rebuilt from them; a released record (none) has the value
    replaced in its own prompts (:func:`perturb_released`).  Each record gets ``"perturbation": {attribute, kind,
    from, to, changed}``; a record without the attribute is kept with ``changed: false``, one whose released
    prompts do not follow the template also with ``unmatched`` (the reason).  The seed fixes every random
    choice."""
    if kind not in KINDS:
        raise ValueError(f"unknown perturbation kind {kind!r}; choose from {', '.join(KINDS)}")
    words = words or load_words()
    rng = random.Random(f"{seed}:{attribute}:{kind}")
    values = dataset_values(records, dataset, attribute) if kind == "same_set" else ()
    if dataset == "synthetic":
        return [_perturb_synthetic(r, attribute, kind, rng, words, values) for r in records]
    T.family_of(dataset)
    if records and not perturbable(records, dataset):
        raise ValueError(f"the {dataset} records have no 'attributes' and their prompts do not follow the {dataset} "
                         f"template (e.g. {records[0].get('img_name', '?')}): run `python make_prompts.py --data "
                         f"{dataset}` on the manifest first")
    return [perturb_record(r, dataset, attribute, kind, rng, words, values) if isinstance(r.get("attributes"), dict)
            else perturb_released(r, dataset, attribute, kind, rng, words, values) for r in records]


perturb_manifest = perturb_records  # the name perturb_prompts.py has always used
