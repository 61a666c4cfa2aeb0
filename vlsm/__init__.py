"""The application library: everything that puts ``models``, ``datasets`` and ``engine`` together, shared by the
scripts (each script ``x.py`` has its library module ``vlsm.x`` or package ``vlsm/x/`` where it has one).

``cli`` (option groups that list model, dataset, preset and loss names), ``losses``, ``optim``, ``loading``
(a model for evaluation: a trained run or a model with weights), ``scoring`` (one model on one dataset ->
per_image.csv, summary.json), ``training`` (a run: start/resume, fit, finish), ``run_card``, ``feature_cache``,
``text_report``, ``figures``, ``study/`` (study files, cells, the step table, executors, markers), ``results/``
(collect, tables, plots).  The bottom layer is ``util`` (imports nothing of ours).  See docs/architecture.md.
"""
