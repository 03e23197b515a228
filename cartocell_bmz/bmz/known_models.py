"""The six CartoCell models published in the BioImage Model Zoo (one source of truth).

For each: its BMZ id and emoji, the architecture (a key of
:data:`cartocell_bmz.networks.ARCHITECTURES`), and the sha256 of its published
``rdf.yaml``, weights and architecture file, so that a downloaded description
that differs from the published one is noticed.

The published test-set ranking (60 images of the CartoCell test split) is
recorded by rank: the source names only the first (happy-honeybee) and the
last (merry-water-buffalo) model, so ranks 2-5 carry their figures without a
model id rather than a guess.

Examples
--------
>>> KNOWN_MODELS["happy-honeybee"].architecture
'unet'
>>> find_known("🐃").id
'merry-water-buffalo'
>>> published_figures("happy-honeybee")["PQ@0.5"]
0.814
>>> [r.model_id for r in PUBLISHED_RANKING]
['happy-honeybee', None, None, None, None, 'merry-water-buffalo']
"""

from __future__ import annotations

from dataclasses import dataclass, field

#: Columns of the published test-set ranking, in order.
PUBLISHED_COLUMNS: tuple[str, ...] = (
    "IoU(B)", "IoU(C)", "IoU(M)", "F1@0.5", "PQ@0.5", "MTS@0.5", "F1@0.75", "PQ@0.75",
)

#: The published columns as the benchmark computes them (same order as PUBLISHED_COLUMNS): (column name, per-image metric key, IoU threshold or None).
RANKING_COLUMNS: tuple[tuple[str, str, float | None], ...] = (
    ("IoU B", "iou_B", None),
    ("IoU C", "iou_C", None),
    ("IoU M", "iou_M", None),
    ("F1@0.5", "f1", 0.5),
    ("PQ@0.5", "panoptic_quality", 0.5),
    ("MTS@0.5", "mean_true_score", 0.5),
    ("F1@0.75", "f1", 0.75),
    ("PQ@0.75", "panoptic_quality", 0.75),
)
#: BMZ id of the CartoCell training dataset the six models cite.
TRAINING_DATA_ID = "divine-melon"


@dataclass(frozen=True)
class PublishedRank:
    """One row of the published test-set ranking.

    Attributes
    ----------
    rank : int
        1 (best) to 6.
    model_id : str or None
        The model's BMZ id where the source names it, else ``None``.
    figures : dict
        Column name (:data:`PUBLISHED_COLUMNS`) -> value.
    """

    rank: int
    model_id: str | None
    figures: dict[str, float]


def _row(rank: int, model_id: str | None, values: tuple[float, ...]) -> PublishedRank:
    return PublishedRank(rank, model_id, dict(zip(PUBLISHED_COLUMNS, values)))


#: The published ranking on the 60 test images (mean rank across the columns).
PUBLISHED_RANKING: tuple[PublishedRank, ...] = (
    _row(1, "happy-honeybee", (0.867, 0.542, 0.915, 0.985, 0.814, 0.819, 0.904, 0.758)),
    _row(2, None, (0.835, 0.475, 0.878, 0.937, 0.747, 0.773, 0.765, 0.629)),
    _row(3, None, (0.861, 0.494, 0.891, 0.914, 0.731, 0.766, 0.748, 0.616)),
    _row(4, None, (0.806, 0.474, 0.858, 0.895, 0.713, 0.748, 0.732, 0.604)),
    _row(5, None, (0.849, 0.483, 0.874, 0.861, 0.687, 0.752, 0.717, 0.589)),
    _row(6, "merry-water-buffalo", (0.837, 0.422, 0.864, 0.578, 0.423, 0.579, 0.279, 0.222)),
)


@dataclass(frozen=True)
class KnownModel:
    """A published CartoCell model of the BioImage Model Zoo.

    Attributes
    ----------
    id : str
        BMZ id (its "nickname"), e.g. ``"happy-honeybee"``.
    emoji : str
        The id's emoji.
    name : str
        Published title.
    callable : str
        Class name in the architecture file.
    arch_file : str
        Architecture source file name in the package.
    rdf_sha256, weights_sha256, arch_sha256 : str
        sha256 of the published ``rdf.yaml``, ``checkpoint.pth`` and architecture file.
    """

    id: str
    emoji: str
    name: str
    callable: str
    arch_file: str
    rdf_sha256: str
    weights_sha256: str
    arch_sha256: str
    tags: tuple[str, ...] = field(default=())

    @property
    def architecture(self) -> str:
        """Registry name of the architecture (a key of ``networks.ARCHITECTURES``)."""
        from cartocell_bmz.networks import ARCHITECTURES

        for name, spec in ARCHITECTURES.items():
            if spec.published_id == self.id:
                return name
        raise KeyError(self.id)  # pragma: no cover - guarded by tests

    @property
    def rank(self) -> int | None:
        """Published rank when the source names this model, else ``None``."""
        for row in PUBLISHED_RANKING:
            if row.model_id == self.id:
                return row.rank
        return None

    @property
    def url(self) -> str:
        """The model's page in the BioImage Model Zoo."""
        return f"https://bioimage.io/#/?id={self.id}"


