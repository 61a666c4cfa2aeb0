"""Write perturbed copies of a manifest for the prompt-robustness study (paper's Figure 3).

    python perturb_prompts.py --manifest prompts_json/kvasir/test.json --out prompts_json/kvasir/perturbed

For each (attribute, kind) one manifest ``<out-dir>/<stem>__<attribute>__<kind>.json`` is written,
whose prompts are rebuilt from each record's ``"attributes"`` (so ``make_prompts.py`` must have
run) with one attribute changed:

* ``random_word``: the value becomes one uncommon English word from ``assets/uncommon_words.txt``
  (a per-target list becomes a one-word list);
* ``opposite``: the value becomes its opposite (small <-> large, left <-> right, top <-> bottom,
  benign <-> malignant, ...; ``datasets.prompt_templates.OPPOSITES``) or, where there is no
  opposite (medium, center, age), another value of the same attribute drawn at random;
  per-target lists are changed target by target;
* ``drop``: the attribute is removed, so the templates leave it out of the sentence.

Each record gets ``"perturbation": {"attribute", "kind", "from", "to", "changed"}``; a record
without the attribute (e.g. an empty mask has no size) is kept unchanged with ``changed: false``.
``<out-dir>/<stem>__index.json`` lists the outputs and the source manifest (read by
``scripts/perturbation_report.py``). The same ``--seed`` gives the same files.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import random

from datasets import prompt_templates as T
from datasets.manifest import write_json_atomic
from vlsm.cli import run_cli

KINDS = ("random_word", "opposite", "drop")
DEFAULT_ATTRIBUTES = ("size", "colour", "shape", "location", "number")
PERTURBABLE = DEFAULT_ATTRIBUTES + ("view", "cycle", "sex", "age", "image_quality", "tumor_type")
ALIASES = {"color": "colour", "quality": "image_quality", "tumour_type": "tumor_type",
           "gender": "sex", "type": "tumor_type"}
WORD_LIST = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets", "uncommon_words.txt")
AGE_SHIFT = 30  # "another" age: 30 years older (younger when that would pass 100)


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("perturb_prompts.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--manifest", required=True, help="manifest with 'attributes' (run make_prompts.py first)")
    p.add_argument("--out", required=True, help="folder for the perturbed manifests (made if missing)")
    p.add_argument("--data", default=None,
                   help="dataset name for the templates (default: the manifest's parent folder name)")
    p.add_argument("--attributes", default=",".join(DEFAULT_ATTRIBUTES),
                   help=f"comma-separated, from: {', '.join(PERTURBABLE)}")
    p.add_argument("--kinds", default=",".join(KINDS), help=f"comma-separated, from: {', '.join(KINDS)}")
    p.add_argument("--seed", type=int, default=0, help="random seed for word choices (same seed, same files)")
    p.add_argument("--words", default=WORD_LIST, help="word list, one word a line ('#' comments)")
    return p


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


def perturb_manifest(records: list, dataset: str, attribute: str, kind: str, seed: int,
                     words: list[str]) -> list:
    """All records perturbed with one (attribute, kind); the seed fixes every random choice."""
    rng = random.Random(f"{seed}:{attribute}:{kind}")
    return [perturb_record(r, dataset, attribute, kind, rng, words) for r in records]


def main(args) -> list[dict]:
    attributes = parse_list(args.attributes, PERTURBABLE, ALIASES, "attribute")
    kinds = parse_list(args.kinds, KINDS, what="kind")
    with open(args.manifest) as f:
        records = json.load(f)
    dataset = args.data or os.path.basename(os.path.dirname(os.path.abspath(args.manifest)))
    T.family_of(dataset)  # clear error for a manifest outside prompts_json/<name>/
    words = load_words(args.words)
    stem = os.path.splitext(os.path.basename(args.manifest))[0]
    outputs = []
    for attribute in attributes:
        for kind in kinds:
            new = perturb_manifest(records, dataset, attribute, kind, args.seed, words)
            path = os.path.join(args.out, f"{stem}__{attribute}__{kind}.json")
            write_json_atomic(path, new)
            n_changed = sum(r["perturbation"]["changed"] for r in new)
            outputs.append({"path": os.path.abspath(path), "attribute": attribute, "kind": kind,
                            "changed": n_changed, "unchanged": len(new) - n_changed})
            print(f"[perturb] {path}: {n_changed}/{len(new)} records changed"
                  + (f" ({len(new) - n_changed} without '{attribute}', unchanged)" if n_changed < len(new) else ""))
    index = {"source": os.path.abspath(args.manifest), "dataset": dataset, "seed": args.seed,
             "outputs": outputs}
    write_json_atomic(os.path.join(args.out, f"{stem}__index.json"), index)
    return outputs


if __name__ == "__main__":
    run_cli(main, get_args_parser())
