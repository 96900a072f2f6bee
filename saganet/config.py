"""Configuration as plain data: every knob of the mask, the model, training, pretraining and slide
prediction, the named variants and backbones, and the names the CLI offers. Nothing here imports
torch, so `saganet --help` and the server's argument parsing stay fast."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

# Microns per pixel a scanned slide can have: 0.05 (beyond any optical scanner) to 100 (a 0.1x
# overview). Outside it a value is a typo or hostile, and tile sizes overflow or explode.
MPP_RANGE = (0.05, 100.0)


def mpp_problem(value) -> str | None:
    """Why `value` is not a usable microns-per-pixel value, or None when it is."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"must be a number of microns per pixel, got {value!r}"
    if not MPP_RANGE[0] <= value <= MPP_RANGE[1]:  # also refuses nan and inf
        return f"must be {MPP_RANGE[0]}..{MPP_RANGE[1]} microns per pixel, got {value:g}"
    return None


@dataclass(frozen=True)
class MaskConfig:
    """Knobs of `valid_area_mask`. Distances are in pixels of the image the mask is computed on."""

    tissue_od: float = 0.3  # summed RGB optical density below this is glass or fat
    focus_window: int = 15  # window (px) over which gradient energy is averaged
    focus_min: float = 0.004  # mean squared gradient (grey in [0,1]) above this is always in focus
    focus_relative: float = 0.1  # threshold = this x the image's 75th percentile of tissue energy, if lower; 0 = fixed focus_min
    focus_floor: float = 0.00025  # ... but never below this (focus_min / 16)
    nuclei_threshold: str | float = 0.05  # haematoxylin OD threshold: a number, or "otsu"
    cell_window: int = 21  # window (px) over which nuclear density is measured
    cell_density_min: float = 0.05  # fraction of nuclear pixels in the window needed to count as cellular
    min_region: int = 64  # connected valid/invalid regions smaller than this (px) are cleaned up

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict | None) -> "MaskConfig":
        d = dict(d or {})
        if "focus_min" in d and "focus_relative" not in d:  # written before the adaptive threshold: fixed floor
            d["focus_relative"] = 0.0
        return cls(**d)


@dataclass(frozen=True)
class LossConfig:
    kind: str = "margin"  # "margin" (on lengths) or "ce" (softmax cross-entropy on logits)
    m_plus: float = 0.9  # the true class's length is pushed above this
    m_minus: float = 0.1  # other classes' lengths are pushed below this
    lam: float = 0.5  # down-weights the absent-class term so early training does not shrink every length
    agreement_weight: float = 0.1  # weight of the gate/mask agreement term; 0 switches it off
    agreement: str = "outside"  # "outside": penalise gate opening on invalid areas; "bce": BCE(g, M) everywhere
    label_smoothing: float = 0.0  # for "ce" only

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class BackboneConfig:
    block: str = "basic"  # "basic" (ResNet-18/34) or "bottleneck" (ResNet-50)
    layers: tuple[int, ...] = (1, 1, 1, 1)
    widths: tuple[int, ...] = (32, 64, 128, 256)
    stem: str = "small"  # "small": 3x3 conv stride 2; "imagenet": 7x7 stride 2 + max-pool (torchvision)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "BackboneConfig":
        d = dict(d)
        d["layers"] = tuple(d.get("layers", cls.layers))
        d["widths"] = tuple(d.get("widths", cls.widths))
        return cls(**d)


# Named presets: plain data, like timm's model configs.


BACKBONES: dict[str, BackboneConfig] = {
    "resnet-tiny": BackboneConfig(layers=(1, 1, 1, 1), widths=(32, 64, 128, 256)),
    "resnet-small": BackboneConfig(layers=(2, 2, 2, 2), widths=(32, 64, 128, 256)),
    "resnet18": BackboneConfig(layers=(2, 2, 2, 2), widths=(64, 128, 256, 512), stem="imagenet"),
    "resnet34": BackboneConfig(layers=(3, 4, 6, 3), widths=(64, 128, 256, 512), stem="imagenet"),
    "resnet50": BackboneConfig(block="bottleneck", layers=(3, 4, 6, 3), widths=(64, 128, 256, 512), stem="imagenet"),
}


