"""docs/gate_maps.png: what the valid-area mask and the learned gate select, on test images.

Trains `saganet` on the repeat-0 draw of each set (study settings), then shows, for a few test
images, the image, the mask M and the gate g (both at feature-map resolution, upsampled).
    .venv/bin/python scripts/gate_figure.py
"""
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from saganet.data import load_dataset, load_images  # noqa: E402
from saganet.preprocess import Preprocessing, channel_stats  # noqa: E402
from saganet.study import draw_split  # noqa: E402
from saganet.config import TrainConfig  # noqa: E402
from saganet.train import fit  # noqa: E402
from saganet.preprocess import prepare_images  # noqa: E402

SETS = [("lymphoma_iicbu", 20, ["CLL", "FL", "MCL"]), ("crc_val_he_7k_test70", 5, ["ADI", "STR", "TUM"])]


def main(data=Path("../shared/data"), out=Path("docs/gate_maps.png")):
    torch.set_num_threads(2)
    rows = []
    for name, shots, show in SETS:
        samples, classes = load_dataset(data / name)
        raw, samples, _ = load_images(samples)
        y = np.array([classes.index(s.label) for s in samples])
        cfg = TrainConfig(variant="saganet", seed=0)
        imgs, masks = prepare_images(raw, Preprocessing(mask=cfg.mask), names=[s.path for s in samples])
        train, test = draw_split(y, None, shots, 0)
        mean, std = channel_stats([imgs[i] for i in train])
        prep = Preprocessing(mean=mean, std=std, mask=cfg.mask)
        model, _ = fit([imgs[i] for i in train], [masks[i] for i in train], y[train], classes, cfg, prep,
                       log=lambda m: None, progress=False)
        for c in show:
            i = next(i for i in test if classes[y[i]] == c)
            with torch.no_grad():
                out_ = model(prep.to_tensor(imgs[i]), torch.from_numpy(masks[i])[None, None].float())
            pred = classes[int(out_["probs"].argmax())]
            rows.append((f"{name.split('_')[0]} {c} (pred {pred})", imgs[i], out_["mask"][0, 0].numpy(), out_["gate"][0, 0].numpy()))
    fig, axes = plt.subplots(len(rows), 3, figsize=(9, 2.6 * len(rows)))
    for ax, (title, im, m, g) in zip(axes, rows):
        ax[0].imshow(im)
        ax[0].set_title(title, fontsize=9)
        ax[1].imshow(m, vmin=0, vmax=1, cmap="gray")
        ax[1].set_title(f"mask M (mean {m.mean():.2f})", fontsize=9)
        ax[2].imshow(g, vmin=0, vmax=1, cmap="viridis")
        ax[2].set_title(f"gate g (mean {g.mean():.2f}, range {g.min():.2f}-{g.max():.2f})", fontsize=9)
        for a in ax:
            a.axis("off")
    fig.tight_layout()
    fig.savefig(out, dpi=80)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
