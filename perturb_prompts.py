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
``results.py``). The same ``--seed`` gives the same files.
"""
from __future__ import annotations

import argparse
import json
import os

from datasets import prompt_templates as T
from datasets.perturb import (  # noqa: F401
    ALIASES,
    DEFAULT_ATTRIBUTES,
    KINDS,
    PERTURBABLE,
    WORD_LIST,
    load_words,
    parse_list,
    perturb_manifest,
    perturb_record,
    perturb_value,
)
from util.errors import run_cli
from util.io import write_json_atomic


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
