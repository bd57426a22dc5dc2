"""scripts/time_to_accuracy.py reads the crossing off a run's own logs and compares layouts by it (the runs
themselves: the slow accelerator-script test; the numbers: results/bench/time_to_accuracy.md)."""

import importlib.util
import json
import types
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "time_to_accuracy.py"
spec = importlib.util.spec_from_file_location("time_to_accuracy", SCRIPT)
tta = importlib.util.module_from_spec(spec)
spec.loader.exec_module(tta)


def write_run(run_dir: Path, rows: list[tuple[int, float, float]], wall: float = 9.0) -> None:
    """A run dir as sgrad-train leaves it: a train row (with the training seconds so far) and an eval row per point."""
    run_dir.mkdir(parents=True)
    with open(run_dir / "metrics.jsonl", "w") as f:
        for step, seconds, acc in rows:
            f.write(json.dumps({"step": step, "train/loss": 1.0, "watch/perf/train_seconds": seconds}) + "\n")
            f.write(json.dumps({"step": step, "test/accuracy": acc, "test/loss": 1.0}) + "\n")
    (run_dir / "summary.json").write_text(json.dumps({"wall_seconds": wall, "commit": "abc"}))


def test_the_crossing_is_the_first_evaluation_at_or_above_each_target_in_training_seconds(tmp_path):
    write_run(tmp_path / "r", [(20, 5.0, 0.80), (40, 6.0, 0.87), (60, 7.0, 0.86), (80, 8.0, 0.90)])
    got = tta.crossing(tmp_path / "r", [0.86, 0.87, 0.89, 0.95])
    assert got["hits"][0.86] == {"steps": 40, "seconds": 6.0}
    assert got["hits"][0.87] == {"steps": 40, "seconds": 6.0}
    assert got["hits"][0.89] == {"steps": 80, "seconds": 8.0}
    assert got["hits"][0.95] == {"steps": None, "seconds": None}
    assert got["first_chunk"] == 5.0 and got["best"] == 0.90 and got["pace"] == (8.0 - 5.0) / (80 - 20)


def test_the_report_gives_a_ratio_to_backprop_on_one_process_only_where_every_seed_reached_the_target(tmp_path):
    runs = tmp_path / "runs"
    for seed, (base, fast) in enumerate([(10.0, 5.0), (12.0, 7.0)]):
        write_run(runs / f"backprop_none_seed{seed}", [(20, base / 2, 0.80), (40, base, 0.90)])
        write_run(runs / f"backprop_data_seed{seed}", [(20, fast / 2, 0.80), (40, fast, 0.90)])
        # Reaches the lower target with both seeds, the higher with one only.
        write_run(runs / f"dni_pipeline_seed{seed}", [(20, 3.0, 0.86), (40, 6.0, 0.90 if seed == 0 else 0.87)])
    args = types.SimpleNamespace(workdir=runs, targets=[0.85, 0.89], out=tmp_path / "report", launch="processes",
                                 report_only=True, layers=8, batch=1024, steps=40, eval_every=20,
                                 schedule="cosine")
    layouts = [("backprop", "none"), ("backprop", "data"), ("dni", "pipeline")]
    tta.write(tta.collect(args, layouts, [0, 1]), layouts, args, ["--report-only"])
    table = (tmp_path / "report.md").read_text()
    assert "| backprop | none | 1 | 2/2 | 40 ± 0 | 11.0 ± 1.4 | 1.00 |" in table
    assert "| backprop | data | 2 | 2/2 | 40 ± 0 | 6.0 ± 1.4 | 1.83 |" in table  # 11 / 6
    assert table.split("| backprop | data |")[1].split("\n")[0].endswith("| 0.150 ± 0.035 |")  # (5-2.5)/20, (7-3.5)/20
    assert "| dni | pipeline | 2 | 1/2 | 40 | 6.0 | – |" in table  # one seed short: no ratio
    # At 85 %: backprop's 11.0 s on average (its first evaluation above it is its second) against dni's 3.0.
    assert "| dni | pipeline | 2/2 | 3.0 ± 0.0 | 3.67 |" in table
    assert "batch 1024, Adam 1e-3 decaying to 0 over the budget (cosine), at most 40 steps" in table
    assert (tmp_path / "report.png").stat().st_size > 0


def test_every_run_gets_the_same_schedule_over_the_same_budget(tmp_path):
    args = types.SimpleNamespace(layers=8, batch=4096, schedule="cosine", steps=700, eval_every=20)
    for mode, parallel in (("backprop", "none"), ("cdni", "pipeline")):
        cmd = tta.overrides(mode, parallel, 0, args, tmp_path)
        assert {"optim.schedule=cosine", "trainer.steps=700", "trainer.batch_size=4096"} <= set(cmd), cmd
