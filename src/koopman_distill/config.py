"""Typed configuration: one dataclass per stage, named presets, and ``key=value`` overrides.

Every run directory and pair store saves the resolved :class:`Config` as JSON; the CLI derives
its ``--set section.field=value`` overrides from these dataclasses, so every value is settable.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import typing
from dataclasses import dataclass, field
from typing import Any

from .errors import KDMError


@dataclass
class DataConfig:
    """Training data for the teacher.

    Points (``resolution`` 0): ``checkerboard`` (the embedded 2-D distribution) or a path to a
    ``.npy`` point cloud of shape (N, 2). Images (``resolution`` > 0): ``digits``
    (scikit-learn's 8x8 digits), ``fashion-mnist[:DIR]``, ``mnist:DIR`` (IDX files) or a path
    to a ``.npy``/``.npz`` image array, resized or padded to ``resolution``.
    """

    source: str = "checkerboard"
    n: int = 500_000  # samples drawn from an embedded distribution (0 = all, for datasets)
    seed: int = 0
    resolution: int = 0  # image side length; 0 = 2-D point data
    channels: int = 0  # image channels (1 or 3); 0 = the source's own
    conditional: bool = False  # class-conditional teacher and KDM (needs labels)


@dataclass
class UNetConfig:
    """A DDPM++-style UNet (the reference's SongUNet); shared by the EDM teacher and image KDM."""

    channels: int = 64  # channels at the first level
    channel_mult: list[int] = field(default_factory=lambda: [1, 2, 2, 2])
    num_blocks: int = 4  # residual blocks per level
    attn_resolutions: list[int] = field(default_factory=lambda: [16])
    dropout: float = 0.1


@dataclass
class TeacherConfig:
    """The teacher and its deterministic ODE sampler.

    ``flow``: a flow-matching MLP for 2-D points (``width`` ... ``x_fmax``; samplers euler,
    midpoint, heun, rk4). ``edm``: an EDM-preconditioned UNet for images with the Heun sampler
    on the Karras schedule (``sigma_min``, ``sigma_max``, ``rho``; 18 steps = 35 NFE).
    """

    kind: str = "flow"  # flow | edm
    width: int = 256
    depth: int = 4
    time_features: int = 16
    x_features: int = 8  # Fourier features of x per coordinate (0 = raw x only)
    x_fmax: float = 16.0  # highest Fourier frequency (rad per unit of x); lowest is 1
    sigma_max: float = 1.0  # std of the noise x_T the ODE starts from
    sampler: str = "heun"  # euler | midpoint | heun | rk4
    steps: int = 25  # fixed ODE steps; NFE depends on the sampler (heun: 2 per step)
    sigma_min: float = 0.002  # edm only
    rho: float = 7.0  # edm only: Karras schedule exponent
    sigma_data: float = 0.5  # edm only
    P_mean: float = -1.2  # edm only: log-normal training noise levels
    P_std: float = 1.2
    unet: UNetConfig = field(default_factory=UNetConfig)  # edm only


@dataclass
class PairsConfig:
    """How ``kdm pairs`` runs the teacher."""

    n: int = 50_000
    shard_size: int = 10_000
    batch_size: int = 10_000
    seed: int = 1
    clean_dtype: str = "float32"  # float32 | float16 (halves image stores)
    store_noise: bool = True  # false: store a seed per pair and regenerate x_T on reading
    # 2-D teachers: draw the pairs' x_T with std noise_scale * sigma_max. Above 1 it puts more
    # pairs in the Gaussian's tails, where a one-step student generalises worst between pairs;
    # sampling still draws x_T ~ N(0, sigma_max^2 I).
    noise_scale: float = 1.0


@dataclass
class ModelConfig:
    """The student: KDM (``method`` kdm) or an offline baseline on the same pairs.

    KDM: encoders E_T, E_0, decoder D and the Koopman operator K.

    Vectors: three MLPs (``width``, ``depth``, ``latent_dim``). Images: three UNets (``unet``)
    with a ``latent_channels`` x R x R latent, optionally linearly projected to ``projection``
    dims. Class labels (``data.conditional``) go into all three networks and a learned control
    ``B y`` is added after ``K``; an optional adversarial term (``w_adv``) with a critic (a
    patch discriminator for images, an MLP for vectors) trained on the teacher's outputs as
    real.

    Baselines (:mod:`.students.baselines`), sized to the parameter count of KDM's sampling path
    E_T, K, (B,) D under the same settings: ``kd`` regresses x_0 from x_T directly (Luhman &
    Luhman); ``rectified`` learns the velocity of the straight noise-to-teacher-sample path and
    samples with ``sample_steps`` Euler steps.
    """

    method: str = "kdm"  # kdm | kd | rectified
    sample_steps: int = 1  # rectified only: Euler steps of one sample
    width: int = 256
    depth: int = 5  # linear layers per network
    latent_dim: int = 256
    koopman: str = "dense"  # dense | eigen
    koopman_bias: bool = True  # dense only: K z + b
    sigma_z: float = 0.4  # latent noise during training
    sigma_z_schedule: str = "constant"  # constant | cosine (decays to 0 by the last step)
    distance: str = "l2"  # l2 | pseudo_huber | lpips (images)
    huber_c: float = 0.03
    w_latent: float = 1.0
    w_rec: float = 1.0
    w_push: float = 1.0
    w_inverse: float = 1.0  # eigen only: inverse-consistency loss
    w_spectrum: float = 0.0  # eigen only: spectrum loss to the target distribution
    spectrum_target: str = "disk"  # disk (uniform on the unit disk) | circle (|lambda| = 1)
    r_min: float = 0.0  # eigen init: |lambda| ring
    r_max: float = 1.0
    unet: UNetConfig = field(default_factory=UNetConfig)  # images only
    latent_channels: int = 1  # images only
    projection: int = 0  # images only: linear projection of the flat latent (0 = none)
    w_adv: float = 0.0  # generator adversarial weight (reference: 0.01)
    disc_channels: int = 64  # critic width (images: the patch discriminator's first conv)
    lpips_weights: str = ""  # distance lpips: local VGG16+LPIPS weights file(s), comma-separated


@dataclass
class TrainConfig:
    """The generic trainer (shared by teacher and KDM).

    ``batch_size`` is the global batch: under ``torchrun`` each of N processes takes
    ``batch_size / N`` rows of it, in ``micro_batch``-row pieces whose gradients are accumulated,
    so results do not depend on N. The speed options (``precision``, ``channels_last``,
    ``compile``, ``prefetch``) are off by default; on a GPU try bf16, channels_last (images),
    compile and prefetch 2. ``deterministic`` makes a GPU run (and its resume) repeat bitwise,
    at some speed cost.
    """

    steps: int = 20_000
    batch_size: int = 4096  # global, over all processes
    micro_batch: int = 0  # rows per process and forward pass (0 = its whole share)
    lr: float = 3e-4
    lr_schedule: str = "constant"  # constant | cosine
    warmup: int = 0
    beta1: float = 0.9
    beta2: float = 0.999
    grad_clip: float = 0.0  # 0 = off
    ema_decay: float = 0.9999
    ema_warmup: bool = True  # decay_t = min(ema_decay, (1 + t) / (10 + t))
    seed: int = 0
    log_every: int = 50
    eval_every: int = 1000
    ckpt_every: int = 1000
    keep_checkpoints: int = 2
    max_nonfinite: int = 20  # consecutive non-finite steps before the run stops
    progress: bool = True
    device: str = "auto"  # auto (cuda when available) | cpu | cuda | cuda:N
    precision: str = "fp32"  # fp32 | bf16 | fp16 (autocast; fp16 with a gradient scaler)
    channels_last: bool = False  # images: NHWC memory layout (faster convolutions on GPUs)
    compile: bool = False  # torch.compile each network (pays off on GPUs for long runs)
    prefetch: int = 0  # batches loaded ahead in a background thread (0 = off)
    deterministic: bool = False  # deterministic kernels only (GPU; CPU runs already are)
    init: str = ""  # a run whose EMA weights start this one (fine-tuning); "" = fresh weights


@dataclass
class EvalConfig:
    """Metric settings; written into every evaluation result."""

    n: int = 20_000
    seed: int = 12345  # noise for evaluation, disjoint from the pair seeds
    reference_seed: int = 54321  # fresh teacher samples as the reference set
    projections: int = 512  # sliced Wasserstein directions
    energy_n: int = 5000  # subsample for the energy distance (O(n^2))
    extractor: str = "classifier"  # images: classifier | effnet | inception
    extractor_weights: str = ""  # inception: local FID Inception weights file
    effnet_resolution: int = 224  # effnet input side (images are resized to it)
    kid_subset: int = 1000
    classifier_steps: int = 1500  # training steps of the cached evaluation classifier
    batch_size: int = 500  # sampling batch for image evaluation


@dataclass
class Config:
    """Everything a run needs; the preset name is kept for the record."""

    preset: str = "checkerboard"
    data: DataConfig = field(default_factory=DataConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    teacher_train: TrainConfig = field(default_factory=lambda: TrainConfig(
        steps=16_000, batch_size=2048, lr=6e-3, lr_schedule="cosine", warmup=200,
        ema_decay=0.999, eval_every=0, ckpt_every=2000))
    pairs: PairsConfig = field(default_factory=PairsConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Config:
        cfg = _from_dict(cls, d, "config")
        cfg.validate()
        return cfg

    def validate(self) -> None:
        """Raise a KDMError naming the first value out of its range or choices (``_RANGES``,
        ``_CHOICES``); every float must be finite."""
        _check_ranges(self, "")


def _from_dict(cls: type, d: Any, where: str) -> Any:
    if not isinstance(d, dict):
        raise KDMError(f"{where} must be a JSON object, got {type(d).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise KDMError(f"unknown key(s) in {where}: {', '.join(map(repr, unknown))}")
    kwargs = {}
    for name, value in d.items():
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _from_dict(tp, value, f"{where}.{name}")
        else:
            kwargs[name] = _check_type(value, tp, f"{where}.{name}")
    return cls(**kwargs)


def _check_type(value: Any, tp: Any, where: str) -> Any:
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        try:
            return float(value)
        except OverflowError:
            raise KDMError(f"{where} must be a finite number, got an integer of "
                           f"{len(str(abs(value)))} digits") from None
    if tp in (int, float, str, bool) and (type(value) is not tp):
        raise KDMError(f"{where} must be {tp.__name__}, got {value!r}")
    if tp == list[int] and not (isinstance(value, list) and all(
            type(v) is int for v in value)):
        raise KDMError(f"{where} must be a list of integers, got {value!r}")
    return value


_POS, _NONNEG, _UNIT, _FRAC = "> 0", ">= 0", "in [0, 1]", "in [0, 1)"
_TRAIN_RANGES = {"steps": _POS, "batch_size": _POS, "lr": _POS, "warmup": _NONNEG,
                 "beta1": _FRAC, "beta2": _FRAC, "grad_clip": _NONNEG, "ema_decay": _UNIT,
                 "log_every": _POS, "eval_every": _NONNEG, "ckpt_every": _POS,
                 "keep_checkpoints": _POS, "max_nonfinite": _POS}
# Allowed ranges of numeric fields (list fields: of every entry), by config class.
_RANGES: dict[type, dict[str, str]] = {
    DataConfig: {"n": _NONNEG, "resolution": _NONNEG, "channels": _NONNEG},
    UNetConfig: {"channels": _POS, "channel_mult": _POS, "num_blocks": _POS,
                 "attn_resolutions": _POS, "dropout": _FRAC},
    TeacherConfig: {"width": _POS, "depth": _POS, "time_features": _NONNEG,
                    "x_features": _NONNEG, "x_fmax": _POS, "sigma_max": _POS, "steps": _POS,
                    "sigma_min": _POS, "rho": _POS, "sigma_data": _POS, "P_std": _POS},
    PairsConfig: {"n": _POS, "shard_size": _POS, "batch_size": _POS, "noise_scale": _POS},
    ModelConfig: {"sample_steps": _POS, "width": _POS, "depth": _POS, "latent_dim": _POS,
                  "sigma_z": _NONNEG, "huber_c": _POS, "w_latent": _NONNEG, "w_rec": _NONNEG,
                  "w_push": _NONNEG, "w_inverse": _NONNEG, "w_spectrum": _NONNEG,
                  "r_min": _NONNEG, "r_max": _NONNEG, "latent_channels": _POS,
                  "projection": _NONNEG, "w_adv": _NONNEG, "disc_channels": _POS},
    TrainConfig: _TRAIN_RANGES,
    EvalConfig: {"n": _POS, "projections": _POS, "energy_n": _POS, "effnet_resolution": _POS,
                 "kid_subset": _POS, "classifier_steps": _POS, "batch_size": _POS},
}
# Allowed values of string fields, by config class.
_CHOICES: dict[type, dict[str, tuple[str, ...]]] = {
    TeacherConfig: {"kind": ("flow", "edm"), "sampler": ("euler", "midpoint", "heun", "rk4")},
    PairsConfig: {"clean_dtype": ("float32", "float16")},
    ModelConfig: {"koopman": ("dense", "eigen"), "distance": ("l2", "pseudo_huber", "lpips"),
                  "spectrum_target": ("disk", "circle"),
                  "sigma_z_schedule": ("constant", "cosine")},
    TrainConfig: {"lr_schedule": ("constant", "cosine")},
    EvalConfig: {"extractor": ("classifier", "effnet", "inception")},
}
_IN_RANGE = {_POS: lambda v: v > 0, _NONNEG: lambda v: v >= 0, _UNIT: lambda v: 0 <= v <= 1,
             _FRAC: lambda v: 0 <= v < 1}


def _check_ranges(obj: Any, where: str) -> None:
    rules, choices = _RANGES.get(type(obj), {}), _CHOICES.get(type(obj), {})
    for f in dataclasses.fields(obj):
        value, name = getattr(obj, f.name), f"{where}{f.name}"
        if dataclasses.is_dataclass(value):
            _check_ranges(value, f"{name}.")
            continue
        if f.name in choices and value not in choices[f.name]:
            raise KDMError(f"{name} must be one of {', '.join(choices[f.name])}, got {value!r}")
        if isinstance(value, float) and not math.isfinite(value):
            raise KDMError(f"{name} must be a finite number, got {value!r}")
        rule = rules.get(f.name)
        values = value if isinstance(value, list) else [value]
        if rule and not all(_IN_RANGE[rule](v) for v in values):
            raise KDMError(f"{name} must be {rule}, got {value!r}")


# Measured on 2 CPU cores (docs/benchmarks.md): at equal examples seen, KDM reaches a higher
# inside-squares rate with small batches and many steps (batch 256 x 12k steps: 0.936 against
# batch 1024 x 3k: 0.881, same teacher at 0.942) and with the pseudo-Huber distance (0.881
# against 0.849 for L2). A weaker latent alignment and latent noise decayed to 0 over training
# beat the paper's w_latent 1 and constant sigma_z: +0.0026 inside rate on each of 3 seeds at
# the demo budget, +0.0008 at the full budget.
_KDM_CHECKERBOARD = {"distance": "pseudo_huber", "w_latent": 0.1, "sigma_z_schedule": "cosine"}
_TRAIN_CHECKERBOARD = {"batch_size": 256, "lr": 2e-3, "lr_schedule": "cosine", "warmup": 200,
                       "ema_decay": 0.999}

# Images. The paper's full-size KDM configurations (reference §10): three 64-channel UNets
# (32 channels + a 512-d projection at 64x64), a 1-channel latent, LPIPS distance (local
# weights), adversarial weight 0.01, batch 128, lr 3e-4, EMA 0.9999, 800k iterations. Their
# teachers follow EDM's DDPM++ settings; users usually bring their own teacher's pairs.
_UNET_PAPER = {"channels": 64, "channel_mult": [1, 2, 2, 2], "num_blocks": 4,
               "attn_resolutions": [16], "dropout": 0.1}
_KDM_PAPER = {"unet": _UNET_PAPER, "latent_channels": 1, "distance": "lpips", "w_adv": 0.01,
              "sigma_z": 0.4}
_TRAIN_PAPER = {"steps": 800_000, "batch_size": 128, "lr": 3e-4, "ema_decay": 0.9999,
                "ema_warmup": False, "eval_every": 20_000, "ckpt_every": 20_000,
                "log_every": 200}
_EDM_TEACHER = {"kind": "edm", "sigma_max": 80.0, "steps": 18,
                "unet": {"channels": 128, "channel_mult": [2, 2, 2], "num_blocks": 4,
                         "attn_resolutions": [16], "dropout": 0.13}}
_EDM_TEACHER_TRAIN = {"steps": 390_000, "batch_size": 512, "lr": 1e-3, "warmup": 5000,
                      "ema_decay": 0.9993, "ckpt_every": 10_000}
_PAIRS_PAPER = {"n": 1_000_000, "shard_size": 10_000, "batch_size": 500,
                "clean_dtype": "float16", "store_noise": False}
_EVAL_FID = {"n": 50_000, "extractor": "inception", "batch_size": 500}


def _paper(source: str, resolution: int, n_pairs: int, conditional: bool = False,
           projection: int = 0, channels: int = 64) -> dict[str, Any]:
    return {
        "data": {"source": source, "resolution": resolution, "channels": 3, "n": 0,
                 "conditional": conditional},
        "teacher": _EDM_TEACHER, "teacher_train": _EDM_TEACHER_TRAIN,
        "pairs": {**_PAIRS_PAPER, "n": n_pairs},
        "model": {**_KDM_PAPER, "projection": projection,
                  "unet": {**_UNET_PAPER, "channels": channels}},
        "train": _TRAIN_PAPER, "eval": _EVAL_FID,
    }


# The CPU image benchmark: real Fashion-MNIST at 16x16, sized so that teacher, pairs, KDM and
# evaluation run in under an hour on 2 cores (docs/benchmarks.md).
_FASHION16 = {
    "data": {"source": "fashion-mnist", "resolution": 16, "channels": 1, "n": 0},
    "teacher": {"kind": "edm", "sigma_max": 80.0, "steps": 18,
                "unet": {"channels": 16, "channel_mult": [1, 2, 4], "num_blocks": 1,
                         "attn_resolutions": [], "dropout": 0.0}},
    "teacher_train": {"steps": 2500, "batch_size": 128, "lr": 2e-3, "lr_schedule": "cosine",
                      "warmup": 200, "ema_decay": 0.999, "ckpt_every": 500, "log_every": 50},
    "pairs": {"n": 10_000, "shard_size": 2000, "batch_size": 500, "clean_dtype": "float16",
              "store_noise": False},
    "model": {"unet": {"channels": 16, "channel_mult": [1, 2], "num_blocks": 1,
                       "attn_resolutions": [], "dropout": 0.0},
              "latent_channels": 1, "distance": "pseudo_huber", "w_adv": 0.01},
    "train": {"steps": 1500, "batch_size": 64, "lr": 1e-3, "lr_schedule": "cosine",
              "warmup": 100, "ema_decay": 0.999, "eval_every": 500, "ckpt_every": 500},
    "eval": {"n": 5000, "extractor": "classifier", "batch_size": 500},
}

PRESETS: dict[str, dict[str, Any]] = {
    # The full checkerboard budget: 50k pairs, as in the paper; 40k KDM steps at batch 256
    # (10.2M examples seen) replace the paper's 20k at batch 4096 (82M), see above.
    "checkerboard": {
        "model": _KDM_CHECKERBOARD,
        "train": {**_TRAIN_CHECKERBOARD, "steps": 40_000, "eval_every": 5000,
                  "ckpt_every": 5000},
    },
    # What `kdm demo` runs: a few CPU minutes end to end.
    "checkerboard-demo": {
        "data": {"n": 200_000},
        "teacher_train": {"steps": 8000, "batch_size": 1024, "lr": 8e-3, "ckpt_every": 2000},
        "pairs": {"n": 20_000},
        "model": _KDM_CHECKERBOARD,
        "train": {**_TRAIN_CHECKERBOARD, "steps": 12_000, "eval_every": 3000,
                  "ckpt_every": 3000},
        "eval": {"n": 10_000},
    },
    # Seconds, for tests.
    "checkerboard-tiny": {
        "data": {"n": 4096},
        "teacher": {"width": 32, "depth": 2, "steps": 4},
        "teacher_train": {"steps": 20, "batch_size": 256, "ckpt_every": 10, "log_every": 5,
                          "progress": False},
        "pairs": {"n": 512, "shard_size": 200, "batch_size": 128},
        "model": {"width": 32, "depth": 3, "latent_dim": 16},
        "train": {"steps": 20, "batch_size": 64, "eval_every": 10, "ckpt_every": 10,
                  "log_every": 5, "progress": False},
        "eval": {"n": 512, "projections": 32, "energy_n": 256},
    },
    "fashion16": _FASHION16,
    "fashion16-cond": {**_FASHION16, "data": {**_FASHION16["data"], "conditional": True}},
    # Seconds, for tests: real 8x8 digits, tiny UNets.
    "digits8": {
        "data": {"source": "digits", "resolution": 8, "channels": 1, "n": 0,
                 "conditional": True},
        "teacher": {"kind": "edm", "sigma_max": 80.0, "steps": 4,
                    "unet": {"channels": 8, "channel_mult": [1, 2], "num_blocks": 1,
                             "attn_resolutions": [], "dropout": 0.0}},
        "teacher_train": {"steps": 6, "batch_size": 32, "lr": 2e-3, "ckpt_every": 3,
                          "log_every": 2, "progress": False},
        "pairs": {"n": 96, "shard_size": 48, "batch_size": 48, "clean_dtype": "float16",
                  "store_noise": False},
        "model": {"unet": {"channels": 8, "channel_mult": [1, 2], "num_blocks": 1,
                           "attn_resolutions": [], "dropout": 0.0},
                  "latent_channels": 1, "w_adv": 0.01},
        "train": {"steps": 6, "batch_size": 16, "eval_every": 3, "ckpt_every": 3,
                  "log_every": 2, "progress": False},
        "eval": {"n": 64, "extractor": "classifier", "batch_size": 64, "kid_subset": 32,
                 "classifier_steps": 60},
    },
    "cifar10": _paper("cifar10-train.npz", 32, 1_000_000),
    "cifar10-cond": _paper("cifar10-train.npz", 32, 1_000_000, conditional=True),
    "ffhq64": _paper("ffhq-64x64.npz", 64, 1_000_000, projection=512, channels=32),
    "afhq64": _paper("afhqv2-64x64.npz", 64, 250_000, projection=512, channels=32),
}


# `kdm bench` suites: the preset of the full run and the preset of `--quick`.
BENCH_SUITES = {"checkerboard": ("checkerboard-demo", "checkerboard-tiny"),
                "fashion16": ("fashion16-cond", "digits8")}


def _merge(base: dict[str, Any], over: dict[str, Any], where: str) -> None:
    for k, v in over.items():
        if k not in base:
            raise KDMError(f"unknown config key {where}{k}")
        if isinstance(base[k], dict):
            _merge(base[k], v, f"{where}{k}.")
        else:
            base[k] = v


def preset(name: str) -> Config:
    """The named preset as a :class:`Config`."""
    if name not in PRESETS:
        raise KDMError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}")
    d = Config().to_dict()
    _merge(d, copy.deepcopy(PRESETS[name]), "")
    d["preset"] = name
    return Config.from_dict(d)


def _parse_value(text: str, tp: Any, key: str) -> Any:
    if tp == list[int]:  # "1,2,2"; an empty string is the empty list
        try:
            return [int(v) for v in text.split(",") if v.strip()]
        except ValueError:
            raise KDMError(f"{key} takes comma-separated integers, e.g. 1,2,2; got "
                           f"{text!r}") from None
    if tp is bool:
        low = text.lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise KDMError(f"{key} takes true or false, got {text!r}")
    if tp in (int, float):
        try:
            return tp(float(text)) if tp is int and "e" in text.lower() else tp(text)
        except (ValueError, OverflowError):
            raise KDMError(f"{key} takes a number ({tp.__name__}), got {text!r}") from None
    return text


def apply_overrides(cfg: Config, overrides: list[str]) -> Config:
    """Apply ``section.field=value`` strings (nested: ``model.unet.channels=32``); unknown
    keys and bad values raise KDMError."""
    cfg = copy.deepcopy(cfg)
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep:
            raise KDMError(f"override {item!r} must look like section.field=value")
        *path, name = key.strip().split(".")
        if not path:
            sections = [f.name for f in dataclasses.fields(cfg) if f.name != "preset"]
            raise KDMError(f"unknown config key {key!r}; sections are: {', '.join(sections)}")
        sub: Any = cfg
        for i, part in enumerate(path):
            sub = getattr(sub, part, None)
            if not dataclasses.is_dataclass(sub):
                where = ".".join(path[:i + 1])
                raise KDMError(f"unknown config key {key!r}: {where} is not a config section")
        hints = typing.get_type_hints(type(sub))
        if name not in hints or dataclasses.is_dataclass(hints[name]):
            raise KDMError(f"unknown config key {key!r}; {'.'.join(path)} has: "
                           f"{', '.join(hints)}")
        setattr(sub, name, _parse_value(text.strip(), hints[name], key))
    cfg.validate()
    return cfg


def override_keys(overrides: list[str]) -> list[str]:
    """The ``section.field`` keys of ``section.field=value`` overrides."""
    return [item.partition("=")[0].strip() for item in overrides]


_KDM_ONLY = ("koopman", "koopman_bias", "sigma_z", "sigma_z_schedule", "w_latent", "w_rec",
             "w_push", "w_inverse", "w_spectrum", "spectrum_target", "r_min", "r_max")
_EIGEN_ONLY = ("w_inverse", "w_spectrum", "spectrum_target", "r_min", "r_max")
_KDM = ("model.method=kdm", lambda c: c.model.method == "kdm")
_EIGEN = ("model.koopman=eigen", lambda c: c.model.koopman == "eigen")
# Model settings that act only together with others: key -> [(that setting, its test)].
_ONLY_WITH: dict[str, list[tuple[str, Any]]] = {
    **{f"model.{k}": [_KDM] + ([_EIGEN] if k in _EIGEN_ONLY else []) for k in _KDM_ONLY},
    "model.koopman_bias": [_KDM, ("model.koopman=dense", lambda c: c.model.koopman == "dense")],
    "model.sample_steps": [("model.method=rectified", lambda c: c.model.method == "rectified")],
    "model.huber_c": [("model.distance=pseudo_huber",
                       lambda c: c.model.distance == "pseudo_huber")],
    "model.lpips_weights": [("model.distance=lpips", lambda c: c.model.distance == "lpips")],
}


def check_overrides_act(cfg: Config, overrides: list[str], reads: tuple[str, ...],
                        command: str) -> None:
    """Refuse an override that ``command`` would ignore: one outside what it ``reads``
    (sections, or single ``section.field`` keys), or a model setting that does nothing with
    the chosen model (an eigen-only option with a dense ``K``, say)."""
    for key in override_keys(overrides):
        if key.split(".")[0] not in reads and key not in reads:
            raise KDMError(f"--set {key} has no effect on `{command}`, which reads only "
                           f"{', '.join(reads)}; drop it")
        for needs, test in _ONLY_WITH.get(key, []):
            if not test(cfg):
                raise KDMError(f"--set {key} has no effect without {needs}; set that too or "
                               "drop it")


def load_config(path: str) -> Config:
    """Read a saved ``config.json``."""
    from .io import read_json

    return Config.from_dict(read_json(path, "config"))
