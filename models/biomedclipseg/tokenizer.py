"""PubMedBERT prompt tokenization: a WordPiece tokenizer returning ``input_ids``/``attention_mask``, a
stand-in that fails clearly when no vocabulary was given, and small vocabularies for the tiny model."""
from __future__ import annotations

import os
import string
import tempfile
from pathlib import Path

import torch

from ..text import TruncationWarner

BERT_SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]

# Words the default tiny vocabulary knows whole (anything else is spelled with character pieces).
TINY_WORDS = ("circle", "square", "triangle", "star", "round", "boxy", "pointed", "spiky", "red", "green", "blue",
              "yellow", "purple", "pink", "small", "medium", "large", "one", "two", "three", "located", "in", "the",
              "of", "image", "top", "bottom", "left", "right", "center", "which", "is", "a", "shape", "with",
              "polyp", "tumor", "lesion")


def make_tiny_bert_vocab(folder: str | os.PathLike, words=()) -> str:
    """Write a small WordPiece ``vocab.txt`` into ``folder`` and return its path.

    Contains the BERT special tokens ([PAD] = id 0, as in PubMedBERT), the lower-cased
    ``words``, every ASCII letter/digit/punctuation character and their ``##`` continuation
    pieces, so any ASCII prompt tokenizes without [UNK]."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    chars = string.ascii_lowercase + string.digits + string.punctuation
    vocab = list(BERT_SPECIAL_TOKENS)
    for tok in [w.lower() for w in words] + list(chars) + ["##" + c for c in chars]:
        if tok and tok not in vocab:
            vocab.append(tok)
    path = folder / "vocab.txt"
    path.write_text("\n".join(vocab) + "\n", encoding="utf-8")
    return str(path)


def default_tiny_vocab() -> str:
    """A deterministic small WordPiece vocabulary for size='tiny' (written once to the temp folder)."""
    return make_tiny_bert_vocab(Path(tempfile.gettempdir()) / "medvlsm_tiny_bert_vocab", TINY_WORDS)


def find_vocab(path: str | os.PathLike) -> str:
    """``path`` if it is a file, else ``path/vocab.txt``; a clear error when neither exists."""
    p = Path(path)
    if p.is_file():
        return str(p)
    if (p / "vocab.txt").is_file():
        return str(p / "vocab.txt")
    raise FileNotFoundError(f"no BERT vocabulary at '{path}': give a vocab.txt file or a folder containing one "
                            f"(e.g. the BiomedCLIP snapshot folder, or make one with make_tiny_bert_vocab)")


class BertPromptTokenizer:
    """HF BERT WordPiece tokenizer -> ``{"input_ids", "attention_mask"}`` LongTensors.

    Sequences are ``[CLS] tokens [SEP]`` padded with [PAD] to the longest prompt in the
    batch (the attention mask marks real tokens; the [CLS]-pooled text embedding does not
    depend on padding).  Prompts longer than ``context_length`` are cut to
    ``[CLS] first tokens [SEP]`` and counted by a ``TruncationWarner`` (one warning)."""

    def __init__(self, vocab_file: str, context_length: int = 256, lowercase: bool = True):
        from tokenizers import BertWordPieceTokenizer  # the Rust WordPiece behind transformers' BertTokenizerFast
        self.vocab_file = str(vocab_file)
        self.context_length = int(context_length)
        self._tok = BertWordPieceTokenizer(self.vocab_file, lowercase=lowercase)
        self.vocab_size = self._tok.get_vocab_size()
        ids = {t: self._tok.token_to_id(t) for t in ("[PAD]", "[CLS]", "[SEP]", "[UNK]")}
        absent = [t for t, i in ids.items() if i is None]
        if absent:
            raise ValueError(f"vocabulary {vocab_file} lacks BERT special tokens: {absent}")
        self.pad_id, self.sep_id = ids["[PAD]"], ids["[SEP]"]
        self.warner = TruncationWarner("PubMedBERT")

    def __call__(self, texts: list[str] | str) -> dict[str, torch.Tensor]:
        if isinstance(texts, str):
            texts = [texts]
        seqs = [e.ids for e in self._tok.encode_batch(list(texts))]  # [CLS] ... [SEP], untruncated
        L = self.context_length
        n_cut, example = 0, ""
        for i, s in enumerate(seqs):
            if len(s) > L:
                n_cut += 1
                example = example or texts[i]
                seqs[i] = s[: L - 1] + [self.sep_id]
        self.warner.record(n_cut, L, example)
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, : len(s)] = torch.tensor(s)
            mask[i, : len(s)] = 1
        return {"input_ids": ids, "attention_mask": mask}


class MissingVocabTokenizer:
    """Stands in when a model is built without a vocabulary; fails clearly when used."""

    def __init__(self, reason: str):
        self.reason = reason

    def __call__(self, texts):
        raise RuntimeError(f"BiomedCLIP tokenizer unavailable: {self.reason}. Pass tokenizer_path=<vocab.txt or "
                           f"folder with vocab.txt> (the PubMedBERT vocab from the BiomedCLIP hub snapshot), or "
                           f"build with weights=<BiomedCLIP folder or hub id> whose snapshot contains vocab.txt.")


def make_tokenizer(tokenizer_path, folder: Path | None, context_length: int, size: str):
    """The tokenizer for a build: ``tokenizer_path``, else the weights folder's vocab.txt, else (tiny, no
    weights) the default tiny vocabulary, else a :class:`MissingVocabTokenizer`."""
    if tokenizer_path is None and folder is None and size == "tiny":
        tokenizer_path = default_tiny_vocab()
    if tokenizer_path is not None:
        return BertPromptTokenizer(find_vocab(tokenizer_path), context_length)
    if folder is not None and (folder / "vocab.txt").is_file():
        return BertPromptTokenizer(str(folder / "vocab.txt"), context_length)
    return MissingVocabTokenizer(f"no vocabulary given for the {size} BiomedCLIP text encoder"
                                 + (f" and '{folder}' has no vocab.txt" if folder is not None else ""))
