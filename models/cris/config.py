"""CRIS dimensions: :class:`CRISConfig` (defaults = CRIS-R50) and the ``base`` / ``tiny`` presets."""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields

PAD_ID = 0
DEFAULT_WORD_LEN = 77


@dataclass
class CRISConfig:
    """All dimensions of a CRIS model.  Defaults = CRIS-R50 (``config/refcoco/cris_r50.yaml``)."""

    # CLIP (names as in the original ``build_model``)
    embed_dim: int = 1024
    image_resolution: int = 224          # attnpool grid = image_resolution // 32
    vision_layers: tuple = (3, 4, 6, 3)
    vision_width: int = 64
    attnpool_heads: int = 32
    context_length: int = 77
    vocab_size: int = 49408
    transformer_width: int = 512
    transformer_heads: int = 8
    transformer_layers: int = 12
    # CRIS
    input_size: int = 416
    word_len: int = DEFAULT_WORD_LEN
    word_dim: int = 1024
    vis_dim: int = 512
    fpn_in: tuple = (512, 1024, 1024)
    fpn_out: tuple = (256, 512, 1024)
    num_layers: int = 3
    num_head: int = 8
    dim_ffn: int = 2048
    dropout: float = 0.1
    proj_kernel_size: int = 3

    def __post_init__(self):
        self.vision_layers = tuple(self.vision_layers)
        self.fpn_in = tuple(self.fpn_in)
        self.fpn_out = tuple(self.fpn_out)
        w = self.vision_width
        expected_in = (w * 8, w * 16, self.embed_dim)
        if self.fpn_in != expected_in:
            raise ValueError(f"fpn_in {self.fpn_in} does not match the CLIP ResNet (C3, C4, C5 channels "
                             f"{expected_in} for vision_width {w}, embed_dim {self.embed_dim})")
        if self.word_dim != self.embed_dim:
            raise ValueError(f"word_dim ({self.word_dim}) must equal CLIP embed_dim ({self.embed_dim})")
        if self.vis_dim != self.fpn_out[1] or self.transformer_width != self.vis_dim:
            raise ValueError(f"vis_dim ({self.vis_dim}) must equal fpn_out[1] ({self.fpn_out[1]}) and the "
                             f"text width ({self.transformer_width})")
        if self.word_len > self.context_length:
            raise ValueError(f"word_len {self.word_len} exceeds CLIP's context length {self.context_length}")
        if self.input_size % 32:
            raise ValueError(f"input_size {self.input_size} must be a multiple of 32")

    @classmethod
    def from_dict(cls, d: dict) -> CRISConfig:
        """Build from a flat dict or the golden file's ``{"clip": {...}, "cris": {...}}``.

        Derived or informational keys of the golden config (``txt_length``, ``attnpool_embed_dim``,
        ``attnpool_spacial_dim``, ``intermediate``, ``proj_in_dim``) are checked, not stored.
        """
        flat = {}
        for part in ("clip", "cris"):
            flat.update(d.get(part, {}))
        flat.update({k: v for k, v in d.items() if k not in ("clip", "cris")})
        names = {f.name for f in fields(cls)}
        cfg = cls(**{k: v for k, v in flat.items() if k in names})
        checks = {"attnpool_embed_dim": cfg.vision_width * 32, "attnpool_spacial_dim": cfg.image_resolution // 32,
                  "proj_in_dim": cfg.vis_dim // 2, "intermediate": False}
        for k, want in checks.items():
            if k in flat and flat[k] != want:
                raise ValueError(f"config {k}={flat[k]!r} is not supported (this implementation has {want!r})")
        return cfg

    def to_dict(self) -> dict:
        return asdict(self)


PRESETS = {
    "base": CRISConfig(),
    # small CPU-friendly CRIS for tests and the synthetic demo (128 px input, real CLIP vocabulary)
    "tiny": CRISConfig(embed_dim=64, image_resolution=64, vision_layers=(1, 1, 1, 1), vision_width=8,
                       attnpool_heads=4, transformer_width=32, transformer_heads=2, transformer_layers=2,
                       input_size=128, word_dim=64, vis_dim=32, fpn_in=(64, 128, 64), fpn_out=(16, 32, 64),
                       num_layers=2, num_head=2, dim_ffn=64),
}
