"""measure: per-cell morphology and packing of segmented cysts, as tables, files and figures.

The computation is :func:`cartocell_bmz.core.morphology.measure_cyst` (numpy only);
:mod:`cartocell_bmz.measure.api` turns it into pandas tables and output folders
(``cartocell-bmz measure``), :mod:`cartocell_bmz.measure.plots` into figures.
"""
