"""The domain plot: what it draws (library), and ``ams-store plot`` (CLI), on both backends."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from ams import AMSModelDescr
from ams.cli import main
from ams.errors import InvalidArgumentError, MissingDependencyError, NotFoundError
from ams.plot import BAR_COLOR, VAL_COLOR, _version_axis, domain_figure, plot_store

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def filled(store, make_h5, make_model):
    """EOS: data v1 (3 files), v2 (1 file); models v1 (0.2/0.25), v2 (0.05/0.07 and a worse one)."""
    store.add_data("EOS", [make_h5() for _ in range(3)])
    store.add_data("EOS", [make_h5()])
    store.add_model("EOS", AMSModelDescr(make_model(), 0.5, "Random"), test_error=0.25, val_error=0.2)
    store.add_model("EOS", AMSModelDescr(make_model(), 0.5, "Random"), test_error=0.07, val_error=0.05)
    store.add_model("EOS", AMSModelDescr(make_model(), 0.5, "Random"), test_error=0.09,
                    val_error=0.08, version=2)
    return store


def _line(axes, label):
    (line,) = [line for line in axes.get_lines() if line.get_label() == label]
    return list(line.get_xdata()), list(line.get_ydata())


def test_figure_shows_errors_and_file_counts(filled) -> None:
    figure = domain_figure(filled, "EOS")
    errors_axes, data_axes = figure.axes
    assert _line(errors_axes, "validation error") == ([1, 2], [0.2, 0.05])  # best of v2
    assert _line(errors_axes, "test error") == ([1, 2], [0.25, 0.07])
    faint = [tuple(map(tuple, c.get_offsets())) for c in errors_axes.collections]
    assert ((2.0, 0.08),) in faint and ((2.0, 0.09),) in faint  # the other v2 model
    bars = [(round(p.get_x() + p.get_width() / 2), p.get_height()) for p in data_axes.patches]
    assert bars == [(1, 3), (2, 1)]
    assert errors_axes.get_title(loc="left") == "Model error per version"
    assert data_axes.get_title(loc="left") == "Training data per version"
    assert errors_axes.get_xlabel() == "model version" and data_axes.get_ylabel() == "number of files"
    assert errors_axes.get_legend() is not None
    assert "latest: v2, validation 0.05, test 0.07" in [t.get_text() for t in errors_axes.texts]
    assert figure._suptitle.get_text() == "app · EOS"


def test_plot_store_writes_a_png(filled, tmp_path: Path) -> None:
    import matplotlib.image
    import numpy as np

    out = plot_store(filled, "EOS", tmp_path / "plots" / "eos.png")  # folder created
    assert out == str(tmp_path / "plots" / "eos.png")
    assert Path(out).read_bytes()[:8] == PNG_MAGIC
    pixels = matplotlib.image.imread(out)[..., :3]
    assert pixels.shape[:2] == (660, 1650)

    def share(color: str) -> float:
        rgb = np.array([int(color[i:i + 2], 16) / 255 for i in (1, 3, 5)])
        return float(np.mean(np.all(np.abs(pixels - rgb) < 0.02, axis=-1)))

    assert share(BAR_COLOR) > 0.05       # the bars are really drawn
    assert share(VAL_COLOR) > 0.001      # and the validation line


def _version_tick_labels(axes) -> list:
    """The x tick labels matplotlib draws (inside the view), after a real draw."""
    axes.figure.canvas.draw()
    low, high = axes.get_xlim()
    return [label.get_text() for tick, label in zip(axes.get_xticks(), axes.get_xticklabels())
            if low <= tick <= high]


def test_one_version_has_one_integer_tick(store, make_h5, make_model) -> None:
    store.add_data("EOS", [make_h5()])
    store.add_model("EOS", AMSModelDescr(make_model(), 0.5, "Random"), test_error=0.2, val_error=0.1)
    for axes in domain_figure(store, "EOS").axes:  # not 0.66 ... 1.32
        assert _version_tick_labels(axes) == ["1"]
        low, high = axes.get_xlim()
        assert low < 0.7 and high > 1.3  # the bar and the markers fit, with a margin


def test_several_versions_have_integer_ticks(filled) -> None:
    for axes in domain_figure(filled, "EOS").axes:
        assert _version_tick_labels(axes) == ["1", "2"]


@pytest.mark.parametrize("versions", [[0], [7], [1, 2, 3], [2, 5, 9], list(range(1, 13)),
                                      [3, 17, 40], list(range(1, 60)), [1, 1000]])
def test_version_axis_ticks_are_integers_in_range(versions) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure()
    FigureCanvasAgg(figure)
    axes = figure.subplots()
    axes.bar(versions, [1] * len(versions))
    _version_axis(axes, versions)
    labels = _version_tick_labels(axes)
    assert 1 <= len(labels) <= 13
    assert all(label.isdigit() for label in labels), labels
    low, high = axes.get_xlim()  # every bar fits, with little room to spare
    assert low <= min(versions) - 0.5 and high >= max(versions) + 0.5
    assert high - low <= 1.1 * (max(versions) - min(versions)) + 1.2
    if max(versions) - min(versions) < 12:  # a short span: every version has its tick
        assert set(map(str, versions)) <= set(labels)


def test_data_only_domain_and_log_scale(store, make_h5, make_model) -> None:
    store.add_data("EOS", [make_h5()])
    figure = domain_figure(store, "EOS")
    assert figure.axes[0].get_lines() == []
    assert "no models registered yet" in [t.get_text() for t in figure.axes[0].texts]
    store.add_model("EOS", AMSModelDescr(make_model(), 0.5, "Random"), test_error=1.0, val_error=0.9)
    store.add_model("EOS", AMSModelDescr(make_model(), 0.5, "Random"), test_error=0.01, val_error=0.005)
    assert domain_figure(store, "EOS").axes[0].get_yscale() == "log"  # errors span > a decade


@pytest.mark.parametrize("suffix, magic", [(".png", PNG_MAGIC), (".pdf", b"%PDF"),
                                           (".PDF", b"%PDF"), (".svg", None)])
def test_format_follows_the_suffix(filled, tmp_path: Path, suffix, magic) -> None:
    out = Path(plot_store(filled, "EOS", tmp_path / f"eos{suffix}"))
    content = out.read_bytes()
    if magic is not None:
        assert content.startswith(magic)
    else:  # SVG: an XML document whose root is <svg>
        from xml.etree import ElementTree
        assert content.lstrip().startswith(b"<?xml") and b"<svg" in content
        assert ElementTree.fromstring(content).tag.endswith("svg")


@pytest.mark.parametrize("name", ["eos.jpg", "eos", "eos.png.txt"])
def test_other_suffixes_are_refused(filled, unchanged, tmp_path: Path, name) -> None:
    guard = unchanged()
    with pytest.raises(InvalidArgumentError, match=r"\.png, \.pdf, \.svg"):
        plot_store(filled, "EOS", tmp_path / "out" / name)
    guard.check()
    assert not (tmp_path / "out").exists()


def test_unknown_domain_is_rejected(store, unchanged, tmp_path: Path) -> None:
    guard = unchanged()
    with pytest.raises(NotFoundError, match="'NOPE'.*no models and no data"):
        plot_store(store, "NOPE", tmp_path / "out" / "nope.png")
    guard.check()
    assert not (tmp_path / "out").exists()


def test_missing_matplotlib_is_a_clear_error(filled, tmp_path: Path, monkeypatch) -> None:
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # what an absent package looks like
    with pytest.raises(MissingDependencyError, match=r"ams-store\[plot\]"):
        plot_store(filled, "EOS", tmp_path / "eos.png")
    assert isinstance(MissingDependencyError("x"), ImportError)
    assert not (tmp_path / "eos.png").exists()


# ------------------------------------------------------------------ CLI
def test_cli_plot(filled, tmp_path: Path, capsys) -> None:
    out = tmp_path / "cli" / "eos.png"
    code = main(["--url", str(filled.url.sqlalchemy_url()), "--name", "app", "plot",
                 "--domain", "EOS", "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert json.loads(captured.out) == {"domain_name": "EOS", "plot": str(out)}
    assert out.read_bytes()[:8] == PNG_MAGIC


def test_cli_plot_errors(store, tmp_path: Path, capsys) -> None:
    out = tmp_path / "nope.png"
    code = main(["--url", store.url.sqlalchemy_url(), "--name", "app", "plot", "--domain", "NOPE",
                 "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 1
    assert captured.err.startswith("Error: ") and "'NOPE'" in captured.err
    assert "Traceback" not in captured.err and not out.exists()
    assert main(["--url", store.url.sqlalchemy_url(), "--name", "app", "plot",
                 "--domain", "EOS"]) == 2  # --out is required
    assert "--out" in capsys.readouterr().err


def test_cli_plot_pdf_and_refused_suffix(filled, tmp_path: Path, capsys) -> None:
    base = ["--url", filled.url.sqlalchemy_url(), "--name", "app", "plot", "--domain", "EOS"]
    assert main(base + ["--out", str(tmp_path / "eos.pdf")]) == 0, capsys.readouterr().err
    assert (tmp_path / "eos.pdf").read_bytes().startswith(b"%PDF")
    capsys.readouterr()
    assert main(base + ["--out", str(tmp_path / "eos.jpg")]) == 1
    captured = capsys.readouterr()
    assert captured.err.startswith("Error: ") and ".png, .pdf, .svg" in captured.err
    assert captured.out == "" and not (tmp_path / "eos.jpg").exists()
