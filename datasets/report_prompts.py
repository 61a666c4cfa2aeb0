"""Radiology reports as prompts (the paper's Table 8): a CSV of ``image,prompt`` rows for
``python -m datasets.make_manifest --prompts FILE.csv``, one row per chest X-ray, the prompt its MIMIC-CXR report.

    python -m datasets.report_prompts --images lungs/images --reports mimic-cxr-reports/files \
        --metadata mimic-cxr-2.0.0-metadata.csv.gz --out mimic_lungs_reports.csv [--section all]

The paper used 1,141 frontal chest X-rays of MIMIC-CXR with manually verified lung masks (Chen et al. 2022,
PhysioNet "Chest X-ray segmentation images based on MIMIC-CXR", credentialed access) and each image's free-text
report as its only prompt (P1).  The lung release's file layout is not documented publicly, so this helper only
joins what MIMIC-CXR documents: an image is named by its DICOM id (the file stem; else ``--mapping CSV`` with
columns ``image,dicom_id``), ``mimic-cxr-2.0.0-metadata.csv`` maps the DICOM id to ``subject_id`` and ``study_id``,
and the study's report is ``<reports>/p<first two digits>/p<subject_id>/s<study_id>.txt``.  ``--section`` keeps
the whole report (``all``, default: "free-text reports" as the paper says) or its FINDINGS / IMPRESSION sections;
white space is collapsed to single spaces.  Reports longer than the text encoder's context are cut by the
tokenizer (CLIP: 77 tokens; models/text.py) and counted in every summary.json (``truncated_prompts``).

Every image without a report is listed; the command fails (exit status 2) when no image has one.  The steps
around it are in docs/reproducing.md ("Table 8").
"""
from __future__ import annotations

import argparse
import csv
import gzip
import os
import re

from util.errors import run_cli
from util.io import write_csv_atomic

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".dcm", ".tif", ".tiff")
SECTIONS = ("all", "findings", "impression", "findings+impression")
_HEADING = re.compile(r"^\s*([A-Z][A-Z /&-]+):", re.M)


def read_metadata(path: str) -> dict[str, tuple[str, str]]:
    """dicom_id -> (subject_id, study_id) from ``mimic-cxr-2.0.0-metadata.csv`` (or its .gz)."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", newline="", encoding="utf-8") as f:
        rows = csv.DictReader(f)
        missing = {"dicom_id", "subject_id", "study_id"} - set(rows.fieldnames or [])
        if missing:
            raise ValueError(f"{path}: no column {', '.join(sorted(missing))} (expected mimic-cxr-2.0.0-metadata.csv)")
        return {r["dicom_id"]: (r["subject_id"], r["study_id"]) for r in rows}


def report_path(reports: str, subject_id: str, study_id: str) -> str:
    """MIMIC-CXR's report file of one study: ``<reports>/p10/p10000032/s50414267.txt``."""
    subject_id, study_id = str(subject_id).lstrip("p"), str(study_id).lstrip("s")
    return os.path.join(reports, f"p{subject_id[:2]}", f"p{subject_id}", f"s{study_id}.txt")


def sections(text: str) -> dict[str, str]:
    """The report's ``HEADING:`` sections, by lower-case heading (text before the first heading: ``""``)."""
    out, marks = {}, list(_HEADING.finditer(text))
    out[""] = text[:marks[0].start()] if marks else text
    for m, nxt in zip(marks, marks[1:] + [None]):
        out[m.group(1).strip().lower()] = text[m.end():nxt.start() if nxt else len(text)]
    return out


def report_prompt(text: str, section: str = "all") -> str:
    """The prompt of one report: all of it, or its FINDINGS and/or IMPRESSION sections, white space collapsed."""
    if section not in SECTIONS:
        raise ValueError(f"--section must be one of {', '.join(SECTIONS)}, got {section!r}")
    if section != "all":
        parts = sections(text)
        text = " ".join(parts.get(name, "") for name in section.split("+"))
    return " ".join(text.split())


def list_images(folder: str) -> list[str]:
    """Image files under ``folder`` (recursive), as paths relative to it, sorted."""
    out = []
    for d, _, files in os.walk(folder):
        out += [os.path.relpath(os.path.join(d, f), folder) for f in files if f.lower().endswith(IMAGE_EXTS)]
    return sorted(out)


def build_rows(images: str, reports: str, metadata: str, section: str = "all", mapping: str | None = None
               ) -> tuple[list[dict], list[str]]:
    """(rows ``{"image", "prompt"}``, problems: one line per image without a report)."""
    meta = read_metadata(metadata)
    ids = {}
    if mapping:
        with open(mapping, newline="", encoding="utf-8") as f:
            ids = {r["image"]: r["dicom_id"] for r in csv.DictReader(f)}
    rows, problems = [], []
    for rel in list_images(images):
        dicom_id = ids.get(rel) or ids.get(os.path.basename(rel)) or os.path.splitext(os.path.basename(rel))[0]
        if dicom_id not in meta:
            problems.append(f"{rel}: DICOM id {dicom_id} is not in {os.path.basename(metadata)} (name images by their "
                            f"DICOM id, or give --mapping CSV with columns image,dicom_id)")
            continue
        path = report_path(reports, *meta[dicom_id])
        if not os.path.isfile(path):
            problems.append(f"{rel}: no report {path}")
            continue
        with open(path, encoding="utf-8", errors="replace") as f:
            prompt = report_prompt(f.read(), section)
        if not prompt:
            problems.append(f"{rel}: the report {path} has no {section} text")
            continue
        rows.append({"image": rel, "prompt": prompt})
    return rows, problems


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("python -m datasets.report_prompts", description=__doc__.split("\n\n")[0],
                                epilog="Table 8, step by step: docs/reproducing.md")
    p.add_argument("--images", required=True, help="folder of the chest X-rays (named by their DICOM id)")
    p.add_argument("--reports", required=True, help="MIMIC-CXR's reports folder: the files/ of mimic-cxr-reports")
    p.add_argument("--metadata", required=True, help="mimic-cxr-2.0.0-metadata.csv(.gz): dicom_id, subject_id, "
                   "study_id")
    p.add_argument("--out", required=True, help="the CSV to write (image,prompt), for make_manifest --prompts")
    p.add_argument("--section", default="all", choices=SECTIONS, help="what of each report is the prompt "
                   "(default all: the free-text report)")
    p.add_argument("--mapping", default=None, help="CSV with columns image,dicom_id, when the file names are not "
                   "the DICOM ids")
    return p


def main(args) -> int:
    rows, problems = build_rows(args.images, args.reports, args.metadata, args.section, args.mapping)
    for line in problems:
        print(f"[reports] {line}")
    if not rows:
        raise ValueError(f"no image under {args.images} has a report; nothing written")
    write_csv_atomic(args.out, rows, ["image", "prompt"])
    words = sorted(len(r["prompt"].split()) for r in rows)
    print(f"[reports] {args.out}: {len(rows)} images with their report ({len(problems)} without); report length "
          f"{words[0]}-{words[-1]} words, median {words[len(words) // 2]}")
    return 0


if __name__ == "__main__":
    run_cli(main, get_args_parser())
