"""Test a BioImage Model Zoo model package with bioimageio.core, one row per weight format.

:func:`validate_package` first checks the description itself (the static
validation bioimageio.spec does when loading it: fields, file hashes, test
tensor shapes), then runs bioimageio.core's ``test_model`` for every weight
format the package has (or the one asked for): the test input must reproduce
the test output within the description's tolerance and inference must work for
the sizes the description allows.  Each row says whether that check passed and,
if not, its first error.

Local packages (a folder, a ``.zip`` or an ``rdf.yaml``) are tested without
any network access; a BMZ id or URL has to be downloaded first.
"""

from __future__ import annotations

import contextlib
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

from cartocell_bmz.bmz.formats import WEIGHT_FORMATS
from cartocell_bmz.bmz.safety import check_zip, find_rdf
from cartocell_bmz.errors import ConfigError, InputError, ModelError, one_line

#: Name of the row of the static description check.
DESCRIPTION_ROW = "description"


@dataclass(frozen=True)
class ValidationRow:
    """Outcome of one check of a package.

    Attributes
    ----------
    check : str
        ``"description"`` (the static validation) or a weight format name.
    passed : bool
        Whether every sub-test of the check passed.
    error : str or None
        The first error (one line), ``None`` when passed.
    n_tests : int
        Number of bioimageio sub-tests the check ran.
    seconds : float
        Time the check took.
    """

    check: str
    passed: bool
    error: str | None = None
    n_tests: int = 0
    seconds: float = 0.0

    def __str__(self) -> str:
        state = "passed" if self.passed else f"FAILED: {self.error}"
        return f"{self.check}: {state} ({self.n_tests} tests, {self.seconds:.1f} s)"


def resolve_source(path_or_id: str | os.PathLike) -> str | Path:
    """A local package path (folder -> its ``rdf.yaml``) or the id/URL as given.

    Raises
    ------
    InputError
        For a path-like value (with a ``/`` or a package suffix) that does not exist,
        or a folder without a description file (:func:`~cartocell_bmz.bmz.safety.find_rdf`).
    """
    text = str(path_or_id)
    path = Path(text).expanduser()
    if path.is_dir():
        try:
            return find_rdf(path)
        except ModelError:
            raise InputError(f"{path}: folder holds no rdf.yaml; is it a model package?") from None
    if path.is_file():
        return path
    if text.startswith(("http://", "https://")):
        return text
    if os.sep in text or "/" in text or path.suffix.lower() in (".zip", ".yaml", ".yml"):
        raise InputError(f"{text}: no such package file or folder.")
    return text  # a BMZ id or nickname


def validate_package(
    path_or_id: str | os.PathLike,
    *,
    weights: str | None = None,
    devices: Sequence[str] | None = None,
) -> list[ValidationRow]:
    """Run bioimageio.core's model test for every weight format of a package.

    Parameters
    ----------
    path_or_id : str or path-like
        A package folder, ``.zip`` or ``rdf.yaml``, or a BMZ id (needs the network).
    weights : str, optional
        Test only this weight format (``"pytorch_state_dict"``, ``"torchscript"``, ...).
    devices : sequence of str, optional
        Devices to test on (``["cpu"]``); default CUDA when available, else CPU.

    Returns
    -------
    list of ValidationRow
        The ``"description"`` row, then one row per tested weight format
        (only the description row when the description is invalid).

    Raises
    ------
    InputError
        When the package path does not exist.
    ConfigError
        For an unknown weight format.
    ModelError
        When the package cannot be loaded at all (e.g. an id without network),
        is a zip that :func:`~cartocell_bmz.bmz.safety.safe_extract` would
        refuse (``../`` or absolute members, links, a zip bomb), or lacks the
        requested weight format.
    """
    from bioimageio.core import test_model
    from bioimageio.spec import InvalidDescr, load_description

    if weights is not None and weights not in WEIGHT_FORMATS:
        raise ConfigError(f"--weights {weights!r} is not a weight format; choose one of {', '.join(WEIGHT_FORMATS)}.")
    source = resolve_source(path_or_id)
    if isinstance(source, Path) and source.suffix.lower() == ".zip":
        check_zip(source)  # members escaping the package or a zip bomb: refused, never blessed
    t0 = time.perf_counter()
    with _quiet():
        try:
            descr = load_description(source, perform_io_checks=True)
        except Exception as exc:  # network errors, broken zips, unreadable YAML
            raise ModelError(
                f"{path_or_id}: cannot be loaded ({one_line(exc)}); a BMZ id needs network access."
            ) from None
    if isinstance(descr, InvalidDescr) or descr.type != "model":
        error = _first_error(descr.validation_summary) if isinstance(descr, InvalidDescr) else (
            f"is a {descr.type} description, not a model"
        )
        return [ValidationRow(DESCRIPTION_ROW, False, error, 1, time.perf_counter() - t0)]
    rows = [ValidationRow(DESCRIPTION_ROW, True, None, 1, time.perf_counter() - t0)]
    present = [wf for wf in WEIGHT_FORMATS if getattr(descr.weights, wf, None) is not None]
    if weights is not None and weights not in present:
        raise ModelError(f"{path_or_id}: has no {weights} weights; it has {', '.join(present) or 'none'}.")
    for wf in [weights] if weights else present:
        t0 = time.perf_counter()
        with _quiet():
            try:
                summary = test_model(source, weight_format=wf, devices=list(devices) if devices else None)
            except Exception as exc:  # bioimageio reports most failures in the summary; be safe
                rows.append(ValidationRow(wf, False, one_line(exc), 0, time.perf_counter() - t0))
                continue
        details = [d for d in summary.details if _concerns(d, wf)]
        passed = summary.status == "passed" and all(d.status == "passed" for d in details)
        rows.append(
            ValidationRow(wf, passed, None if passed else _first_error(summary), len(details), time.perf_counter() - t0)
        )
    return rows


def _concerns(detail, weight_format: str) -> bool:
    """Whether a summary detail is a test of ``weight_format`` (the rest is the static check)."""
    loc = tuple(detail.loc or ())
    return len(loc) >= 2 and loc[0] == "weights" and loc[1] == weight_format


def _first_error(summary) -> str:
    """The first error message of a bioimageio validation summary, on one line."""
    for detail in summary.details:
        if detail.status == "failed":
            for error in detail.errors:
                where = ".".join(str(part) for part in error.loc) if error.loc else ""
                message = " ".join(str(error.msg).split())
                text = f"{detail.name}: {where + ': ' if where else ''}{message}"
                return text if len(text) <= 400 else text[:397] + "..."
            return str(detail.name)
    return f"status {summary.status}"


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence bioimageio's Python warnings (loguru logging is left as configured)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def all_passed(rows: Sequence[ValidationRow]) -> bool:
    """Whether every row passed."""
    return bool(rows) and all(r.passed for r in rows)


__all__ = ["DESCRIPTION_ROW", "ValidationRow", "WEIGHT_FORMATS", "all_passed", "resolve_source", "validate_package"]