@dataclass(frozen=True)
class ModelConfig:
    num_classes: int = 3
    backbone: str | dict = "resnet-tiny"
    use_gate: bool = True  # learned spatial gate g
    use_mask: bool = True  # valid-area mask M multiplies the gate in pooling
    mask_floor: float = 0.05  # weight left on invalid areas (0 = hard mask)
    head: str = "length"  # "length" (squashed class vectors) or "linear"
    capsule_dim: int = 16  # D, dimension of each class vector
    dropout: float = 0.2
    loss: LossConfig = field(default_factory=LossConfig)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        d = dict(d)
        d["loss"] = LossConfig(**d.get("loss", {}))
        return cls(**d)


# One flag picks a variant; each is a set of switches over the same backbone and training budget.
VARIANTS: dict[str, dict] = {
    "saganet": dict(use_gate=True, use_mask=True, head="length", loss=LossConfig(kind="margin")),
    "baseline": dict(use_gate=False, use_mask=False, head="linear", loss=LossConfig(kind="ce", agreement_weight=0.0)),
    "no-gate": dict(use_gate=False, use_mask=True, head="length", loss=LossConfig(kind="margin", agreement_weight=0.0)),
    "no-length": dict(use_gate=True, use_mask=True, head="linear", loss=LossConfig(kind="ce")),
    "no-mask": dict(use_gate=True, use_mask=False, head="length", loss=LossConfig(kind="margin", agreement_weight=0.0)),
}


# "auto": the variant chosen by cross-validation inside the labelled images (select.py);
# "classic": the texture pipeline (classic.py), in studies only.
TRAIN_VARIANTS = (*VARIANTS, "auto")
# What `saganet train` trains unless told: the safe default of issue 12. SagaNet lost to the baseline
# on colorectal (2-9 points) and lymphoma (2-5), and `auto` stayed within a point of the baseline on
# every set measured (docs/results.md, Part 0). TrainConfig.variant stays "saganet": fit builds one
# concrete variant, and `auto` is resolved before it (select.py).
TRAIN_DEFAULT_VARIANT = "auto"
VARIANT_NAMES = (*TRAIN_VARIANTS, "classic")


# Registries of names the CLI offers as choices (the objects behind them live with their code).
BACKENDS = ("tensorrt", "native", "aoti", "onnxruntime", "torch")  # saganet/engine/<name>_backend.py
PRETRAIN_METHODS = ("simclr", "byol")  # saganet/pretrain.py
SEMI_METHODS = ("selftrain", "fixmatch")  # selftrain.py wraps train.fit; semi.py trains inside it
# study.py; "pretrain+frozen": the pool-pretrained encoder kept fixed, only gate and head trained
POOL_METHODS = ("selftrain", "pretrain", "pretrain+selftrain", "fixmatch", "pretrain+fixmatch", "pretrain+frozen")
PRECISIONS = ("float32", "bfloat16")  # of the AOTInductor package (bundle.export_aoti)
EXPORT_FORMATS = ("onnx", "aoti")
INITS = ("scratch", "finetune", "frozen")  # study.py: how a run's backbone starts


