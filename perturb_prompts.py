"""Write perturbed copies of a manifest for the prompt-robustness study (paper's Figure 3).

    python perturb_prompts.py --manifest prompts_json/kvasir/test.json --out prompts_json/kvasir/perturbed

For each (attribute, kind) one manifest ``<out-dir>/<stem>__<attribute>__<kind>.json`` is written,
whose prompts have one attribute changed: rebuilt from each record's ``"attributes"`` (``make_prompts.py``),
or, for the paper's released manifests (no attributes), with the value read back from the record's own prompts
(P2 shape, P3 colour, P4 size, P5 number, P6 location) and only its words replaced, the released wording kept.
A released record whose prompts do not follow its dataset's template is named, kept unperturbed and counted:

* ``random_word``: the value becomes one uncommon English word from ``assets/uncommon_words.txt``
  (a per-target list becomes a one-word list);
* ``opposite``: the value becomes its opposite (small <-> large, left <-> right, top <-> bottom,
  benign <-> malignant, ...; ``datasets.prompt_templates.OPPOSITES``) or, where there is no
  opposite (medium, center, age), another value of the same attribute drawn at random;
  per-target lists are changed target by target;
* ``drop``: the attribute is removed, so the templates leave it out of the sentence;
* ``same_set``: another value of the attribute from the values the manifest's records hold (Figure 4).

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
    unmatched,
)
from util.errors import run_cli
from util.io import write_json_atomic


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("perturb_prompts.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--manifest", required=True, help="manifest with 'attributes' (make_prompts.py), or the paper's "
                   "released prompts (datasets.import_manifests)")
    p.add_argument("--out", required=True, help="folder for the perturbed manifests (made if missing)")
    p.add_argument("--data", default=None,
                   help="dataset name for the templates (default: the manifest's parent folder name)")
    p.add_argument("--attributes", default=",".join(DEFAULT_ATTRIBUTES),
                   help=f"comma-separated, from: {', '.join(PERTURBABLE)}")
    p.add_argument("--kinds", default="random_word,opposite,drop",
                   help=f"comma-separated, from: {', '.join(KINDS)} (default: all but same_set, Figure 4's kind)")
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
            off = unmatched(new)
            outputs.append({"path": os.path.abspath(path), "attribute": attribute, "kind": kind,
                            "changed": n_changed, "unchanged": len(new) - n_changed,
                            "unmatched": [{"img_name": n, "why": why} for n, why in off]})
            lacking = sum(r["perturbation"]["from"] is None and not r["perturbation"].get("unmatched") for r in new)
            kept = len(new) - n_changed - len(off) - lacking  # e.g. same_set where the dataset has one value
            print(f"[perturb] {path}: {n_changed}/{len(new)} records changed"
                  + (f" ({lacking} without '{attribute}', unchanged)" if lacking else "")
                  + (f" ({kept} with the dataset's only value, unchanged)" if kept else "")
                  + (f"; {len(off)} do not follow the {dataset} template and are kept unperturbed: "
                     + ", ".join(f"{n} ({why})" for n, why in off[:10]) + (" ..." if len(off) > 10 else "")
                     if off else ""))
    index = {"source": os.path.abspath(args.manifest), "dataset": dataset, "seed": args.seed,
             "outputs": outputs}
    write_json_atomic(os.path.join(args.out, f"{stem}__index.json"), index)
    return outputs


if __name__ == "__main__":
    run_cli(main, get_args_parser())
