"""``cartocell-bmz phantoms --stack``: synthetic whole acquisitions (many cysts per stack) and their truth.

Not a command of its own: :mod:`cartocell_bmz.cli.commands.phantoms` calls :func:`write_stacks`
when ``--stack`` is given.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Sequence

import typer

from cartocell_bmz.core.stack_phantoms import DEFAULT_MIX, KINDS


def parse_mix(text: str | None) -> dict[str, int]:
    """``"single=4,touching=1"`` -> counts per kind (kinds not named keep their default).

    Examples
    --------
    >>> parse_mix("single=6, cut=0")["single"], parse_mix("single=6, cut=0")["cut"]
    (6, 0)
    """
    from cartocell_bmz.errors import ConfigError

    mix = dict(DEFAULT_MIX)
    for part in (text or "").split(","):
        if not part.strip():
            continue
        kind, _, value = part.partition("=")
        kind = kind.strip().replace("-", "_")
        if kind not in KINDS or not value.strip().isdigit():
            raise ConfigError(f"--mix {text!r}: give KIND=N pairs separated by commas, kinds {', '.join(KINDS)}.")
        mix[kind] = int(value)
    return mix


def write_stacks(out: Path, *, n_stacks: int, seed: int, shape: Sequence[int], spacing: Sequence[float],
                 cyst_shape: Sequence[int], mix: str | None) -> None:
    """Write the stacks, their labels and truth table, and say what was written."""
    from cartocell_bmz.cli.progress import RichProgress
    from cartocell_bmz.core.spacing import check_spacing
    from cartocell_bmz.errors import ConfigError
    from cartocell_bmz.io.phantom_stacks import TRUTH_CSV, make_stacks

    shape_t, cyst_t = tuple(int(s) for s in shape), tuple(int(s) for s in cyst_shape)
    if min(cyst_t) < 8 or any(s < c for s, c in zip(shape_t, cyst_t)):
        raise ConfigError(f"--cyst-shape needs sizes of at least 8 voxels, each at most --shape {list(shape_t)}; "
                          f"got {list(cyst_t)}.")
    spacing_t = check_spacing(spacing, name="--spacing")
    counts = parse_mix(mix)
    with RichProgress(transient=True) as bar:
        written = make_stacks(out, n_stacks, shape=shape_t, spacing=spacing_t, cyst_shape=cyst_t, mix=counts,
                              seed=seed, progress=bar)
    with open(Path(out) / TRUTH_CSV, newline="") as fh:
        rows = list(csv.DictReader(fh))
    kinds = {k: sum(r["kind"] == k for r in rows) for k in counts}
    typer.echo(f"wrote {len(written)} stacks with {len(rows)} cysts to {out} "
               f"({', '.join(f'{k}: {v}' for k, v in kinds.items())}); truth in {Path(out) / TRUTH_CSV}")
