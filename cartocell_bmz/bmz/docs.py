"""What a person reads or looks at in a package: its description texts, ``documentation.md``, the cover.

:func:`documentation` writes the markdown (what the network does, its input
sizes and halo, how to run it, the training data, a ``# Validation`` section
from :func:`figures_markdown`, limitations, citations); :func:`default_description`
and :func:`training_data_text` are the texts the ``rdf.yaml`` shares with it;
:func:`save_cover` draws the cover image; :func:`read_figures` reads the test-set
figures a user gives.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from cartocell_bmz import networks
from cartocell_bmz.bmz.contents import BIAPY_CITATION, CARTOCELL_CITATION, CHANNEL_NAMES
from cartocell_bmz.bmz.halo import AxisSizes, HaloChoice
from cartocell_bmz.errors import InputError
from cartocell_bmz.layout import CHANNEL_MEANING, CHANNELS

if TYPE_CHECKING:  # pragma: no cover
    from cartocell_bmz.train.run import TrainingRun

#: The "How to run it" section: the same for every package.
_HOW_TO_RUN: tuple[str, ...] = (
    "## How to run it",
    "",
    "With cartocell-bmz (probabilities, watershed cells and Voronoi cells, voxel size kept):",
    "",
    "```bash",
    "cartocell-bmz predict --model PATH_TO_THIS_PACKAGE cysts/ --out results/",
    "cartocell-bmz validate PATH_TO_THIS_PACKAGE   # bioimageio.core's test of both weight formats",
    "```",
    "",
    "With bioimageio.core alone (probabilities only):",
    "",
    "```python",
    "import numpy as np, tifffile",
    "from bioimageio.core import load_description, predict",
    "",
    "model = load_description('PATH_TO_THIS_PACKAGE')",
    "raw = tifffile.imread('cyst.tif').astype('float32')[None, None]  # b, c, z, y, x",
    "sample = predict(model=model, inputs={'raw': raw}, blocksize_parameter=4)",
    "probs = sample.members['probabilities'].data.to_numpy()[0]  # (3, z, y, x): B, C, M",
    "```",
    "",
    "A block is `min + n * step` voxels per axis for `blocksize_parameter` n and must fit in the volume: "
    "lower n for small volumes.",
    "",
)


# --------------------------------------------------------------------------- texts


def config_section(run: TrainingRun, name: str) -> dict[str, Any]:
    """``config.json``'s ``name`` section (``"train"``, ``"data"``) of a run; empty when it is missing or not a mapping."""
    section = run.config.get(name)
    return section if isinstance(section, dict) else {}


def default_description(run: TrainingRun) -> str:
    """The package's one-paragraph description when none is given: architecture, channels, synthetic data."""
    spec = networks.get_spec(run.arch)
    return (
        f"3D {spec.title} that predicts CartoCell's three channels (B cell body, C cell contours, "
        "M whole cellular-region mask) in fluorescence stacks of epithelial cysts; a marker-controlled "
        "watershed and a mask-bounded 3D Voronoi turn them into touching cells. Trained by cartocell-bmz "
        f"on synthetic cysts: this is not the published CartoCell model {spec.published_id}."
    )


def training_data_text(run: TrainingRun) -> str:
    """What the network was trained on: the synthetic cysts, how many, the generator's settings."""
    data = config_section(run, "data")
    n_train = len(data.get("train_volumes") or [])
    n_val = len(data.get("val_volumes") or [])
    text = (
        "Synthetic 3D epithelial cysts written by `cartocell-bmz phantoms` (cartocell_bmz.core.phantoms): "
        "hollow monolayers of cells around a lumen, membrane signal with uneven brightness, anisotropic "
        "blur, Poisson and Gaussian noise, with exact instance labels; CartoCell folder layout "
        "(train_M1, validation, train_M2, test) mimicking the CartoCell dataset (BMZ divine-melon)."
    )
    if n_train or n_val:
        text += f" This network saw {n_train} training and {n_val} validation volumes."
    gen = _dataset_json(run)
    if gen:
        text += (
            f" Generator settings: seed {gen.get('seed')}, volume {gen.get('shape')} voxels (z, y, x), "
            f"voxel size {gen.get('spacing')} um."
        )
    return text


