"""scripts/report.py on a real tiny multirun the test makes (2 modes x 2 depths x 2 seeds, joblib launcher)."""

import csv
import json
import statistics
import subprocess
import sys
from pathlib import Path

import matplotlib.image as mpimg
import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, idx_dir):
    out = tmp_path_factory.mktemp("sweep") / "multirun"
    cmd = [sys.executable, "-m", "sgrad.cli", "-m", "dataset=idx", f"dataset.dir={idx_dir}",
           "mode=backprop,cdni", "model.layers=2,3", "seed=0,1", "model.width=16", "trainer.steps=30",
           "trainer.batch_size=32", "trainer.log_every=10", "trainer.eval_every=10", "trainer.progress=false",
           "trainer.eval_batch_size=128", "optim.lr=3e-3", "optim.schedule=constant",
           "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", f"hydra.sweep.dir={out}"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-3000:]
    return out


def _run_report(sweep, *extra):
    res = subprocess.run([sys.executable, "scripts/report.py", str(sweep), *extra], capture_output=True,
                         text=True, timeout=300, cwd=ROOT)
    assert res.returncode == 0, res.stderr
    return sweep / "report"


@pytest.mark.slow
def test_table_has_modes_by_depths_with_mean_and_std(sweep, tmp_path):
    paper = tmp_path / "paper.yaml"
    paper.write_text("backprop: {2: 1.5, 3: 1.25}\n")
    report = _run_report(sweep, "--paper", str(paper))
    text = (report / "table.md").read_text()
    lines = text.split("\n\n")[0].splitlines()
    assert lines[0] == "| test error (%) | 2 layers | 3 layers |"
    rows = {l.split("|")[1].strip(): [c.strip() for c in l.split("|")[2:-1]] for l in lines[2:]}
    assert set(rows) == {"backprop", "cdni", "backprop (paper)"}
    assert rows["backprop (paper)"] == ["1.5", "1.25"]
    summaries = [json.loads(p.read_text()) for p in sweep.glob("*/summary.json")]
    assert len(summaries) == 8
    for mode in ("backprop", "cdni"):
        for col, depth in enumerate((2, 3)):
            errs = [100 * s["test/error"] for s in summaries if s["mode"] == mode and s["layers"] == depth]
            assert len(errs) == 2
            assert rows[mode][col] == f"{statistics.mean(errs):.2f} ± {statistics.stdev(errs):.2f}"
    gap = [l for l in text.split("\n\n")[1].splitlines() if l.startswith("| cdni |")][0]
    for col, depth in enumerate((2, 3)):
        mean = lambda m: statistics.mean(100 * s["test/error"] for s in summaries
                                         if s["mode"] == m and s["layers"] == depth)
        assert gap.split("|")[2 + col].strip() == f"{mean('cdni') - mean('backprop'):+.2f}"


@pytest.mark.slow
def test_curves_png_and_csv_round_trip(sweep):
    report = _run_report(sweep)
    img = mpimg.imread(report / "curves.png")
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 200
    with open(report / "runs.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 8
    for row in rows:
        summary = json.loads((sweep / row["run"] / "summary.json").read_text())
        assert float(row["test/error"]) == summary["test/error"]
        assert (row["mode"], int(row["layers"]), int(row["seed"])) == (summary["mode"], summary["layers"],
                                                                         summary["seed"])
    diag = mpimg.imread(report / "diagnostics.png")  # cDNI's SG cosine, probed at the end of each run
    assert diag.ndim == 3 and diag.shape[1] > 200
    prov = (report / "provenance.md").read_text()
    assert "sgrad-train -m" in prov and "mode=backprop,cdni" in prov and "Commit:" in prov


def test_diagnostics_plot_has_a_panel_per_signal_the_runs_logged(tmp_path):
    import report
    run = lambda row, layers, diag: {"row": row, "layers": layers, "diagnostics": diag}
    runs = [run("dgl", 3, {"aux/accuracy/1": [(10, 0.5), (20, 0.7)], "aux/accuracy/2": [(10, 0.4), (20, 0.6)]}),
            run("ddg", 3, {"ddg/cosine/1": [(20, 0.9)]}), run("backprop", 3, {})]
    assert report.plot_diagnostics(runs, tmp_path / "d.png")
    img = mpimg.imread(tmp_path / "d.png")
    assert img.shape[1] > 1.5 * img.shape[0]  # two panels side by side
    assert not report.plot_diagnostics([run("backprop", 3, {})], tmp_path / "none.png")
    assert not (tmp_path / "none.png").exists()


def test_every_module_of_a_mode_has_its_own_line_in_the_diagnostics_plot():
    import report
    rows = ["cdni", "dgl"]
    styles = [tuple(sorted(report.series_style(rows, row, i).items())) for row in rows for i in (1, 2, 3)]
    assert len(set(styles)) == len(styles)
    # One colour per mode, so a mode's modules read as one family.
    assert {report.series_style(rows, "dgl", i)["color"] for i in (1, 2, 3)} == {"C1"}


@pytest.mark.slow
def test_a_partly_finished_sweep_names_its_missing_jobs_and_the_cells_short_of_seeds(sweep, tmp_path):
    import shutil
    part = tmp_path / "part"
    shutil.copytree(sweep, part)
    lost = json.loads((part / "3" / "summary.json").read_text())
    (part / "3" / "summary.json").unlink()  # as if job 3 had been interrupted before it finished
    text = (_run_report(part) / "table.md").read_text()
    missing = [line for line in text.splitlines() if line.startswith("Missing from the sweep")]
    assert len(missing) == 1 and "3 (" in missing[0] and "0 (" not in missing[0], text
    row = [l for l in text.split("\n\n")[0].splitlines() if l.startswith(f"| {lost['mode']} |")][0]
    column = 1 + (2, 3).index(lost["layers"])
    assert row.split("|")[1 + column].strip().endswith("(n=1)"), row
