"""Ranking models on a test set.

``inputs`` (the models and the test set), ``tasks`` (one model on one image),
``scheduling`` (Dask or one after the other), ``benchmark`` (:func:`run_benchmark`,
all together), ``ranking`` (the rule and the tables), ``report`` (files, plots, HTML).
"""
