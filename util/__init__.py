"""The bottom layer: helpers every other package may use. It imports nothing of ours (torch, numpy and the
standard library only), as DETR's and MAE's ``util/``.

``io`` (atomic writes, safe reads, sha256), ``errors`` (the one-line error handler of every entry point),
``checkpoint`` (state-dict reading, atomic torch saves, RNG state, ``Checkpointer``, never-reused folders),
``metrics`` (Dice/IoU/HD95 at the original size, the metric card), ``summary`` (per-image rows -> numbers),
``runtime`` (device, seeding, autocast, ``forward_batch``), ``distributed`` (torchrun/DDP).
See docs/architecture.md.
"""