#: The six published CartoCell models by BMZ id (published test-set order unknown
#: except for ranks 1 and 6, see :data:`PUBLISHED_RANKING`).
KNOWN_MODELS: dict[str, KnownModel] = {
    m.id: m
    for m in (
        KnownModel(
            "happy-honeybee", "\U0001F41D", "3D U-Net for cyst segmentation in fluorescence",
            "U_Net", "unet.py",
            "48b83fa976b784492ff6374e559664d2d0d79333af7247e9308eda3a23688e88",
            "b8f3030474cf3355bd69b7b246438a54260d41c2bc9bc5c77014aee1d5e95fff",
            "cd0e6f35ced9b97f039e12a94cb6886f6bce4d353d973170b1b92634f7c7c821",
        ),
        KnownModel(
            "heroic-otter", "\U0001F9A6", "3D Attention U-Net for cyst segmentation in fluorescence",
            "Attention_U_Net", "attention_unet.py",
            "d2a30135c0e590c9113a72a737fa2d81acc5eb1179ae82c63c80dc1092150a72",
            "beed6b78df457a1605dd91bd105e5b2add798ce6ff37bca220f82209c8ad9141",
            "3c53c173263cbda0f85d4d8b3e03fd4b6dca052593f7117c44f6072d03b441eb",
        ),
        KnownModel(
            "idealistic-turtle", "\U0001F422",
            "3D Squeeze-and-Excitation U-Net for cyst segmentation in fluorescence",
            "SE_U_Net", "seunet.py",
            "305e9a71e83c3bd4b83e7fe5e1b0f2c483660c77ce6a40a376c57f17380933e5",
            "69896ee5a80d8f2098b009184898636542fd0883a6a24741fced2e563fafd2c6",
            "b4fb69b11b18fae9df7df4c5b9cf411c1e8a7e4d8a81eac7bd75178ad2fd301d",
        ),
        KnownModel(
            "intelligent-lion", "\U0001F981", "3D ResUNetpp for cyst segmentation in fluorescence",
            "ResUNetPlusPlus", "resunetpp.py",
            "8db0a55c0c853092aa9450096e20e1dd7a7ea07c0347da74dff0fdd6dfe7352d",
            "92f20ccb18e5f5e0b97ca9ca08fe502cc5110a5debe1052baffd1852cf22c128",
            "e4608ef1163f9440cd201e17bde3ab82004de3d9e141a0d283fec806730a05fd",
        ),
        KnownModel(
            "merry-water-buffalo", "\U0001F403", "3D Residual U-Net for cyst segmentation in fluorescence",
            "ResUNet", "resunet.py",
            "8b127b87f4b399830d7fc3be38eee69917cf339a0d98fc9c0022f5f63452d516",
            "2c6a2fc7bfbd601e33ec0a75fbf09033c228bcf0cd133e79dc87454a09a762bb",
            "553e1e359c6bda196e4dfdfa6465abff7bd414e5142f9a771ad0c1656c780192",
        ),
        KnownModel(
            "venomous-swan", "\U0001F9A2",
            "3D Residual Squeeze-and-Excitation U-Net for cyst segmentation in fluorescence",
            "ResUNet_SE", "resunet_se.py",
            "4fce78d671081b02dcd1d1a58cb78c204fb0ae62caf7530bb56cc832c38a14fd",
            "ce81ba3b25d0fc6f59ada1d80a49355b1ad9123b2cacf5dd0db7c86a3b3a4cea",
            "9986172940c5ead2877b00e3525b8931d3fc83832972882a43ce97c6f05e2aa5",
        ),
    )
}


def find_known(value: str) -> KnownModel | None:
    """The published model named by ``value`` (id, emoji or ``"id emoji"``), else ``None``.

    Examples
    --------
    >>> find_known("Happy-Honeybee").emoji
    '🐝'
    >>> find_known("affable-shark") is None
    True
    """
    text = str(value).strip()
    key = text.lower()
    if key in KNOWN_MODELS:
        return KNOWN_MODELS[key]
    for model in KNOWN_MODELS.values():
        if text in (model.emoji, f"{model.id} {model.emoji}", f"{model.emoji} {model.id}"):
            return model
    return None


def published_figures(model_id: str) -> dict[str, float] | None:
    """Published test-set figures of ``model_id`` when the source attributes them, else ``None``."""
    for row in PUBLISHED_RANKING:
        if row.model_id == model_id:
            return dict(row.figures)
    return None


__all__ = [
    "KNOWN_MODELS",
    "KnownModel",
    "PUBLISHED_COLUMNS",
    "PUBLISHED_RANKING",
    "PublishedRank",
    "TRAINING_DATA_ID",
    "find_known",
    "published_figures",
]