def _dataset_json(run: TrainingRun) -> dict[str, Any]:
    """``dataset.json`` of the phantom dataset the run was trained on, when it can be found."""
    data = config_section(run, "data")
    train_dir = data.get("train_dir")
    if not train_dir:
        return {}
    for parent in list(Path(train_dir).parents)[:3]:
        path = parent / "dataset.json"
        if path.is_file():
            try:
                found = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError):
                return {}
            return found if isinstance(found, dict) else {}
    return {}


# --------------------------------------------------------------------------- documentation


def documentation(
    run: TrainingRun,
    *,
    name: str,
    sizes: AxisSizes,
    halo: HaloChoice,
    test_shape: Sequence[int],
    volume_origin: str,
    spacing: Sequence[float],
    figures: Mapping[str, Any] | None,
) -> str:
    """The package's ``documentation.md``.

    Parameters
    ----------
    run : TrainingRun
        The training run packaged.
    name : str
        The package's name (the title).
    sizes : AxisSizes
        The package's input sizes and halo.
    halo : HaloChoice
        How the halo was chosen and what it leaves.
    test_shape : sequence of 3 int
        Size of the test tensors.
    volume_origin : str
        Where the test volume came from (a sentence fragment).
    spacing : sequence of 3 float
        Voxel size of the test volume (um).
    figures : mapping, optional
        Test-set figures for the ``# Validation`` section (:func:`figures_markdown`).

    Returns
    -------
    str
        Markdown, sections separated by blank lines, ending with a newline.
    """
    spec = networks.get_spec(run.arch)
    lines = [f"# {name}", "", default_description(run), ""]
    lines += _what_it_does(run, spec)
    lines += _sizes_and_tiling(sizes, halo, volume_origin)
    lines += _HOW_TO_RUN
    lines += _training_section(run, test_shape, volume_origin)
    lines += ["# Validation", "", *figures_markdown(figures), ""]
    lines += _limitations_and_citation(run, spec, spacing)
    return "\n".join(lines)


def _what_it_does(run: TrainingRun, spec: Any) -> list[str]:
    rows = "\n".join(
        f"| {i} | `{n}` | {c} | {CHANNEL_MEANING[c]} |" for i, (n, c) in enumerate(zip(CHANNEL_NAMES, CHANNELS))
    )
    return [
        "## What it does",
        "",
        f"A 3D {spec.title} ({run.n_parameters:,} parameters, class `{run.callable}` in `{run.source.name}`, "
        "which imports only torch) maps a single-channel fluorescence stack of cell outlines to the "
        "probabilities of three channels, in this order:",
        "",
        "| index | channel name | channel | meaning |",
        "|---|---|---|---|",
        rows,
        "",
        "Each channel name starts with its CartoCell letter (B, C, M); tools find the channel order "
        "from that letter. The network returns logits; the package's postprocessing applies the sigmoid. "
        "Its preprocessing normalises each whole image to zero mean and unit variance.",
        "",
        "Cells come from the probabilities in two steps (cartocell-bmz `postprocess`, after BiaPy and "
        "CartoCell): a marker-controlled watershed (seeds where B is high and C low, flooding -B inside "
        "B > threshold) and a 3D Voronoi expansion bounded by the M mask, so that neighbouring cells touch "
        "and the lumen stays empty.",
        "",
    ]


def _sizes_and_tiling(sizes: AxisSizes, halo: HaloChoice, volume_origin: str) -> list[str]:
    return [
        "## Input sizes and tiling",
        "",
        f"Input axes `batch, channel, z, y, x`; spatial sizes `min + n * step` with min {sizes.minimum} "
        f"and step {sizes.step} (z, y, x). Outputs have the input's size and a halo of {sizes.halo} "
        "voxels to crop from each side of every block when tiling. " + _halo_text(halo, volume_origin),
        "",
        "Note for bioimageio.core 0.11: its whole-volume `predict` (no `blocksize_parameter`) pads the "
        "halo before computing the normalisation statistics, which changes them; use blocked prediction "
        "(`blocksize_parameter`) or cartocell-bmz, which normalise with the statistics of the image itself.",
        "",
    ]


