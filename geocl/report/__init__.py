"""Things people look at: maps, tables and plots.

Tables and plots take plain data: a results frame and the
:class:`~geocl.report.columns.MetricColumns` that say which of its columns are metrics
(filled by :mod:`geocl.experiments.results`); nothing here imports an evaluation. The
quicklooks read rasters through :mod:`geocl.data` and draw :mod:`geocl.sampling`'s boxes,
so the package sits above those two and below everything that draws (methods, training,
finetune, the commands); the import contract in ``pyproject.toml`` holds that.
"""
