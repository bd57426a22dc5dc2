"""model=lstm on an image dataset: the images as pixel sequences (sgrad/data/pixels.py), and an LSTM that learns
to name their class at the last pixel through truncated BPTT and DNI."""

import numpy as np
import pytest

from conftest import make_cfg
from sgrad.config import ConfigError
from sgrad.data.datasets import Dataset
from sgrad.data.pixels import PixelStream
from sgrad.run import train_and_evaluate
from sgrad.run.build import check


def _tiny(n=12, side=4, classes=3):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (n, side, side, 1), dtype=np.uint8)
    y = rng.integers(0, classes, n).astype(np.int32)
    return Dataset("tiny", x, y, x[:5], y[:5], classes, "(made by the test)")


def _flat(a):
    """[S, B, T, ...] -> [B, S*T, ...]: the stream as each row reads it."""
    return np.swapaxes(a, 0, 1).reshape(a.shape[1], -1, *a.shape[3:])


def test_each_row_reads_whole_images_in_raster_order_with_the_class_at_the_last_step():
    data = _tiny()
    stream = PixelStream(data, batch=3, window=5, per_step=2, seed=0)
    assert stream.length == 8 and stream.per_row == 4 and stream.input_dim == 2 and stream.output_dim == 3
    c = stream.chunk(0, 16)  # 80 steps a row: one epoch (4 images of 8 steps) and then some
    assert c.x.shape == (16, 3, 5, 2) and c.y.shape == c.mask.shape == c.resets.shape == (16, 3, 5)
    x, y, mask, resets = map(_flat, (c.x, c.y, c.mask, c.resets))
    pixels = data.train_x.reshape(len(data.train_y), -1) / 255.0
    seen = []
    for row in range(3):
        for k in range(10):  # image k of the row: steps 8k .. 8k+7
            steps = slice(8 * k, 8 * k + 8)
            image = np.flatnonzero(np.all(np.isclose(pixels, x[row, steps].reshape(-1)), axis=1))
            assert len(image) == 1, (row, k)
            seen.append((k // 4, image[0]))  # (epoch, image)
            np.testing.assert_array_equal(resets[row, steps], [1] + [0] * 7)
            np.testing.assert_array_equal(mask[row, steps], [0] * 7 + [1])
            assert y[row, 8 * k + 7] == data.train_y[image[0]] and not y[row, steps][:7].any()
    # Each epoch every row reads its own images: 12 images over 3 rows x 4, none twice, reshuffled next epoch.
    first = sorted(i for e, i in seen if e == 0)
    assert first == list(range(12))
    order = lambda e: [i for k, (ep, i) in enumerate(seen) if ep == e and k % 10 < 4]
    assert order(0) != order(1)


def test_a_chunk_is_a_pure_function_of_where_it_starts():
    stream = PixelStream(_tiny(), batch=3, window=5, per_step=2, seed=0)
    whole, part = stream.chunk(0, 12), stream.chunk(7, 5)
    for a, b in zip((whole.x, whole.y, whole.mask, whole.resets), (part.x, part.y, part.mask, part.resets)):
        np.testing.assert_array_equal(a[7:], b)
    other = PixelStream(_tiny(), batch=3, window=5, per_step=2, seed=1).chunk(0, 12)
    assert not np.array_equal(other.x, whole.x)


def test_evaluation_reads_each_test_image_once_as_one_window():
    data = _tiny()
    x, y, mask, resets = PixelStream(data, batch=3, window=5, per_step=4, seed=0).eval_windows(rows=2)
    assert x.shape == (2, 2, 4, 4)  # 5 test images, 2 rows: 4 read, 2 windows of one image each
    assert mask.sum() == 4 and (resets[:, :, 0] == 1).all() and resets[:, :, 1:].sum() == 0
    np.testing.assert_array_equal(y[:, :, -1].reshape(-1), data.test_y[:4])  # window w, row r: image w·rows + r


def test_pixels_per_step_must_divide_an_image():
    with pytest.raises(ConfigError, match="dataset.pixels_per_step=3: allowed values are the divisors of the 16"):
        PixelStream(_tiny(), batch=3, window=5, per_step=3, seed=0)
    with pytest.raises(ConfigError, match="dataset.pixels_per_step"):
        check(make_cfg("model=lstm", "dataset=fashion_mnist", "trainer.bptt=4", "dataset.pixels_per_step=0"))
    check(make_cfg("model=lstm", "dataset=fashion_mnist", "trainer.bptt=4", "dataset.pixels_per_step=28"))


@pytest.mark.parametrize("mode", [pytest.param("backprop", marks=pytest.mark.slow), "dni"])
def test_an_lstm_learns_to_name_the_class_of_images_read_row_by_row(idx_dir, tmp_path, mode):
    # 8x8 images of 10 classes (conftest's prototypes) read 8 pixels a step: 8 steps an image, windows of 4, so
    # the class's evidence crosses a window boundary before the step that names it.
    cfg = make_cfg("model=lstm", "dataset=idx", f"dataset.dir={idx_dir}", "dataset.download=false",
                   f"mode={mode}", "dataset.pixels_per_step=8", "trainer.bptt=4", "trainer.batch_size=32",
                   "trainer.steps=600", "trainer.log_every=100", "trainer.eval_every=600", "model.hidden=32",
                   "sg.hidden_layers=0", "optim.lr=3e-3", "optim.schedule=constant", "log.grad_probe_every=0")
    summary = train_and_evaluate(cfg, tmp_path)
    assert summary["status"] == "completed" and summary["pixels_per_step"] == 8
    assert summary["test/accuracy"] > 0.5, summary  # chance is 0.1


@pytest.mark.slow
def test_the_recurrent_report_tables_test_accuracy_per_window(idx_dir, tmp_path):
    import json
    import subprocess
    import sys

    from conftest import ROOT
    for t in (2, 4):
        cfg = make_cfg("model=lstm", "dataset=idx", f"dataset.dir={idx_dir}", "dataset.download=false", "mode=dni",
                       "dataset.pixels_per_step=16", f"trainer.bptt={t}", "trainer.batch_size=16",
                       "trainer.steps=40", "trainer.log_every=20", "trainer.eval_every=20", "model.hidden=8",
                       "sg.hidden_layers=0", "log.grad_probe_every=20")
        train_and_evaluate(cfg, tmp_path / f"T{t}")
    res = subprocess.run([sys.executable, "scripts/report_recurrent.py", str(tmp_path), "--out", str(tmp_path / "r")],
                         capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert res.returncode == 0, res.stderr
    table = (tmp_path / "r" / "table.md").read_text().splitlines()
    assert table[0] == "# idx: test accuracy, 16 pixel(s) a step" and "| | T=2 | T=4 |" in table, table
    accuracy = json.loads((tmp_path / "T4" / "summary.json").read_text())["test/accuracy"]
    assert next(line for line in table if line.startswith("| DNI |")).endswith(f"| {accuracy:.3f} |"), table
    assert (tmp_path / "r" / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