@dataclass(frozen=True)
class TrainConfig:
    variant: str = "saganet"
    backbone: str = "resnet-tiny"
    epochs: int = 20
    batch_size: int = 32
    crop: int = 64  # training crop edge (px, after scaling); evaluation sees the whole image
    crops_per_image: int = 16  # random crops drawn per training image per epoch
    scale: float = 1.0  # image resize factor before cropping (1.0 = native resolution)
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_epochs: int = 2
    seed: int = 0
    val_fraction: float = 0.0  # >0: hold out this share of the training images for early stopping
    patience: int = 8  # epochs without validation improvement before stopping
    hed_sigma: float = 0.05  # HED stain-jitter strength (0 = off)
    stain_norm: bool = False  # Reinhard normalisation to the training set's LAB statistics
    threads: int = 0  # torch threads (0 = leave torch's default)
    pretrained: str = ""  # backbone weights to start from: a `saganet pretrain` encoder or torchvision-layout file
    freeze_backbone: bool = False  # train only gate and head on a pretrained backbone (BN statistics still adapt)
    model_overrides: dict = field(default_factory=dict)  # any ModelConfig field, e.g. {"mask_floor": 0.0}
    semi: str = ""  # "" = labelled images only; "selftrain" (selftrain.py) or "fixmatch" (semi.py): also unlabelled images
    unlabelled_ratio: int = 1  # unlabelled crops per labelled crop in a step (FixMatch's mu)
    unlabelled_weight: float = 1.0  # weight of the unlabelled term (FixMatch's lambda_u)
    pseudo_threshold: float = 0.0  # confidence needed for a pseudo-label; 0 = the head's default (semi.py)
    strong_hed_sigma: float = 0.2  # stain jitter of FixMatch's strong view
    mask: MaskConfig = field(default_factory=MaskConfig)
    auto_candidates: tuple = ("baseline", "saganet")  # variant "auto" chooses among these, simplest first (select.py)
    auto_folds: int = 3  # ... by this many folds of cross-validation inside the labelled images
    auto_se: float = 1.0  # ... taking the first within this many standard errors of the best (0: the best)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        d = dict(d)
        d["mask"] = MaskConfig.from_dict(d.get("mask"))
        if "auto_candidates" in d:
            d["auto_candidates"] = tuple(d["auto_candidates"])
        return cls(**d)


@dataclass(frozen=True)
class PretrainConfig:
    method: str = "simclr"
    backbone: str = "resnet-tiny"
    epochs: int = 30
    steps: int = 0  # >0: overrides epochs with as many as it takes to reach about this many steps
    tile_size: int = 128  # tiles stored in the bank (px); views are cropped from them
    crop: int = 64  # view edge fed to the network (px)
    min_scale: float = 0.25  # smallest view side as a fraction of the tile: zoom range 0.5x-2x at defaults
    max_tiles: int = 20000
    slide_downsamples: tuple[int, ...] = (1, 2)  # slide tiles are read at these downsamples of level 0
    batch_size: int = 256
    lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup_epochs: int = 2
    temperature: float = 0.2  # SimCLR
    ema: float = 0.99  # BYOL target momentum at the start (cosine to 1)
    hed_sigma: float = 0.1  # stronger than in supervised training: invariance to stain is the point
    blur_p: float = 0.5
    seed: int = 0
    threads: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


# Tiles per cluster task (slide/cluster.py): scheduling costs ~5 ms a task, and smaller chunks shorten
# the tail in which one worker finishes a slide while the others idle.
CHUNK_TILES = 128


@dataclass(frozen=True)
class PredictConfig:
    batch_size: int = 8  # fastest on our 2-core CPUs (activations stay in cache); raise it on bigger machines
    workers: int = 2  # threads that read and preprocess tiles while the engine runs
    min_tissue: float = 0.25  # share of a tile that must be tissue on the thumbnail to be predicted
    min_valid: float = 0.05  # share of valid-area pixels a tile needs to count in the slide call
    mpp: float | None = None  # level-0 microns per pixel; required when the slide does not say
    thumbnail_side: int = 1024
    progress: bool = True
    max_tiles: int = 100_000  # a slide needing more tiles is refused (work amplification); 2.5 x 2.5 cm of tissue in 112 um tiles is about 50,000

    def check(self) -> None:
        if not 1 <= self.batch_size <= 1024:
            raise ValueError(f"--batch-size must be 1..1024, got {self.batch_size}")
        if not 1 <= self.workers <= 64:
            raise ValueError(f"--workers must be 1..64, got {self.workers}")
        if self.mpp is not None and mpp_problem(self.mpp):
            raise ValueError(f"--mpp {mpp_problem(self.mpp)}")
        if not 1 <= self.max_tiles:
            raise ValueError(f"--max-tiles must be at least 1, got {self.max_tiles}")
