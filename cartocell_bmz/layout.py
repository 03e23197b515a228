"""One source of truth for names: channels, dataset folders and the output tree."""

from __future__ import annotations

#: Order of the network's output channels (and of the target channels).
CHANNELS: tuple[str, str, str] = ("B", "C", "M")
#: Human-readable meaning of each channel, used in packages and reports.
CHANNEL_MEANING: dict[str, str] = {
    "B": "cell body (binary foreground without contours)",
    "C": "cell contours",
    "M": "mask of the whole cellular region",
}

#: Splits of a CartoCell-layout dataset, each with ``x/`` (raw) and ``y/`` (labels).
SPLITS: tuple[str, ...] = ("train_M1", "validation", "train_M2", "test")
RAW_DIR = "x"
LABEL_DIR = "y"

#: BiaPy-style output tree written by ``predict``, ``postprocess`` and ``evaluate``.
PROBS_DIR = "per_image"
INSTANCES_DIR = "per_image_instances"
VORONOI_DIR = "per_image_post_processing"
ASSOCIATIONS_DIR = "instance_associations"
#: Morphology tables of ``predict --measure`` (cells.csv, neighbours.csv, cysts.csv, plots).
MEASURE_DIR = "measure"
METRICS_CSV = "metrics_per_image.csv"
SUMMARY_JSON = "summary.json"

#: File suffixes accepted as TIFF volumes.
TIFF_SUFFIXES: tuple[str, ...] = (".tif", ".tiff")

#: Default IoU thresholds of instance matching.
DEFAULT_IOU_THRESHOLDS: tuple[float, ...] = (0.3, 0.5, 0.75)
