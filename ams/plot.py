"""A one-glance picture of a domain: model errors per version, data files per version.

:func:`plot_store` draws two panels into one image (PNG, PDF or SVG, chosen
by the file's suffix): on the left, per model version, the validation and
test error of that version's model (markers and lines, log scale when the
errors span more than a decade); on the right, per data version, the number
of registered files (bars, with their counts).

matplotlib is an optional extra (``pip install "ams-store[plot]"``) and is
imported only here. The figure is drawn with the Agg canvas directly, without
``pyplot``, so calling this from a notebook neither changes the notebook's
backend nor leaves figures open.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any, Dict, List, Tuple, Union

from . import _validate
from .errors import InvalidArgumentError, MissingDependencyError, NotFoundError

if TYPE_CHECKING:  # pragma: no cover - typing only
    from .store import AMSDataStore

__all__ = ["plot_store", "domain_figure", "IMAGE_FORMATS"]

LOGGER = logging.getLogger(__name__)

VAL_COLOR = "#2E6FB7"
TEST_COLOR = "#E0762B"
BAR_COLOR = "#4E9A8E"
INK = "#333333"
MUTED = "#777777"
_MAX_LABELLED_BARS = 30
_MAX_TICKED_VERSIONS = 12
"""Versions spanning fewer than this many numbers get one tick each; wider spans, fewer integers."""
IMAGE_FORMATS = {".png": "png", ".pdf": "pdf", ".svg": "svg"}
"""File suffix -> the format :func:`plot_store` writes; any other suffix is refused."""


def plot_store(store: "AMSDataStore", domain_name: str,
               out_path: Union[str, "os.PathLike[str]"]) -> str:
    """Draw ``domain_name``'s model errors and data files per version into an image; return its path.

    The format comes from the suffix of ``out_path``: ``.png``, ``.pdf`` or
    ``.svg`` (any case); any other suffix raises
    :class:`~ams.errors.InvalidArgumentError` before anything is read or
    written. The image's folder is created if needed. See
    :func:`domain_figure` for what is drawn and what else is raised.

    >>> path = plot_store(store, "EOS", "eos.pdf")
    """
    out = _validate.absolute_path(out_path, "out_path")
    image_format = _image_format(out)
    figure = domain_figure(store, domain_name)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    figure.savefig(out, format=image_format, dpi=150)
    LOGGER.info("plotted %s into %s", domain_name, out)
    return out


def _image_format(path: str) -> str:
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in IMAGE_FORMATS:
        raise InvalidArgumentError(
            f"cannot tell the image format of {path!r}: out_path must end in "
            f"{', '.join(IMAGE_FORMATS)} (the format is taken from the suffix)")
    return IMAGE_FORMATS[suffix]


def domain_figure(store: "AMSDataStore", domain_name: str) -> Any:
    """The two-panel matplotlib ``Figure`` of :func:`plot_store`, to tweak or show yourself.

    Left: per model version, ``val_error`` and ``test_error`` (markers and
    lines). When a version holds several models, the line follows the one with
    the lowest ``val_error`` (the one you would deploy) and the others are
    faint markers. Right: per data version, the number of files (bars).
    Raises :class:`~ams.errors.NotFoundError` when the domain has neither
    models nor data, :class:`~ams.errors.MissingDependencyError` without
    matplotlib.
    """
    domain_name = _validate.name(domain_name, "domain_name")
    _matplotlib()  # fail on a missing extra before reading the store
    models = _model_errors(store.find(domain_name, entry_type="models"))
    data = {version: len(paths) for version, paths in
            store.get_data_versions(domain_name, associate_files=True).items()}
    if not models and not data:
        raise NotFoundError(f"domain {domain_name!r} of application {store.application_name!r} "
                            "has no models and no data to plot")
    LOGGER.debug("figure of %s: %d model version(s), %d data version(s)", domain_name,
                 len(models), len(data))
    return _figure(f"{store.application_name} · {domain_name}", models, data)


def _model_errors(entries: List[Dict[str, Any]]) -> Dict[int, List[Tuple[float, float]]]:
    """version -> [(val_error, test_error)], best (lowest val_error) first."""
    out: Dict[int, List[Tuple[float, float]]] = {}
    for entry in entries:
        metadata = entry["metadata"]
        if "val_error" in metadata and "test_error" in metadata:
            out.setdefault(entry["version"], []).append(
                (float(metadata["val_error"]), float(metadata["test_error"])))
        else:  # a model registered by plain Kosh, without errors
            LOGGER.debug("model %s has no val_error/test_error; not plotted", entry["filename"])
    return {version: sorted(out[version]) for version in sorted(out)}


def _matplotlib() -> Tuple[Any, Any, Any]:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.ticker import MaxNLocator
    except ImportError as error:
        raise MissingDependencyError(
            f"plotting needs matplotlib ({error}); install it with: "
            "pip install \"ams-store[plot]\"") from None
    return Figure, FigureCanvasAgg, MaxNLocator


def _figure(title: str, models: Dict[int, List[Tuple[float, float]]], data: Dict[int, int]) -> Any:
    Figure, FigureCanvasAgg, _ = _matplotlib()
    figure = Figure(figsize=(11, 4.4), layout="constrained")
    FigureCanvasAgg(figure)
    figure.suptitle(title, fontsize=14, fontweight="bold", color=INK)
    errors_axes, data_axes = figure.subplots(1, 2, gridspec_kw={"width_ratios": [1.35, 1]})
    for axes in (errors_axes, data_axes):
        _style(axes)
    _draw_errors(errors_axes, models)
    _draw_data(data_axes, data)
    return figure


def _style(axes: Any) -> None:
    for side in ("top", "right"):
        axes.spines[side].set_visible(False)
    for side in ("left", "bottom"):
        axes.spines[side].set_color("#BBBBBB")
    axes.tick_params(colors=INK, labelsize=9)
    axes.grid(axis="y", color="#E6E6E6", linewidth=0.8)
    axes.set_axisbelow(True)
    axes.set_xlabel("version", color=INK)


def _draw_errors(axes: Any, models: Dict[int, List[Tuple[float, float]]]) -> None:
    axes.set_title("Model error per version", loc="left", color=INK, fontsize=11)
    axes.set_ylabel("error (lower is better)", color=INK)
    axes.set_xlabel("model version", color=INK)
    if not models:
        _empty(axes, "no models registered yet")
        return
    versions = list(models)
    best = [models[v][0] for v in versions]
    marker_size = 7 if len(versions) <= 40 else 4
    for index, (label, color, marker) in enumerate((("validation error", VAL_COLOR, "o"),
                                                     ("test error", TEST_COLOR, "s"))):
        values = [pair[index] for pair in best]
        axes.plot(versions, values, color=color, marker=marker, markersize=marker_size,
                  linewidth=2, label=label, markeredgecolor="white", markeredgewidth=1)
        others = [(v, pair[index]) for v in versions for pair in models[v][1:]]
        if others:
            axes.scatter(*zip(*others), color=color, alpha=0.3, s=18, zorder=1)
    values = [value for pairs in models.values() for pair in pairs for value in pair]
    if min(values) > 0 and max(values) / min(values) > 10:
        axes.set_yscale("log")
        axes.set_ylabel("error (log scale, lower is better)", color=INK)
    else:
        axes.set_ylim(bottom=0, top=max(values) * 1.15 or 1)
    latest = versions[-1]
    axes.plot([latest], [best[-1][0]], marker="o", markersize=marker_size + 7, color="none",
              markeredgecolor=VAL_COLOR, markeredgewidth=1.2, linestyle="none")
    _corner_note(axes, f"latest: v{latest}, validation {best[-1][0]:.3g}, test {best[-1][1]:.3g}")
    _version_axis(axes, versions)
    axes.legend(frameon=False, fontsize=9, loc="best")


def _draw_data(axes: Any, data: Dict[int, int]) -> None:
    axes.set_title("Training data per version", loc="left", color=INK, fontsize=11)
    axes.set_ylabel("number of files", color=INK)
    axes.set_xlabel("data version", color=INK)
    if not data:
        _empty(axes, "no data registered yet")
        return
    versions, counts = list(data), list(data.values())
    bars = axes.bar(versions, counts, width=0.65, color=BAR_COLOR, label="data files")
    if len(versions) <= _MAX_LABELLED_BARS:
        axes.bar_label(bars, padding=2, fontsize=8.5, color=INK)
    axes.set_ylim(0, max(counts) * 1.18)
    _version_axis(axes, versions)
    axes.yaxis.get_major_locator().set_params(integer=True)
    _corner_note(axes, f"{sum(counts)} files in {len(versions)} version(s)")


def _version_axis(axes: Any, versions: list[int]) -> None:
    """Integer ticks only, and room for half a bar on either side, for any number of versions.

    Left alone, matplotlib labels a single version 0.66 ... 1.32: its integer
    locator gives up when fewer than two integers are in view.
    """
    low, high = min(versions), max(versions)
    pad = max(0.6, (high - low) * 0.03)
    axes.set_xlim(low - pad, high + pad)
    if high - low < _MAX_TICKED_VERSIONS:
        axes.set_xticks(range(low, high + 1))
    else:
        MaxNLocator = _matplotlib()[2]
        axes.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1,
                                                 nbins=_MAX_TICKED_VERSIONS))


def _corner_note(axes: Any, text: str) -> None:
    """A small grey summary at the top right, level with the panel title."""
    axes.text(1, 1.01, text, transform=axes.transAxes, ha="right", va="bottom", fontsize=8.5,
              color=MUTED)


def _empty(axes: Any, message: str) -> None:
    axes.text(0.5, 0.5, message, transform=axes.transAxes, ha="center", va="center",
              color=MUTED, fontsize=10, style="italic")
    axes.set_xticks([])
    axes.set_yticks([])
