"""Table and plot of the pretraining learning curves (docs/pretrain/probe_curve.json, written by
scripts/pretrain_curve.sh): linear-probe test accuracy on lymphoma against pretraining hours and
against unlabelled tiles. Writes docs/pretrain/curve.md and docs/pretrain/curve.png."""
import json
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

DOCS = Path(__file__).resolve().parents[1] / "docs" / "pretrain"
rows = json.loads((DOCS / "probe_curve.json").read_text())
main = json.loads((DOCS / "lymph-pool-simclr.json").read_text())
sec_per_epoch = main["train_seconds"] / len(main["history"])


def label(enc: str) -> tuple[str, float | None, int | None]:
    name = Path(enc).stem
    m = re.search(r"epoch(\d+)", name)
    if m:  # a snapshot of the study's encoder: hours pro rata of its epochs
        e = int(m.group(1))
        return f"lymph-pool, epoch {e}/30", e * sec_per_epoch / 3600, main["tiles"]
    card = json.loads((Path(enc).with_suffix(".json")).read_text())
    return name, card["train_hours"], card["tiles"]


lines = ["| encoder | tiles | pretraining h | probe test 10 shots | probe test 20 shots | CV in shots 20 |", "|---|---|---|---|---|---|"]
table = {}
for r in rows:
    table.setdefault(r["encoder"], {})[r["shots"]] = r
for enc, by in table.items():
    name, hours, tiles = label(enc)
    lines.append(f"| {name} | {tiles} | {hours:.3f} | {by[10]['test_mean']:.3f} +- {by[10]['test_std']:.3f} | "
                 f"{by[20]['test_mean']:.3f} +- {by[20]['test_std']:.3f} | {by[20]['cv_in_shots_mean']:.3f} |")
(DOCS / "curve.md").write_text("\n".join(lines) + "\n")

fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
snaps = [(label(e)[1], by[20]["test_mean"], by[10]["test_mean"]) for e, by in table.items() if "lymph-pool" in e]
snaps.sort()
a.plot([s[0] for s in snaps], [s[1] for s in snaps], "o-", label="20 shots")
a.plot([s[0] for s in snaps], [s[2] for s in snaps], "s-", label="10 shots")
a.set_xlabel("pretraining hours (2 CPU cores)")
a.set_ylabel("linear probe, balanced accuracy (test)")
a.set_title("lymph-pool encoder, snapshots")
a.legend()
tiles = [(json.loads(Path(e).with_suffix(".json").read_text())["tiles"], by[20]["test_mean"], by[10]["test_mean"])
         for e, by in table.items() if "/tiles" in e]
tiles.sort()
b.plot([t[0] for t in tiles], [t[1] for t in tiles], "o-", label="20 shots")
b.plot([t[0] for t in tiles], [t[2] for t in tiles], "s-", label="10 shots")
for e, by in table.items():
    if "transductive" in e:
        b.axhline(by[20]["test_mean"], ls="--", c="C0", lw=1, label="in-domain tiles, 20 shots (diagnostic)")
        b.axhline(by[10]["test_mean"], ls="--", c="C1", lw=1, label="in-domain tiles, 10 shots (diagnostic)")
b.set_xlabel("unlabelled tiles (other organs + slides), 150 steps each")
b.set_title("tiles")
b.legend(fontsize=7)
fig.tight_layout()
fig.savefig(DOCS / "curve.png", dpi=100)
print((DOCS / "curve.md").read_text())
