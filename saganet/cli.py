"""The `saganet` command: thin argument parsing over the modules that do the work."""
from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import replace

from .config import (BACKBONES, BACKENDS, CHUNK_TILES, EXPORT_FORMATS, INITS, MPP_RANGE, POOL_METHODS, PRECISIONS, PRETRAIN_METHODS,
                     SEMI_METHODS, TRAIN_DEFAULT_VARIANT, TRAIN_VARIANTS, VARIANT_NAMES, VARIANTS, MaskConfig, PredictConfig, PretrainConfig, TrainConfig)

# Only configuration is imported here: `saganet --help` must not pay for torch; each command imports
# what it runs.


def _int_at_least(low: int):
    """An argparse type: a whole number >= low, refused at the parser in the user's terms."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        return value
    return parse


def _number_in(low: float, high: float, low_open: bool = False, high_open: bool = False):
    """An argparse type: a number in [low, high] (ends excluded where open)."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
        if not ((low < value if low_open else low <= value) and (value < high if high_open else value <= high)):
            interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
            raise argparse.ArgumentTypeError(f"must be in {interval}, got {text}")
        return value
    return parse


POSITIVE = _int_at_least(1)
NON_NEGATIVE = _int_at_least(0)
FRACTION = _number_in(0.0, 1.0)
MPP = _number_in(*MPP_RANGE)


def _train_config(a) -> TrainConfig:
    return TrainConfig(variant=a.variant, backbone=a.backbone, epochs=a.epochs, crop=a.image_size, scale=a.scale,
                       seed=a.seed, batch_size=a.batch_size, crops_per_image=a.crops_per_image, lr=a.lr,
                       stain_norm=a.stain_norm, threads=a.threads,
                       val_fraction=getattr(a, "val_fraction", 0.0), patience=getattr(a, "patience", 8),
                       pretrained=a.pretrained or "", freeze_backbone=getattr(a, "freeze_backbone", False),
                       semi=a.semi or (SEMI_METHODS[0] if getattr(a, "unlabelled", None) and not getattr(a, "pool_methods", None) else ""),
                       unlabelled_ratio=a.unlabelled_ratio, pseudo_threshold=a.pseudo_threshold,
                       mask=MaskConfig(focus_relative=a.mask_focus_relative),
                       auto_candidates=tuple(a.auto_candidates), auto_folds=a.auto_folds, auto_se=a.auto_se)


