"""Typed configuration: one dataclass per stage, named presets, and ``key=value`` overrides.

Every run directory and pair store saves the resolved :class:`Config` as JSON; the CLI derives
its ``--set section.field=value`` overrides from these dataclasses, so every value is settable.
Each field carries its own check (a range or the allowed choices) and, where it acts only with
another setting, that setting: both travel with the field, whatever it is named.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .errors import KDMError


@dataclass(frozen=True)
class Check:
    """What a config value must be (for a list: each entry): ``ok(value)``; ``says`` names the
    rule in the error, "<key> must be <says>, got <value>"."""

    says: str
    ok: Callable[[Any], bool]
    choices: tuple[str, ...] = ()  # the allowed values, for a choice


POSITIVE = Check("> 0", lambda v: v > 0)
NONNEGATIVE = Check(">= 0", lambda v: v >= 0)
UNIT = Check("in [0, 1]", lambda v: 0 <= v <= 1)
FRACTION = Check("in [0, 1)", lambda v: 0 <= v < 1)
# Explicitly unchecked (seeds, free text, paths, real numbers of any sign); floats must still
# be finite.
ANY = Check("any value", lambda v: True)
EXTRACTORS = ("classifier", "effnet", "inception")  # the image feature extractors


def one_of(*choices: str) -> Check:
    return Check(f"one of {', '.join(choices)}", lambda v: v in choices, choices)


def checked(default: Any, check: Check, *, acts_with: tuple[str, ...] = ()) -> Any:
    """A config field holding ``default`` (a list is copied per instance), validated by
    ``check``; ``acts_with`` lists the ``field=value`` settings of the same section without
    which it does nothing (an override of it alone is refused)."""
    meta = {"check": check, "acts_with": acts_with}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class DataConfig:
    """Training data for the teacher.

    Vectors (``resolution`` 0): ``checkerboard`` (the embedded 2-D distribution) or a path to
    a ``.npy`` array of shape (N, D), any dimension D and any scale. Images (``resolution`` >
    0): ``digits`` (scikit-learn's 8x8 digits), ``fashion-mnist[:DIR]``, ``mnist:DIR`` (IDX
    files) or a path to a ``.npy``/``.npz`` image array, resized or padded to ``resolution``.
    """

    source: str = checked("checkerboard", ANY)  # a dataset name or a path
    # samples drawn from an embedded distribution (0 = all, for datasets)
    n: int = checked(500_000, NONNEGATIVE)
    seed: int = checked(0, ANY)
    resolution: int = checked(0, NONNEGATIVE)  # image side length; 0 = vectors (N, D)
    channels: int = checked(0, NONNEGATIVE)  # image channels (1 or 3); 0 = the source's own
    conditional: bool = False  # class-conditional teacher and KDM (needs labels)


@dataclass
class UNetConfig:
    """A DDPM++-style UNet (the reference's SongUNet); shared by the EDM teacher and image KDM."""

    channels: int = checked(64, POSITIVE)  # channels at the first level
    channel_mult: list[int] = checked([1, 2, 2, 2], POSITIVE)
    num_blocks: int = checked(4, POSITIVE)  # residual blocks per level
    attn_resolutions: list[int] = checked([16], POSITIVE)
    dropout: float = checked(0.1, FRACTION)


@dataclass
class TeacherConfig:
    """The teacher and its deterministic ODE sampler.

    ``flow``: a flow-matching MLP for vectors (``width`` ... ``x_fmax``; samplers euler,
    midpoint, heun, rk4). ``edm``: an EDM-preconditioned UNet for images with the Heun sampler
    on the Karras schedule (``sigma_min``, ``sigma_max``, ``rho``; 18 steps = 35 NFE).
    """

    kind: str = checked("flow", one_of("flow", "edm"))
    width: int = checked(256, POSITIVE)
    depth: int = checked(4, POSITIVE)
    time_features: int = checked(16, NONNEGATIVE)
    # Fourier features of x per coordinate (0 = raw x only)
    x_features: int = checked(8, NONNEGATIVE)
    # highest Fourier frequency (rad per unit of x); lowest is 1
    x_fmax: float = checked(16.0, POSITIVE)
    sigma_max: float = checked(1.0, POSITIVE)  # std of the noise x_T the ODE starts from
    sampler: str = checked("heun", one_of("euler", "midpoint", "heun", "rk4"))
    # fixed ODE steps; NFE depends on the sampler (heun: 2 per step)
    steps: int = checked(25, POSITIVE)
    sigma_min: float = checked(0.002, POSITIVE)  # edm only
    rho: float = checked(7.0, POSITIVE)  # edm only: Karras schedule exponent
    sigma_data: float = checked(0.5, POSITIVE)  # edm only
    P_mean: float = checked(-1.2, ANY)  # edm only: log-normal training noise levels
    P_std: float = checked(1.2, POSITIVE)
    unet: UNetConfig = field(default_factory=UNetConfig)  # edm only


@dataclass
class PairsConfig:
    """How ``kdm pairs`` runs the teacher."""

    n: int = checked(50_000, POSITIVE)
    shard_size: int = checked(10_000, POSITIVE)
    batch_size: int = checked(10_000, POSITIVE)
    seed: int = checked(1, ANY)
    # float16 halves image stores
    clean_dtype: str = checked("float32", one_of("float32", "float16"))
    store_noise: bool = True  # false: store a seed per pair and regenerate x_T on reading
    # vector teachers: draw the pairs' x_T with std noise_scale * sigma_max. Above 1 it puts more
    # pairs in the Gaussian's tails, where a one-step student generalises worst between pairs;
    # sampling still draws x_T ~ N(0, sigma_max^2 I).
    noise_scale: float = checked(1.0, POSITIVE)
    # The teacher's deterministic solver and its steps; "" and 0: the teacher's own (a teacher
    # run's teacher.sampler and teacher.steps, an adapter's default). Which solvers exist
    # depends on the teacher (its error names them).
    solver: str = checked("", ANY)
    steps: int = checked(0, NONNEGATIVE)
    # classifier-free guidance of a class-conditional adapter teacher: w in
    # uncond + w (cond - uncond), 1 = none; the model's unconditional class is null_class
    guidance: float = checked(1.0, NONNEGATIVE)
    null_class: int = checked(-1, ANY)  # -1: the model has none


_KDM = "method=kdm"  # the settings of KDM's loss and K act only for KDM, not the baselines
_EIGEN = (_KDM, "koopman=eigen")


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
    samples with ``sample_steps`` Euler steps. ``w_adv`` > 0 gives them the same adversarial
    term on their one-step output.
    """

    method: str = checked("kdm", one_of("kdm", "kd", "rectified"))
    # Euler steps of one sample
    sample_steps: int = checked(1, POSITIVE, acts_with=("method=rectified",))
    width: int = checked(256, POSITIVE)
    depth: int = checked(5, POSITIVE)  # linear layers per network
    latent_dim: int = checked(256, POSITIVE)
    koopman: str = checked("dense", one_of("dense", "eigen"), acts_with=(_KDM,))
    koopman_bias: bool = checked(True, ANY, acts_with=(_KDM, "koopman=dense"))  # K z + b
    sigma_z: float = checked(0.4, NONNEGATIVE, acts_with=(_KDM,))  # latent noise in training
    # cosine: decays to 0 by the last step
    sigma_z_schedule: str = checked("constant", one_of("constant", "cosine"), acts_with=(_KDM,))
    distance: str = checked("l2", one_of("l2", "pseudo_huber", "lpips"))  # lpips: images
    huber_c: float = checked(0.03, POSITIVE, acts_with=("distance=pseudo_huber",))
    w_latent: float = checked(1.0, NONNEGATIVE, acts_with=(_KDM,))
    w_rec: float = checked(1.0, NONNEGATIVE, acts_with=(_KDM,))
    w_push: float = checked(1.0, NONNEGATIVE, acts_with=(_KDM,))
    w_inverse: float = checked(1.0, NONNEGATIVE, acts_with=_EIGEN)  # inverse-consistency loss
    # spectrum loss to the target distribution
    w_spectrum: float = checked(0.0, NONNEGATIVE, acts_with=_EIGEN)
    # disk (uniform on the unit disk) | circle (|lambda| = 1)
    spectrum_target: str = checked("disk", one_of("disk", "circle"), acts_with=_EIGEN)
    r_min: float = checked(0.0, NONNEGATIVE, acts_with=_EIGEN)  # eigen init: |lambda| ring
    r_max: float = checked(1.0, NONNEGATIVE, acts_with=_EIGEN)
    unet: UNetConfig = field(default_factory=UNetConfig)  # images only
    latent_channels: int = checked(1, POSITIVE)  # images only
    # images only: linear projection of the flat latent (0 = none)
    projection: int = checked(0, NONNEGATIVE)
    # generator adversarial weight (reference: 0.01)
    w_adv: float = checked(0.0, NONNEGATIVE)
    # critic width (images: the patch discriminator's first conv)
    disc_channels: int = checked(64, POSITIVE)
    # local VGG16+LPIPS weights file(s), comma-separated
    lpips_weights: str = checked("", ANY, acts_with=("distance=lpips",))


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

    steps: int = checked(20_000, POSITIVE)
    batch_size: int = checked(4096, POSITIVE)  # global, over all processes
    # rows per process and forward pass (0 = its whole share)
    micro_batch: int = checked(0, NONNEGATIVE)
    lr: float = checked(3e-4, POSITIVE)
    lr_schedule: str = checked("constant", one_of("constant", "cosine"))
    warmup: int = checked(0, NONNEGATIVE)
    beta1: float = checked(0.9, FRACTION)
    beta2: float = checked(0.999, FRACTION)
    grad_clip: float = checked(0.0, NONNEGATIVE)  # 0 = off
    ema_decay: float = checked(0.9999, UNIT)
    ema_warmup: bool = True  # decay_t = min(ema_decay, (1 + t) / (10 + t))
    seed: int = checked(0, ANY)
    log_every: int = checked(50, POSITIVE)
    eval_every: int = checked(1000, NONNEGATIVE)
    ckpt_every: int = checked(1000, POSITIVE)
    keep_checkpoints: int = checked(2, POSITIVE)
    # consecutive non-finite steps before the run stops
    max_nonfinite: int = checked(20, POSITIVE)
    progress: bool = True
    # auto (cuda when available) | cpu | cuda | cuda:N; checked against the machine's devices
    # when the run starts
    device: str = checked("auto", ANY)
    # autocast; fp16 with a gradient scaler
    precision: str = checked("fp32", one_of("fp32", "bf16", "fp16"))
    channels_last: bool = False  # images: NHWC memory layout (faster convolutions on GPUs)
    compile: bool = False  # torch.compile each network (pays off on GPUs for long runs)
    # batches loaded ahead in a background thread (0 = off)
    prefetch: int = checked(0, NONNEGATIVE)
    # CPU threads of training and pair generation: 0 = as many as the process has, fewer while
    # other processes compete for the cores (see koopman_distill.threads); N = exactly N, for
    # bitwise repeatable runs
    threads: int = checked(0, NONNEGATIVE)
    deterministic: bool = False  # deterministic kernels only (GPU; CPU runs already are)
    # a run whose EMA weights start this one (fine-tuning); "" = fresh weights
    init: str = checked("", ANY)
    # TensorBoard event files in RUN/tensorboard: the log rows and, at each evaluation
    # (eval_every), a picture of the EMA model's samples (needs koopman-distill[tensorboard])
    tensorboard: bool = False


@dataclass
class EvalConfig:
    """Metric settings; written into every evaluation result."""

    n: int = checked(20_000, POSITIVE)
    seed: int = checked(12345, ANY)  # noise for evaluation, disjoint from the pair seeds
    reference_seed: int = checked(54321, ANY)  # fresh teacher samples as the reference set
    projections: int = checked(512, POSITIVE)  # sliced Wasserstein directions
    energy_n: int = checked(5000, POSITIVE)  # subsample for the energy distance (O(n^2))
    extractor: str = checked("classifier", one_of(*EXTRACTORS))
    # images: more extractors scored beside eval.extractor, as fd_NAME and kid_NAME
    more_extractors: list[str] = checked([], one_of(*EXTRACTORS))
    extractor_weights: str = checked("", ANY)  # inception: local FID Inception weights file
    # images: an .npz of precomputed reference mu and sigma (EDM / pytorch-fid layout); the
    # Fréchet distance is measured against it (and KID, which needs features, is not)
    reference_stats: str = checked("", ANY)
    effnet_resolution: int = checked(224, POSITIVE)  # effnet input side (images are resized)
    kid_subset: int = checked(1000, POSITIVE)
    # training steps of the cached evaluation classifier
    classifier_steps: int = checked(1500, POSITIVE)
    batch_size: int = checked(500, POSITIVE)  # sampling batch for image evaluation


@dataclass
class Config:
    """Everything a run needs; the preset name is kept for the record. Building one checks
    every value (:meth:`validate`)."""

    preset: str = checked("checkerboard", ANY)
    data: DataConfig = field(default_factory=DataConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    teacher_train: TrainConfig = field(default_factory=lambda: TrainConfig(
        steps=16_000, batch_size=2048, lr=6e-3, lr_schedule="cosine", warmup=200,
        ema_decay=0.999, eval_every=0, ckpt_every=2000))
    pairs: PairsConfig = field(default_factory=PairsConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def __post_init__(self) -> None:
        self.validate()

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Config:
        return _from_dict(cls, d, "config")

    def validate(self) -> None:
        """Raise a KDMError naming the first value that fails its field's check; every float
        must be finite."""
        check_fields(self)


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
    if tp == list[str] and not (isinstance(value, list) and all(
            type(v) is str for v in value)):
        raise KDMError(f"{where} must be a list of strings, got {value!r}")
    return value


def check_fields(obj: Any, where: str = "") -> None:
    """Check every field of the config dataclass ``obj`` (and of its sections) by the
    :class:`Check` it carries; ``where`` prefixes the names in the error."""
    for f in dataclasses.fields(obj):
        value, name = getattr(obj, f.name), f"{where}{f.name}"
        if dataclasses.is_dataclass(value):
            check_fields(value, f"{name}.")
            continue
        if isinstance(value, float) and not math.isfinite(value):
            raise KDMError(f"{name} must be a finite number, got {value!r}")
        check = f.metadata.get("check")
        values = value if isinstance(value, list) else [value]
        if check and not all(check.ok(v) for v in values):
            raise KDMError(f"{name} must be {check.says}, got {value!r}")


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
    # The digits suite (`kdm bench digits`): unconditional 8x8 digits, the digits example's
    # student budget and evaluation; a diffusers teacher comes with --teacher diffusers:DIR,
    # else this EDM teacher is trained.
    "digits": {
        "data": {"source": "digits", "resolution": 8, "channels": 1, "n": 0},
        "teacher": {"kind": "edm", "sigma_max": 80.0, "steps": 18,
                    "unet": {"channels": 16, "channel_mult": [1, 2], "num_blocks": 1,
                             "attn_resolutions": [], "dropout": 0.0}},
        "teacher_train": {"steps": 2000, "batch_size": 64, "lr": 2e-3, "lr_schedule": "cosine",
                          "warmup": 200, "ema_decay": 0.999, "ckpt_every": 500,
                          "log_every": 50},
        "pairs": {"n": 5000, "shard_size": 1000, "batch_size": 500, "clean_dtype": "float16",
                  "store_noise": False},
        "model": {"unet": {"channels": 8, "channel_mult": [1, 2], "num_blocks": 1,
                           "attn_resolutions": [], "dropout": 0.0},
                  "latent_channels": 1, "w_adv": 0.01},
        "train": {"steps": 1500, "batch_size": 64, "lr": 2e-3, "eval_every": 500,
                  "ckpt_every": 500},
        "eval": {"n": 2000, "extractor": "effnet", "effnet_resolution": 64, "batch_size": 250},
    },
    "cifar10": _paper("cifar10-train.npz", 32, 1_000_000),
    "cifar10-cond": _paper("cifar10-train.npz", 32, 1_000_000, conditional=True),
    "ffhq64": _paper("ffhq-64x64.npz", 64, 1_000_000, projection=512, channels=32),
    "afhq64": _paper("afhqv2-64x64.npz", 64, 250_000, projection=512, channels=32),
}


# `kdm bench` suites: the preset of the full run and the preset of `--quick`.
BENCH_SUITES = {"checkerboard": ("checkerboard-demo", "checkerboard-tiny"),
                "fashion16": ("fashion16-cond", "digits8"), "digits": ("digits", "digits8")}
# kdm bench --adv: which students get the adversarial term (bench.ADV_MODES)
BENCH_ADV = ("kdm", "all", "none", "both")


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
    if tp == list[str]:  # "a,b"; an empty string is the empty list
        return [v.strip() for v in text.split(",") if v.strip()]
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


def check_overrides_act(cfg: Config, overrides: list[str], reads: tuple[str, ...],
                        command: str) -> None:
    """Refuse an override that ``command`` would ignore: one outside what it ``reads``
    (sections, or single ``section.field`` keys), or a setting that does nothing without the
    ``acts_with`` settings of its field (an eigen-only option with a dense ``K``, say)."""
    for key in override_keys(overrides):
        if key.split(".")[0] not in reads and key not in reads:
            raise KDMError(f"--set {key} has no effect on `{command}`, which reads only "
                           f"{', '.join(reads)}; drop it")
        *path, name = key.split(".")
        section = cfg
        for part in path:
            section = getattr(section, part)
        f = {f.name: f for f in dataclasses.fields(section)}[name]
        for needs in f.metadata.get("acts_with", ()):
            other, _, value = needs.partition("=")
            if getattr(section, other) != value:
                raise KDMError(f"--set {key} has no effect without {'.'.join(path)}.{needs}; "
                               "set that too or drop it")


def load_config(path: str) -> Config:
    """Read a saved ``config.json``."""
    from .io import read_json

    return Config.from_dict(read_json(path, "config"))