def _training_section(run: TrainingRun, test_shape: Sequence[int], volume_origin: str) -> list[str]:
    train = config_section(run, "train")
    return [
        "## Training data",
        "",
        training_data_text(run),
        "",
        f"Targets: {run.target_mode} definition of B, C and M from the instance labels. "
        + (
            f"Training: {train.get('optimizer', '?')} optimiser, learning rate {train.get('lr', '?')}, "
            f"{train.get('schedule', '?')} schedule, batch {train.get('batch_size', '?')}, "
            f"patches {train.get('patch_size', '?')}; best epoch {run.status.get('best_epoch', '?')} of "
            f"{run.status.get('epoch', '?')} (validation loss {_fmt(run.status.get('best_val_loss'))})."
            if train else ""
        )
        + ("" if run.status.get("finished") else " Training had not finished when this package was built."),
        "",
        f"Test tensors: a {tuple(test_shape)} crop of {volume_origin}; the cover shows that volume.",
        "",
    ]


def _limitations_and_citation(run: TrainingRun, spec: Any, spacing: Sequence[float]) -> list[str]:
    return [
        "## Limitations",
        "",
        "Trained on synthetic cysts only: check it (and fine-tune it) before trusting it on real confocal "
        f"stacks. Voxel size matters: {_voxel_text(run, spacing)}; rescale very different data first.",
        "",
        "## Citation",
        "",
        f"- {CARTOCELL_CITATION[0]} doi:{CARTOCELL_CITATION[1]}",
        f"- {BIAPY_CITATION[0]} doi:{BIAPY_CITATION[1]}",
        f"- {spec.citation['text']} doi:{spec.citation['doi']}",
        "",
    ]


def _halo_text(halo: HaloChoice, volume_origin: str) -> str:
    if halo.trials:
        return (
            "The halo was measured on the trained network as the smallest with which even the smallest "
            f"blocks agree with whole-volume prediction to {halo.tolerance}: they differed by at most "
            f"{halo.max_difference:.2g} on {volume_origin}."
        )
    text = (
        f"The halo was set when packaging; with it, the smallest blocks differed from whole-volume "
        f"prediction by at most {halo.max_difference:.2g} on {volume_origin}"
    )
    if halo.max_difference > halo.tolerance:
        return text + f", more than {halo.tolerance}: tile with large blocks or predict whole volumes."
    return text + "."


def _voxel_text(run: TrainingRun, spacing: Sequence[float]) -> str:
    trained = _dataset_json(run).get("spacing")
    if isinstance(trained, (list, tuple)) and len(trained) == 3:
        return f"the training cysts had {tuple(float(v) for v in trained)} um voxels (z, y, x)"
    return f"the test volume has {tuple(round(float(v), 4) for v in spacing)} um voxels (z, y, x)"


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, (int, float)) and not isinstance(value, bool) else str(value)


def figures_markdown(figures: Mapping[str, Any] | None) -> list[str]:
    """Test-set figures as markdown lines for a ``# Validation`` section.

    ``cartocell-bmz evaluate``'s ``summary.json`` becomes the eight columns of the
    published CartoCell ranking and a per-threshold table; any other mapping a
    table of its numbers (nested keys joined with ``/``) after its texts.
    """
    if not figures:
        return [
            "No test-set figures were given when this package was built. Measure them with "
            "`cartocell-bmz predict` and `cartocell-bmz evaluate` on held-out cysts "
            "(channel IoU, F1, PQ and mean true score at IoU 0.5 and 0.75), and `cartocell-bmz validate` "
            "checks that the package reproduces its test output."
        ]
    if isinstance(figures.get("dataset"), Mapping) and isinstance(figures.get("channel_iou"), Mapping):
        return _summary_markdown(figures)
    flat = _flatten(figures)
    numbers = [(k, v) for k, v in flat if isinstance(v, (int, float)) and not isinstance(v, bool)]
    texts = [(k, v) for k, v in flat if isinstance(v, str)]
    lines = []
    for k, v in texts:
        lines.append(f"- {k}: {v}")
    if texts:
        lines.append("")
    lines += ["| figure | value |", "|---|---|"]
    lines += [f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in numbers]
    return lines


