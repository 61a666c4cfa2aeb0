"""The prompt explorer (``python app.py``, docs/app.md): one image, many prompts, masks at the original size.

- :mod:`.explorer`: :class:`PromptExplorer`, the model side (image encoded once, cached probability maps,
  re-thresholding without a forward pass, the per-prompt table, the "does it read the text?" comparison) and
  :func:`bench_app` (5 prompts against 1 on one image);
- :mod:`.inputs`: uploads (PNG/JPEG, DICOM, NIfTI through ``datasets.medical``), the run's test images, the files
  to download;
- :mod:`.ui`: the Gradio page and the ``/segment`` API (imports Gradio, an extra: ``requirements-app.txt``).

Nothing here but :mod:`.ui` imports Gradio, so ``bench.py`` and the tests of the logic run without it.
"""
from .explorer import MAX_PROMPTS, PALETTE, AppInputError, PromptExplorer, bench_app, check_threshold, parse_prompts

__all__ = ["PromptExplorer", "AppInputError", "bench_app", "check_threshold", "parse_prompts", "PALETTE",
           "MAX_PROMPTS"]