def _add_train_args(p, study: bool = False):
    d = TrainConfig()
    if not study:
        p.add_argument("--variant", default=TRAIN_DEFAULT_VARIANT, choices=list(TRAIN_VARIANTS),
                       help="saganet (gate, mask, length head) or an ablation; baseline is the plain CNN; auto: "
                            "the one of --auto-candidates that cross-validation inside the labelled images prefers "
                            "(about 5x the training time)")
    else:
        p.set_defaults(variant=d.variant)
    p.add_argument("--backbone", default=d.backbone, choices=list(BACKBONES), help="network body")
    p.add_argument("--epochs", type=POSITIVE, default=d.epochs, help="passes over the labelled images")
    p.add_argument("--image-size", type=_int_at_least(16), default=d.crop, help="training crop edge in pixels after --scale; evaluation sees whole images")
    p.add_argument("--scale", type=_number_in(0.0, 16.0, low_open=True), default=d.scale, help="resize factor applied to every image first (1 = native resolution)")
    p.add_argument("--crops-per-image", type=POSITIVE, default=d.crops_per_image, help="random crops drawn per image per epoch")
    p.add_argument("--batch-size", type=_int_at_least(2), default=d.batch_size, help="crops per step; at least 2 (batch statistics)")
    p.add_argument("--lr", type=_number_in(0.0, 10.0, low_open=True), default=d.lr, help="peak learning rate (AdamW, warm-up then cosine)")
    p.add_argument("--seed", type=NON_NEGATIVE, default=d.seed, help="draw of shots, crops and initial weights")
    p.add_argument("--stain-norm", action="store_true", help="Reinhard stain normalisation to the training images' statistics")
    p.add_argument("--threads", type=NON_NEGATIVE, default=0, help="torch threads (0 = torch's default)")
    p.add_argument("--pretrained", default=None,
                   help="backbone weights: a `saganet pretrain` encoder, or torchvision-layout ResNet weights (.pth or .safetensors)")
    p.add_argument("--mask-focus-relative", type=FRACTION, default=MaskConfig().focus_relative,
                   help="valid-area mask: focus threshold as a share of the image's own 75th-percentile sharpness "
                        "(adapts to magnification); 0 = the fixed floor used before")
    p.add_argument("--unlabelled", nargs="+", default=[], metavar="PATH",
                   help="unlabelled images, slides or folders of them (anything `saganet pretrain` reads); "
                        + ("added to every repeat's pool" if study else "train on them semi-supervised (--semi)"))
    p.add_argument("--semi", default=None, choices=list(SEMI_METHODS),
                   help="how to learn from unlabelled images: selftrain (teacher calls whole images, student learns "
                        f"from the confident ones) or fixmatch (with --unlabelled and no choice: {SEMI_METHODS[0]})")
    p.add_argument("--unlabelled-ratio", type=POSITIVE, default=d.unlabelled_ratio,
                   help="unlabelled crops per labelled crop in a training step")
    p.add_argument("--pseudo-threshold", type=FRACTION, default=d.pseudo_threshold,
                   help="confidence for a pseudo-label; 0 = the head's default: softmax 0.95, length gap 0.5")
    p.add_argument("--auto-candidates", nargs="+", default=list(d.auto_candidates), choices=list(VARIANTS),
                   help="variants that `auto` chooses among, in order of preference (simplest first)")
    p.add_argument("--auto-folds", type=_int_at_least(2), default=d.auto_folds,
                   help="folds of `auto`'s cross-validation inside the labelled images (at most the smallest class)")
    p.add_argument("--auto-se", type=_number_in(0.0, 10.0), default=d.auto_se,
                   help="`auto` takes the first candidate whose mean fold score is within this many standard "
                        "errors of the best (the one-standard-error rule); 0 = the best")


