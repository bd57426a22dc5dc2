#!/usr/bin/env bash
# What sg_share does to learning: DNI, the paper's FCN (4 x 256) and SG model (with batch norm) on Fashion-MNIST,
# two modules of two layers (model.dni_every=2) pipelined over two CPU devices, M_1's regression all on device 0 (sg_share=0) or half on each device
# (sg_share=0.5 or 0.55, the split that balances the two devices in the throughput benchmark: each part normalised over its own rows). Test accuracy at the end -> table.md.
set -euo pipefail
cd "$(dirname "$0")/../../.."
out=results/bench/sg_share_accuracy
export XLA_FLAGS="--xla_force_host_platform_device_count=2"
for seed in ${SEEDS:-0 1}; do
  for share in ${SHARES:-0 0.5 0.55}; do
    sgrad-train +exp=fashion_mnist_dni model.dni_every=2 parallel=pipeline sg_share=$share seed=$seed \
      trainer.steps=${STEPS:-1500} trainer.batch_size=256 trainer.progress=false \
      hydra.run.dir=outputs/sg_share_accuracy/share${share}_seed${seed}
  done
done
python - "$out" <<'PY'
import json, subprocess, sys, pathlib, statistics, platform
out = pathlib.Path(sys.argv[1])
rows = {}
for s in sorted(pathlib.Path("outputs/sg_share_accuracy").glob("share*_seed*/summary.json")):
    share = s.parent.name.split("_")[0].removeprefix("share")
    rows.setdefault(share, []).append(json.loads(s.read_text())["test/accuracy"])
commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.machine())
lines = ["# sg_share and test accuracy (DNI, FCN 4x256, Fashion-MNIST, two modules on two CPU devices)", "",
         f"Command: `bash {out}/commands.sh`. Commit: {commit}. Machine: {cpu}.", "",
         "| sg_share | seeds | test accuracy (mean ± std) | per seed |", "|---|---|---|---|"]
for share, accs in rows.items():
    sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
    lines.append(f"| {share} | {len(accs)} | {statistics.mean(accs):.4f} ± {sd:.4f} | "
                 + ", ".join(f"{a:.4f}" for a in accs) + " |")
(out / "table.md").write_text("\n".join(lines) + "\n")
print("wrote", out / "table.md")
PY
