"""The paper's Table 5: what PubMedBERT fills into masked sentences about each dataset's targets.

    python -m datasets.pubmedbert_probe                              # the PubMedBERT of the hub (cached or fetched)
    python -m datasets.pubmedbert_probe --weights pubmedbert/        # a local copy (hf download ... --local-dir)
    python -m datasets.pubmedbert_probe --out table5.md --top-k 5

The paper (Appendix D) asked PubMedBERT (Gu et al. 2021) to fill ``[MASK]`` in sentences such as "The shape of
polyp is [MASK]." to get attribute words, found its top predictions uncertain (about 0.1 at most) and nearly the
same across datasets, and wrote the general descriptions by hand instead.  This runs the same masked sentences
(:data:`SENTENCES`, per dataset) through a fill-mask model (transformers' ``pipeline("fill-mask")``) and prints,
in Table 5's layout, the top-k words with their probabilities next to the words the paper reports.

Offline without the weights it stops with one line naming the command that fetches them.
"""
from __future__ import annotations

import argparse
import os

from util.errors import run_cli
from util.io import write_atomic

#: the PubMedBERT the paper cites (Gu et al. 2021), under its current name on the Hugging Face hub
PUBMEDBERT_ID = "microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract-fulltext"
FETCH = f"hf download {PUBMEDBERT_ID} --local-dir pubmedbert"

#: (dataset group, masked sentence, the paper's top five) of the paper's Table 5, in its order
SENTENCES = (
    ("Endoscopy", "The location of the polyp is [MASK].", "variable, unknown, varied, unpredictable, uncertain"),
    ("Endoscopy", "Polyp is located at [MASK].", "bifurcation, apex, rectum, midline, right"),
    ("Endoscopy", "The shape of polyp is [MASK].", "irregular, variable, oval, round, different"),
    ("Endoscopy", "Polyp is [MASK] in shape.", "oval, irregular, round, spherical, cylindrical"),
    ("Endoscopy", "The color of the polyp is [MASK].", "yellow, red, blue, brown, pink"),
    ("Endoscopy", "Polyp is [MASK] in color.", "yellow, white, red, black, green"),
    ("ISIC", "The location of skin melanoma is [MASK].", "unknown, variable, unusual, unpredictable, rare"),
    ("ISIC", "The color of skin melanoma is [MASK].", "red, yellow, brown, black, blue"),
    ("ISIC", "Skin melanoma is [MASK] in texture.", "heterogeneous, variable, soft, irregular, fibrous"),
    ("ISIC", "Skin cancer is located at [MASK].", "extremities, birth, puberty, adolescence, skin"),
    ("ISIC", "Skin cancer is [MASK] in texture.", "heterogeneous, unique, variable, diverse, distinctive"),
    ("DFU", "The location of a diabetic foot ulcer is at [MASK].", "first, rest, ankle, home, foot"),
    ("DFU", "Diabetic foot ulcer is located at [MASK].", "ankle, heel, foot, extremities, feet"),
    ("DFU", "The location of the foot ulcer is [MASK].", "ankle, knee, first, heel, night"),
    ("DFU", "Foot ulcer is located at [MASK].", "ankle, heel, foot, knee, night"),
    ("CAMUS", "The left ventricular cavity is [MASK] in shape.", "spherical, triangular, normal, oval, round"),
    ("CAMUS", "The myocardium is [MASK] in shape.", "spherical, cylindrical, circular, round, triangular"),
    ("CAMUS", "The left atrium cavity is [MASK] in shape.", "oval, round, triangular, spherical, irregular"),
    ("CAMUS", "The left ventricular cavity is located at [MASK].", "diastole, apex, rest, 90°, 45°"),
    ("CAMUS", "The myocardium is located at [MASK].", "rest, apex, risk, diastole, birth"),
    ("CAMUS", "The left atrium cavity is located at [MASK].", "diastole, right, left, 90°, apex"),
    ("BUSI", "The malignant breast tumor is [MASK] in shape.", "round, irregular, oval, solid, spherical"),
    ("BUSI", "The benign breast tumor is [MASK] in shape.", "oval, round, irregular, solid, spherical"),
    ("CheXlocalize", "Airspace Opacity is [MASK] in shape.", "irregular, oval, round, triangular, globular"),
    ("CheXlocalize", "Enlarged Cardiomediastinum is [MASK] in shape.", "oval, triangular, irregular, round, rounded"),
    ("CheXlocalize", "Cardiomegaly is [MASK] in shape.", "irregular, triangular, normal, oval, round"),
    ("CheXlocalize", "Lung Opacity is [MASK] in shape.", "irregular, round, oval, nodular, reticular"),
    ("CheXlocalize", "Consolidation is [MASK] in shape.", "spherical, circular, triangular, irregular, round"),
    ("CheXlocalize", "Atelectasis is [MASK] in shape.", "irregular, oval, triangular, spherical, round"),
    ("CheXlocalize", "Pleural Effusion is [MASK] in shape.", "irregular, round, oval, spherical, solid"),
)