class HelpWithDefaults(argparse.ArgumentDefaultsHelpFormatter):
    """Every option's help ends with its default, unless there is none to show (None, a flag's False)."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False or action.default is argparse.SUPPRESS:  # not `in`: 0 == False
            return action.help
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    fmt = HelpWithDefaults
    ap = argparse.ArgumentParser(prog="saganet", description=__doc__, formatter_class=fmt)
    sub = ap.add_subparsers(dest="command", required=True)
    add = lambda name, help: sub.add_parser(name, help=help, description=help, formatter_class=fmt)  # noqa: E731
    i = add("info", "versions, native parts, backends")
    i.add_argument("--bundle", default=None, help="also say which inference backends can run this bundle here")

    t = add("train", "train a model on an image folder or manifest")
    t.add_argument("data", help="ImageFolder root (<root>/<class>/<image>), a folder with manifest.csv, or a manifest CSV")
    t.add_argument("--out", required=True, help="run directory to write (resumes if it holds a checkpoint)")
    t.add_argument("--shots", type=POSITIVE, default=None, help="use only N images per class (drawn with --seed); none = all")
    t.add_argument("--val-fraction", type=_number_in(0.0, 1.0, high_open=True), default=0.2, help="share of training images held out for early stopping (0 = fixed schedule)")
    t.add_argument("--patience", type=POSITIVE, default=8, help="epochs without validation gain before stopping")
    t.add_argument("--freeze-backbone", action="store_true", help="with --pretrained: train only the gate and head")
    t.add_argument("--mask-dir", default=None, help="folder of user masks: <mask-dir>/<class>/<image>.png, non-zero = valid")
    t.add_argument("--skip-bad", action="store_true", help="report and skip unreadable images (labelled or not) instead of stopping")
    t.add_argument("--pretrain-unlabelled", action="store_true",
                   help="first pretrain the backbone on the --unlabelled sources (SimCLR, RUN/encoder.safetensors)")
    _add_train_args(t)

    e = add("eval", "evaluate a run on labelled images")
    e.add_argument("run", help="training run directory (saganet train --out)")
    e.add_argument("data", help="labelled images, laid out as for train")
    e.add_argument("--out", default=None, help="output folder (none: RUN/eval)")
    e.add_argument("--skip-bad", action="store_true", help="report and skip unreadable images instead of stopping")
    e.add_argument("--mask-dir", default=None, help="user masks, laid out as for train")
    e.add_argument("--exclude-train", action="store_true", help="leave out the images the run trained on (from RUN/metrics.json)")

    s = add("study", "small-sample protocol: shots x repeats x variants")
    s.add_argument("data", help="labelled images, laid out as for train")
    s.add_argument("--out", required=True, help="study folder (resumes: finished runs are kept)")
    s.add_argument("--shots", type=POSITIVE, nargs="+", default=[10, 20], help="labelled images per class")
    s.add_argument("--repeats", type=POSITIVE, default=5, help="draws per shot count")
    s.add_argument("--first-repeat", type=NON_NEGATIVE, default=0,
                   help="number of the first draw: fresh draws beside an earlier study's (draw r is seeded with r)")
    s.add_argument("--variants", nargs="+", default=["saganet", "baseline", "no-gate", "no-length", "classic"],
                   choices=list(VARIANT_NAMES), help="models to compare; classic is the texture pipeline")
    s.add_argument("--inits", nargs="+", default=["scratch"], choices=list(INITS),
                   help="backbone initialisations per deep variant; finetune/frozen use --pretrained")
    s.add_argument("--pool-methods", nargs="+", default=[], choices=list(POOL_METHODS),
                   help="also run each deep variant learning from an unlabelled pool split off the non-labelled "
                        "images: in-domain pretraining, semi-supervised training, or both. Every row then uses "
                        "the same pool/test split")
    s.add_argument("--pool-split", action="store_true",
                   help="use the pool/test split of --pool-methods without a pool method: labelled-only rows "
                        "on the same draws and test sets as a pooled study's")
    s.add_argument("--unlabelled-fraction", type=_number_in(0.0, 1.0, True, True), default=0.5,
                   help="share of the non-labelled images that go to the pool; the rest is the test set")
    s.add_argument("--pretrain-steps", type=POSITIVE, default=150, help="SimCLR steps of in-domain pretraining per repeat")
    _add_train_args(s, study=True)

    d = PretrainConfig()
    p = add("pretrain", "self-supervised pretraining of the backbone on unlabelled images and slides")
    p.add_argument("sources", nargs="+", help="images, slides (.svs, .ndpi, pyramid TIFF, ...) or folders of them")
    p.add_argument("--out", required=True, help="encoder file to write (.safetensors); its card goes beside it (.json)")
    p.add_argument("--method", default=d.method, choices=list(PRETRAIN_METHODS), help="self-supervised objective")
    p.add_argument("--backbone", default=d.backbone, choices=list(BACKBONES), help="network body")
    p.add_argument("--epochs", type=POSITIVE, default=d.epochs, help="passes over the tile bank")
    p.add_argument("--tile-size", type=_int_at_least(16), default=d.tile_size, help="tile edge in pixels; views are cropped from tiles")
    p.add_argument("--crop", type=_int_at_least(16), default=d.crop, help="view edge fed to the network")
    p.add_argument("--max-tiles", type=POSITIVE, default=d.max_tiles, help="tiles in the bank")
    p.add_argument("--batch-size", type=_int_at_least(2), default=d.batch_size, help="tiles per step (two views each)")
    p.add_argument("--lr", type=_number_in(0.0, 10.0, low_open=True), default=d.lr, help="peak learning rate")
    p.add_argument("--seed", type=NON_NEGATIVE, default=d.seed, help="draw of tiles, views and initial weights")
    p.add_argument("--threads", type=NON_NEGATIVE, default=0, help="torch threads (0 = torch's default)")
    p.add_argument("--snapshot-every", type=NON_NEGATIVE, default=0, help="also write OUT-epochNNN.safetensors every N epochs (0 = never)")

    x = add("export", "write a model bundle (manifest, weights, ONNX, AOTInductor) from a training run")
    x.add_argument("run", help="training run directory (saganet train --out), or a bundle to re-export on this machine")
    x.add_argument("--out", required=True, help="bundle directory to create")
    x.add_argument("--mpp", type=MPP, default=None,
                   help="microns per pixel of the images the run was trained on (before --scale); CRC-VAL-HE-7K: 0.5. "
                        "Required for a run; a bundle keeps its own")
    x.add_argument("--tile-size", type=_int_at_least(16), default=None, help="tile edge in pixels the bundle classifies (none: 224, or the bundle's)")
    x.add_argument("--formats", nargs="+", default=list(EXPORT_FORMATS), choices=list(EXPORT_FORMATS), help="compiled forms to include")
    x.add_argument("--card", default=None, help="model card (Markdown file) to include as card.md")
    x.add_argument("--precision", default=PRECISIONS[0], choices=list(PRECISIONS),
                   help="of the AOTInductor package (ONNX is always float32); bfloat16 is faster on CPUs with "
                        "AVX512-BF16/AMX and agrees with float32 less closely")

    d = PredictConfig()
    r = add("predict", "whole-slide prediction: slide call, tile table, heatmaps, QuPath GeoJSON")
    r.add_argument("bundle", help="model bundle directory (saganet export)")
    r.add_argument("slides", nargs="+", help="slides (anything OpenSlide reads) or plain PNG/JPEG/TIFF images")
    r.add_argument("--out", required=True, help="output folder; one subfolder per slide and summary.json")
    r.add_argument("--backend", default="auto", choices=("auto", *BACKENDS),
                   help="inference backend; auto times them once per model and machine and remembers the fastest")
    r.add_argument("--retime-backend", action="store_true", help="with --backend auto: time the backends again")
    r.add_argument("--batch-size", type=_int_at_least(1), default=d.batch_size, help="tiles per network call")
    r.add_argument("--mpp", type=MPP, default=None, help="level-0 microns per pixel, for slides that do not record it")
    r.add_argument("--workers", type=POSITIVE, default=d.workers, help="tile reading and preprocessing threads")
    r.add_argument("--threads", type=NON_NEGATIVE, default=0, help="inference threads (0 = the backend's default)")
    r.add_argument("--min-tissue", type=FRACTION, default=d.min_tissue, help="tissue share of a tile on the thumbnail to predict it")
    r.add_argument("--max-tiles", type=POSITIVE, default=d.max_tiles, help="refuse a slide that needs more tiles")
    r.add_argument("--cluster", default=None, metavar="ADDRESS",
                   help="classify tiles on a Dask cluster: local:N (N worker processes here) or a scheduler such as "
                        "tcp://HOST:8786 (docs/scaling.md); workers must see the slides (and the bundle) at the same paths")
    r.add_argument("--cluster-upload-bundle", action="store_true",
                   help="with --cluster: send the bundle's files to the workers instead of loading it from its path")
    r.add_argument("--chunk-tiles", type=POSITIVE, default=CHUNK_TILES, help="with --cluster: tiles per task")

    v = add("view", "the slide viewer, read-only, over the results of `saganet predict` (in a browser)")
    v.add_argument("results", help="a `saganet predict --out` folder")
    v.add_argument("--host", default="127.0.0.1", help="address to bind (loopback only unless changed)")
    v.add_argument("--port", type=_int_at_least(1), default=8001, help="port to listen on")
    v.add_argument("--token", default=None, help="bearer token the page asks for once (also from $SAGANET_TOKEN)")

    sub.add_parser("serve", add_help=False, help="the HTTP server (same as python -m saganet.serve; saganet serve --help)")
    return ap


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["serve"]:  # every option of the server is its own parser's
        from .serve.__main__ import main as serve_main

        return serve_main(argv[1:], prog="saganet serve")
    args = build_parser().parse_args(argv)
    try:
        if args.command == "info":
            from .info import info_text

            print(info_text())
            if args.bundle:
                from .info import backends_text

                print(f"backends for {args.bundle}:\n{backends_text(args.bundle)}")
        elif args.command == "train":
            from .train import train_run

            m = train_run(args.data, args.out, _train_config(args), shots=args.shots, mask_dir=args.mask_dir,
                          skip_bad=args.skip_bad, unlabelled=args.unlabelled, pretrain_unlabelled=args.pretrain_unlabelled)
            hist = m["history"]
            summary = {"train_seconds": m["train_seconds"], "train_images": m["train_images"],
                       "val_images": m["val_images"], "skipped_files": len(m["skipped_files"]),
                       "epochs": len(hist), "final_loss": hist[-1]["loss"] if hist else None}
            if m["val_images"]:
                summary["best_val_balanced_accuracy"] = max(h["val_balanced_accuracy"] for h in hist)
            print(json.dumps(summary, indent=2))
        elif args.command == "eval":
            from .evaluate import eval_run

            eval_run(args.run, args.data, args.out, skip_bad=args.skip_bad, exclude_train=args.exclude_train,
                     mask_dir=args.mask_dir)
        elif args.command == "study":
            from .study import run_study

            summary = run_study(args.data, args.out, args.shots, args.repeats, args.variants,
                                replace(_train_config(args), val_fraction=0.0), inits=args.inits,
                                pool_methods=args.pool_methods, unlabelled_fraction=args.unlabelled_fraction,
                                unlabelled=args.unlabelled, pretrain_steps=args.pretrain_steps,
                                pool_split=args.pool_split, first_repeat=args.first_repeat)
            print(open(f"{args.out}/results.md").read())
        elif args.command == "pretrain":
            from .pretrain import pretrain

            cfg = PretrainConfig(method=args.method, backbone=args.backbone, epochs=args.epochs, tile_size=args.tile_size,
                                 crop=args.crop, max_tiles=args.max_tiles, batch_size=args.batch_size, lr=args.lr,
                                 seed=args.seed, threads=args.threads)
            card = pretrain(args.sources, args.out, cfg, snapshot_every=args.snapshot_every)
            print(json.dumps({k: card[k] for k in ("method", "backbone", "tiles", "steps", "train_hours")} |
                             {"skipped": len(card["skipped"])}, indent=2))
        elif args.command == "export":
            from .export import export_bundle

            card = open(args.card, encoding="utf-8").read() if args.card else None
            m = export_bundle(args.run, args.out, args.mpp, args.tile_size, tuple(args.formats), card=card,
                              precision=args.precision)
            print(json.dumps({"bundle": args.out, "classes": m["class_names"], "tile_size": m["tile_size"], "mpp": m["mpp"],
                              "files": sorted(m["files"])}, indent=2))
        elif args.command == "predict":
            from .engine import Engine
            from .slide.pipeline import predict_slides

            cfg = PredictConfig(batch_size=args.batch_size, workers=args.workers, mpp=args.mpp, min_tissue=args.min_tissue,
                                max_tiles=args.max_tiles,
                                progress=sys.stderr.isatty())
            engine = Engine(args.bundle, backend=args.backend, threads=args.threads or None, retime=args.retime_backend)
            print(f"model {engine.bundle.model_id}: {engine.choice}", file=sys.stderr)
            log = lambda m: print(m, file=sys.stderr)  # noqa: E731
            if args.cluster:
                from .slide.cluster import Cluster

                with Cluster(args.cluster, args.bundle, engine.backend, upload=args.cluster_upload_bundle,
                             chunk_tiles=args.chunk_tiles, log=log) as cluster:
                    summary = predict_slides(engine, args.slides, args.out, cfg, log=log, cluster=cluster)
            else:
                summary = predict_slides(engine, args.slides, args.out, cfg, log=log)
            print(f"summary: {args.out}/summary.json; per slide: report.json, tiles.csv, tiles.geojson, heatmap_<class>.png")
            if summary["failed"]:
                print(f"{len(summary['failed'])} of {len(args.slides)} slide(s) failed: {', '.join(summary['failed'])}",
                      file=sys.stderr)
                return 1
        elif args.command == "view":
            import uvicorn

            from .serve.viewer import create_viewer_app

            log = lambda m: print(f"saganet view: {m}", file=sys.stderr, flush=True)  # noqa: E731
            app = create_viewer_app(args.results, args.token or os.environ.get("SAGANET_TOKEN"), log)
            log(f"viewer of {args.results} at http://{args.host}:{args.port}/")
            from .serve.http import header_deadline_protocol

            uvicorn.run(app, host=args.host, port=args.port, log_level="warning", http=header_deadline_protocol(10.0))
    except KeyboardInterrupt:
        print("interrupted; finished epochs/runs are saved and the command resumes where it stopped", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, OSError) as e:
        print(f"saganet {args.command}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
