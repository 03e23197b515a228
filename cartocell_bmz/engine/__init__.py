"""Where batch work runs: one engine for every batch command (a Dask cluster, or in turn in this process).

``plan`` (the ``--scheduler`` value, sizing the workers to cores, memory and GPUs) and
``cluster`` (the client of a local or existing cluster, tasks mapped in order with progress).
"""
