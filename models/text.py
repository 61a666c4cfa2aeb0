"""Tokenizers shared by the models.  Picklable, offline, and loud about truncation.

``ClipTokenizer`` uses the CLIP BPE vocabulary that open_clip ships inside its
package (no hub download).  Sequences are ``[SOT] tokens [EOT]`` padded with
``pad_id`` (0, as in the original CLIP/CRIS code) to ``context_length``; the
attention mask marks real tokens, so models never depend on the pad id.
"""
from __future__ import annotations

import warnings

import torch


class TruncationWarner:
    """Warn once per tokenizer about prompts cut to the context length, saying how many."""

    def __init__(self, kind: str):
        self.kind = kind
        self.n_truncated = 0
        self.warned = False

    def record(self, n_cut: int, context_length: int, example: str) -> None:
        if n_cut <= 0:
            return
        self.n_truncated += n_cut
        if not self.warned:
            self.warned = True
            warnings.warn(
                f"{n_cut} prompt(s) in this batch are longer than the {self.kind} text context "
                f"({context_length} tokens) and were truncated, e.g. {example[:80]!r}. "
                f"Further truncations are counted silently (see tokenizer.warner.n_truncated).",
                stacklevel=3)


class ClipTokenizer:
    def __init__(self, context_length: int = 77, pad_id: int = 0):
        from open_clip.tokenizer import SimpleTokenizer
        self._bpe = SimpleTokenizer()
        self.context_length = int(context_length)
        self.pad_id = int(pad_id)
        self.sot_id = self._bpe.encoder["<start_of_text>"]
        self.eot_id = self._bpe.encoder["<end_of_text>"]
        self.vocab_size = len(self._bpe.encoder)
        self.warner = TruncationWarner("CLIP")

    def encode(self, text: str) -> list[int]:
        return self._bpe.encode(text)

    def __call__(self, texts: list[str] | str) -> dict[str, torch.Tensor]:
        if isinstance(texts, str):
            texts = [texts]
        L = self.context_length
        ids = torch.full((len(texts), L), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(texts), L), dtype=torch.long)
        n_cut, example = 0, ""
        for i, t in enumerate(texts):
            toks = [self.sot_id] + self.encode(t) + [self.eot_id]
            if len(toks) > L:
                n_cut += 1
                example = example or t
                toks = toks[: L - 1] + [self.eot_id]
            ids[i, : len(toks)] = torch.tensor(toks)
            mask[i, : len(toks)] = 1
        self.warner.record(n_cut, L, example)
        return {"input_ids": ids, "attention_mask": mask}