def load_fill_mask(weights: str | None = None, top_k: int = 5):
    """transformers' fill-mask pipeline of ``weights`` (a local folder) or of :data:`PUBMEDBERT_ID` (the local
    Hugging Face cache first; fetched only when online and ``HF_HUB_OFFLINE`` is not set).  Missing weights stop
    with one line naming the fetch command."""
    from transformers import AutoModelForMaskedLM, AutoTokenizer, pipeline
    if weights and not os.path.isdir(weights):
        raise FileNotFoundError(f"--weights {weights} is not a folder; fetch PubMedBERT with: {FETCH}")
    source = weights or PUBMEDBERT_ID
    tries = [True] if weights or os.environ.get("HF_HUB_OFFLINE") else [True, False]
    for local_only in tries:
        try:
            tok = AutoTokenizer.from_pretrained(source, local_files_only=local_only)
            model = AutoModelForMaskedLM.from_pretrained(source, local_files_only=local_only)
            return pipeline("fill-mask", model=model, tokenizer=tok, top_k=top_k, device=-1)
        except (OSError, ValueError):
            continue
    raise FileNotFoundError(f"no weights of {source} here (offline, or not in the Hugging Face cache); fetch them "
                            f"with: {FETCH}, then pass --weights pubmedbert")


def probe(fill, sentences=SENTENCES) -> list[dict]:
    """One row per sentence: dataset, sentence, the top predictions ``[(word, probability), ...]``, the paper's."""
    rows = []
    for dataset, sentence, paper in sentences:
        text = sentence.replace("[MASK]", fill.tokenizer.mask_token)
        preds = fill(text)
        rows.append({"dataset": dataset, "sentence": sentence, "paper": paper,
                     "top": [(p["token_str"].strip(), float(p["score"])) for p in preds]})
    return rows


def table(rows: list[dict], source: str) -> str:
    """Table 5's layout in Markdown: dataset, masked sentence, top predictions with probabilities, the paper's."""
    lines = [f"Top predictions of {source} for the masked word, most probable first (probability in brackets); the "
             f"paper's Table 5 words for comparison.", "",
             "| dataset | masked sentence | top predictions | paper (Table 5) |", "|---|---|---|---|"]
    for r in rows:
        top = ", ".join(f"{w} ({p:.3f})" for w, p in r["top"])
        lines.append(f"| {r['dataset']} | {r['sentence']} | {top} | {r['paper']} |")
    return "\n".join(lines) + "\n"


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("python -m datasets.pubmedbert_probe", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", default=None, help=f"a local folder of the fill-mask model (default: {PUBMEDBERT_ID} "
                   f"from the Hugging Face cache; fetch it with: {FETCH})")
    p.add_argument("--top-k", type=int, default=5, help="predictions per sentence (the paper: 5)")
    p.add_argument("--out", default=None, help="also write the table to this Markdown file")
    return p


def main(args) -> list[dict]:
    fill = load_fill_mask(args.weights, args.top_k)
    rows = probe(fill)
    text = table(rows, args.weights or PUBMEDBERT_ID)
    print(text, end="")
    if args.out:
        write_atomic(args.out, text)
    return rows


if __name__ == "__main__":
    run_cli(main, get_args_parser())
