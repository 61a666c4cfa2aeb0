"""The results report (``results.py``): every result under some folders in one CSV, means and standard
deviations over seeds, Markdown tables in the paper's layouts and PNG plots.

- :mod:`.collect`: find ``summary.json`` / ``text_reliance.json`` / study step markers and read them into rows;
  what cannot be read is listed, never dropped;
- :mod:`.aggregate`: relative changes against the unperturbed result, mean and sample std over seeds;
- :mod:`.tables`: the table builders, each returning a list of :class:`.tables.Table`;
- :mod:`.plots`: the PNG plots;
- :mod:`.report`: :func:`write_report`, the entry point of results.py and study.py.

Aggregation over seeds: the mean of the runs' mean Dice, ``±`` the sample standard deviation (ddof 1) over
seeds; a value from a single seed is marked ``*`` and its ``±`` is the standard deviation over images.

(The functions ``collect`` and ``aggregate`` are imported from their modules, ``vlsm.results.collect`` and
``vlsm.results.aggregate``, which they would shadow here.)
"""
from .report import write_report
from .tables import Table

__all__ = ["write_report", "Table"]