def _summary_markdown(summary: Mapping[str, Any]) -> list[str]:
    """``cartocell-bmz evaluate``'s ``summary.json`` as the published columns and a per-threshold table."""
    from cartocell_bmz.bmz.known_models import RANKING_COLUMNS

    per_threshold = summary["dataset"]

    def cell(value: Any) -> str:
        return f"{value:.3f}" if isinstance(value, (int, float)) and not isinstance(value, bool) else "n/a"

    values = list(_ranking_values(summary).values())
    n = summary.get("n_images", "?")
    lines = [
        f"Test set: {n} held-out cysts; figures averaged over images "
        f"(`cartocell-bmz evaluate`, {summary.get('target_mode', '?')} targets), in the columns of the "
        "published CartoCell ranking.",
        "",
        "| " + " | ".join(c[0] for c in RANKING_COLUMNS) + " |",
        "|" + "---|" * len(RANKING_COLUMNS),
        "| " + " | ".join(cell(v) for v in values) + " |",
        "",
        "| IoU threshold | precision | recall | F1 | PQ | MTS | TP | FP | FN |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for key, row in per_threshold.items():
        if isinstance(row, Mapping):
            lines.append(
                f"| {key} | " + " | ".join(cell(row.get(k)) for k in (
                    "precision", "recall", "f1", "panoptic_quality", "mean_true_score"))
                + " | " + " | ".join(str(row.get(k, "n/a")) for k in ("tp", "fp", "fn")) + " |"
            )
    return lines


def _at_threshold(per_threshold: Mapping[str, Any], threshold: float) -> Mapping[str, Any]:
    for key, value in per_threshold.items():
        try:
            if abs(float(key) - threshold) < 1e-9:
                return value
        except ValueError:
            continue
    return {}


def _ranking_values(summary: Mapping[str, Any]) -> dict[str, Any]:
    """Column name -> value of the published ranking's columns, from ``evaluate``'s ``summary.json``."""
    from cartocell_bmz.bmz.known_models import RANKING_COLUMNS

    values: dict[str, Any] = {}
    for column, key, threshold in RANKING_COLUMNS:
        if threshold is None:
            values[column] = summary["channel_iou"].get(key.split("_")[-1])
        else:
            values[column] = _at_threshold(summary["dataset"], threshold).get(key)
    return values


def evaluation_record(figures: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The test-set figures a package records in ``config.cartocell_bmz.evaluation``, or ``None``.

    The published ranking's columns (:data:`~cartocell_bmz.bmz.known_models.RANKING_COLUMNS`),
    rounded to the 3 decimals ``documentation.md`` shows, with the number of test images
    and the target definition; ``None`` unless ``figures`` is ``evaluate``'s ``summary.json``.

    Examples
    --------
    >>> summary = {"n_images": 2, "target_mode": "cartocell",
    ...            "channel_iou": {"B": 0.81234, "C": 0.9, "M": 0.95},
    ...            "dataset": {"0.5": {"f1": 0.9, "panoptic_quality": 0.7, "mean_true_score": 0.69},
    ...                        "0.75": {"f1": 0.6, "panoptic_quality": 0.5}}}
    >>> ev = evaluation_record(summary)
    >>> ev["figures"]["IoU B"], ev["sample_count"]
    (0.812, 2)
    """
    if not figures or not isinstance(figures.get("dataset"), Mapping) \
            or not isinstance(figures.get("channel_iou"), Mapping):
        return None
    values = {k: (round(float(v), 3) if isinstance(v, (int, float)) and not isinstance(v, bool) else None)
              for k, v in _ranking_values(figures).items()}
    return _evaluation(figures.get("n_images"), figures.get("target_mode"), values)


def _evaluation(n_images: Any, target_mode: Any, values: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "dataset": "cartocell-bmz synthetic test set (held-out cysts, not published)",
        "dataset_role": "test",
        "sample_count": int(n_images) if isinstance(n_images, int) else None,
        "averaged_over": "images",
        "target_mode": str(target_mode) if target_mode else None,
        "columns": "the published CartoCell ranking's",
        "figures": dict(values),
    }


def evaluation_from_documentation(text: str) -> dict[str, Any] | None:
    """The :func:`evaluation_record` record read back from a package's ``documentation.md``.

    Reads the ``# Validation`` section that :func:`documentation` writes (its sentence
    with the number of test cysts and the table of the published columns); ``None``
    when the section holds no such table.
    """
    import re

    from cartocell_bmz.bmz.known_models import RANKING_COLUMNS

    columns = [c[0] for c in RANKING_COLUMNS]
    header = "| " + " | ".join(columns) + " |"
    lines = text.splitlines()
    if header not in lines:
        return None
    row = lines[lines.index(header) + 2] if lines.index(header) + 2 < len(lines) else ""
    cells = [c.strip() for c in row.strip().strip("|").split("|")]
    if len(cells) != len(columns):
        return None

    def number(cell: str) -> float | None:
        try:
            return float(cell)
        except ValueError:
            return None

    found = re.search(r"Test set: (\d+) held-out cysts.*?, (\w+) targets\)", text)
    n, mode = (int(found.group(1)), found.group(2)) if found else (None, None)
    return _evaluation(n, mode, {c: number(v) for c, v in zip(columns, cells)})


def _flatten(data: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for key, value in data.items():
        name = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            out += _flatten(value, name)
        elif not isinstance(value, (list, tuple)):
            out.append((name, value))
    return out


def read_figures(value: str | os.PathLike) -> dict[str, Any]:
    """Test-set figures from a JSON file or an inline JSON object.

    Raises
    ------
    InputError
        When ``value`` is neither a readable JSON file nor a JSON object.
    """
    text = str(value)
    path = Path(text)
    try:
        is_file = path.is_file()
    except OSError:
        is_file = False
    if is_file:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InputError(f"{path}: cannot be read as JSON ({type(exc).__name__}).") from None
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            raise InputError(f"{text}: neither a JSON file nor a JSON object of test-set figures.") from None
    if not isinstance(data, dict):
        raise InputError(f"{text}: test-set figures must be a JSON object (name -> value).")
    return data


# --------------------------------------------------------------------------- cover


def save_cover(path: Path, raw: np.ndarray, probs: np.ndarray, spacing: Sequence[float]) -> Path:
    """Cover image (2:1 PNG): raw slices, the B, C, M probabilities, watershed cells and Voronoi cells."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    from cartocell_bmz.core.postprocess import PostprocessConfig, postprocess

    instances, voronoi = postprocess(probs, tuple(spacing), PostprocessConfig())
    z, y = raw.shape[0] // 2, raw.shape[1] // 2
    aspect = float(spacing[0]) / float(spacing[2])
    n = int(max(instances.max(), voronoi.max()))
    colours = np.random.default_rng(12345).uniform(0.25, 1.0, size=(n + 1, 3))
    colours[0] = 0
    cmap = ListedColormap(colours)
    panels = [
        (raw[z], "gray", "raw (z mid-slice)", 1.0, "antialiased"),
        (probs[0, z], "magma", f"{CHANNEL_NAMES[0]}", 1.0, "antialiased"),
        (probs[1, z], "magma", f"{CHANNEL_NAMES[1]}", 1.0, "antialiased"),
        (probs[2, z], "magma", f"{CHANNEL_NAMES[2]}", 1.0, "antialiased"),
        (raw[:, y], "gray", "raw (y mid-slice)", aspect, "antialiased"),
        (instances[z], cmap, f"watershed ({int(np.unique(instances).size - 1)} cells in 3D)", 1.0, "nearest"),
        (voronoi[z], cmap, "Voronoi cells (z)", 1.0, "nearest"),
        (voronoi[:, y], cmap, "Voronoi cells (y)", aspect, "nearest"),
    ]
    fig, axes = plt.subplots(2, 4, figsize=(10, 5))
    for ax, (img, cm, title, asp, interp) in zip(axes.flat, panels):
        if cm is cmap:
            ax.imshow(img, cmap=cm, vmin=0, vmax=n, aspect=asp, interpolation=interp)
        elif cm == "magma":
            ax.imshow(img, cmap=cm, vmin=0, vmax=1, aspect=asp, interpolation=interp)
        else:
            ax.imshow(img, cmap=cm, aspect=asp, interpolation=interp)
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=80, metadata={"Software": None})
    plt.close(fig)
    return path


__all__ = [
    "config_section",
    "default_description",
    "documentation",
    "evaluation_from_documentation",
    "figures_markdown",
    "read_figures",
    "save_cover",
    "evaluation_record",
    "training_data_text",
]
