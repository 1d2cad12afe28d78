"""Every plot writes a PNG and has the expected content."""
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.container import ErrorbarContainer
from PIL import Image

from mllm_nle import plots as P
from mllm_nle.metrics import ConsistencyMatrix


@pytest.fixture(autouse=True)
def _close():
    yield
    plt.close("all")


def _png_ok(path):
    assert path.exists() and path.stat().st_size > 1000
    with Image.open(path) as im: assert im.format == "PNG" and im.size[0] > 100


def test_loss_curves(tmp_path):
    hist = [{"step": s, "loss": 1 / s, "loss/semantic": 0.5 / s, "rewards/margins": s * 0.1, "epoch": s / 10} for s in range(1, 31)]
    hist.append({"train_runtime": 12.0, "train_loss": 0.3, "step": 30})
    fig = P.plot_loss_curves(hist, smooth=0.8, path=tmp_path / "run" / "loss.png")
    _png_ok(tmp_path / "run" / "loss.png")
    visible = [a for a in fig.axes if a.get_visible()]
    assert [a.get_title() for a in visible] == ["loss", "loss/semantic", "train_loss"]
    raw, smooth = visible[0].lines
    assert raw.get_alpha() < 0.5 and len(raw.get_xdata()) == 30
    assert np.allclose(smooth.get_ydata(), P.ema(raw.get_ydata(), 0.8))
    fig2 = P.plot_loss_curves(hist, keys=["rewards/margins"])
    assert len([a for a in fig2.axes if a.get_visible()]) == 1


def test_metric_bars_error_bars(tmp_path):
    res = {"sft": {"acc": [0.5, 0.7], "bleu": [0.2, 0.2]}, "mcle": {"acc": [0.6, 0.8], "bleu": 0.3}, "dpo": {"acc": [0.9]}}
    fig = P.plot_metric_bars(res, path=tmp_path / "bars.png")
    _png_ok(tmp_path / "bars.png")
    ax = fig.axes[0]
    assert len(ax.patches) == 6
    assert [round(p.get_height(), 6) for p in ax.patches[:2]] == [0.6, 0.2]
    errs = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    assert len(errs) == 3
    seg = errs[0].lines[2][0].get_segments()[0]           # sft acc: mean 0.6, sample std 0.1414
    assert seg[1][1] - seg[0][1] == pytest.approx(2 * np.std([0.5, 0.7], ddof=1))


def test_before_after(tmp_path):
    fig = P.plot_before_after({"CHAIR_s": [0.5, 0.7], "CIDEr": 1.0, "only_before": 1}, {"CHAIR_s": 0.8, "CIDEr": 0.9},
                              labels=("sft", "dgpref"), lower_is_better=["CHAIR_s"], path=tmp_path / "ba.png")
    _png_ok(tmp_path / "ba.png")
    ax = fig.axes[0]
    assert len(ax.patches) == 4 and [t.get_text() for t in ax.get_xticklabels()] == ["CHAIR_s", "CIDEr"]
    assert [t.get_color() for t in ax.texts] == ["tab:red", "tab:red"]
    with pytest.raises(ValueError, match="share no metric"): P.plot_before_after({"a": 1}, {"b": 2})


def test_consistency_matrix(tmp_path):
    m = ConsistencyMatrix.from_items([True, True, False, None], [True, False, True, False])
    fig = P.plot_consistency_matrix(m, path=tmp_path / "cm.png")
    _png_ok(tmp_path / "cm.png")
    ax = fig.axes[0]
    assert [t.get_text().split("\n")[0] for t in ax.texts] == ["1", "1", "1", "0"]
    assert "1 not judged" in ax.get_title()


def test_gallery(tmp_path):
    img_path = tmp_path / "img.png"
    Image.new("RGB", (16, 16), (255, 0, 0)).save(img_path)
    fig = P.plot_gallery([img_path, Image.new("RGB", (16, 16))], ["red square", ""], ["a red block", "black"],
                         labels=("before", "after"), titles=["a", "b"], path=tmp_path / "gal.png")
    _png_ok(tmp_path / "gal.png")
    assert len(fig.axes) == 6 and fig.axes[0].get_title() == "a"
    assert fig.axes[4].texts[0].get_text().startswith("before:")
    with pytest.raises(ValueError, match="2 images"): P.plot_gallery([img_path, img_path], ["a"], ["b"])
