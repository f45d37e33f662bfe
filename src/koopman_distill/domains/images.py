"""The image domain: examples of shape (C, H, W).

Networks are UNets; metrics are Fréchet distance and KID through an extractor, class accuracy
and paired error; plots are sample grids. Importing this module does not import torch (the
CLI's up-front checks read ``block`` and :meth:`Images.memory_needed`); what needs torch
imports it when called.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import KDMError
from ..evaluation.table import Column

if TYPE_CHECKING:
    import numpy as np
    import torch
    from torch import nn

    from ..analysis.latent import Semantics
    from ..config import Config, EvalConfig, ModelConfig
    from ..evaluation.core import Reference, Scorer, Shown
    from ..evaluation.extras import DatasetExtras
    from ..models.spec import Spec
    from ..protocols import Sampler
    from .common import Distance

FEATURES = 2048  # the widest extractor's feature dimension (FID Inception)
DISTANCES = ("l2", "pseudo_huber", "lpips")


@dataclass(frozen=True)
class Images:
    """Examples (C, H, W); batches (B, C, H, W)."""

    shape: tuple[int, ...]
    name = "images"
    block = 256  # rows per network call and per noise draw when sampling

    # -- networks ----------------------------------------------------------------------------
    # Every network is called ``net(x, t, y)``: t a float or (B,), y one-hot (B, k) or None.
    # UNets take y through their label embedding and t through their positional embedding.

    def _side(self) -> int:
        C, H, W = self.shape
        if H != W:
            raise KDMError(f"the image networks need square images, got shape {self.shape}")
        return H

    def _unet(self, cls: str, cfg: ModelConfig, c_in: int, c_out: int, channels: int,
              num_classes: int) -> Spec:
        """The spec of a UNet (class ``cls``) of ``cfg.unet``'s layout."""
        from ..models.spec import spec

        u = cfg.unet
        return spec(cls, resolution=self._side(), in_channels=c_in, out_channels=c_out,
                    channels=channels, channel_mult=list(u.channel_mult),
                    num_blocks=u.num_blocks, attn_resolutions=list(u.attn_resolutions),
                    dropout=u.dropout, label_dim=num_classes)

    def kdm_networks(self, cfg: ModelConfig, num_classes: int
                     ) -> tuple[Spec, Spec, Spec, int]:
        """The specs of KDM's UNets E_T, E_0: (B, C, R, R) -> (B, d) and D: (B, d) -> (B, C,
        R, R), with a ``latent_channels`` x R x R latent map, flattened (``d = latent_channels
        R^2``) or linearly projected to ``d = cfg.projection``; and d."""
        from ..models.spec import spec

        C, R, Lc, c = self.shape[0], self._side(), cfg.latent_channels, cfg.unet.channels
        enc, dec = ("UNet", "UNet") if cfg.projection else ("FlatEncoder", "FlatDecoder")
        E_T, E_0 = (self._unet(enc, cfg, C, Lc, c, num_classes) for _ in range(2))
        D = self._unet(dec, cfg, Lc, C, c, num_classes)
        if not cfg.projection:
            return E_T, E_0, D, Lc * R * R
        d = cfg.projection  # the reference's FFHQ/AFHQ: dense maps between flat maps and d
        return (spec("ProjectedEncoder", unet=E_T, proj_dim=d),
                spec("ProjectedEncoder", unet=E_0, proj_dim=d),
                spec("ProjectedDecoder", unet=D, proj_dim=d), d)

    def student_network(self, cfg: ModelConfig, num_classes: int, target_params: int,
                        time_input: bool) -> nn.Module:
        """A baseline's UNet (B, C, R, R) -> (B, C, R, R) taking t in [0, 1] (always; a
        network without ``time_input`` is called with t = 0), with the width (a multiple of
        4) whose parameter count is nearest ``target_params``."""
        from ..models.spec import build
        from .common import nearest_size

        C = self.shape[0]
        width = nearest_size(
            lambda w: build(self._unet("TimeScaledUNet", cfg, C, C, w, num_classes)),
            target_params, range(4, 4 * cfg.unet.channels + 1, 4))
        return build(self._unet("TimeScaledUNet", cfg, C, C, width, num_classes))

    def distance(self, cfg: ModelConfig) -> Distance:
        """``cfg.distance`` between image batches (B, C, R, R) as a scalar: l2, pseudo-Huber,
        or LPIPS from local weights (frozen, kept out of the checkpoints)."""
        if cfg.distance not in DISTANCES:
            raise KDMError(f"unknown distance {cfg.distance!r}; choose one of "
                           f"{', '.join(DISTANCES)}")
        if cfg.distance != "lpips":
            from .common import elementwise_distance

            return lambda a, b: elementwise_distance(a, b, cfg.distance, cfg.huber_c)
        from ..models.lpips import LPIPS

        files = [p for p in cfg.lpips_weights.split(",") if p]
        if not files:
            raise KDMError("distance lpips needs local weights: set model.lpips_weights="
                           "VGG16_FILE,LPIPS_FILE (weights are never downloaded)")
        lpips = LPIPS.from_files(*files)
        return lambda a, b: lpips.to(a.device)(a, b).mean()

    def critic(self, cfg: ModelConfig) -> nn.Module:
        """The adversarial critic: a patch discriminator (B, C, R, R) -> (B, patches)."""
        from ..models.discriminator import PatchDiscriminator

        return PatchDiscriminator(self.shape[0], self._side(), cfg.disc_channels)

    # -- evaluation --------------------------------------------------------------------------
    headline = "fd"  # the metric bench plots against NFE
    headline_label = "Fréchet distance"
    columns = (Column("FD", "fd", ".3f"), Column("KID", "kid", ".4f"),
               Column("class acc.", "class_accuracy", ".3f"),
               Column("paired MSE", "paired_mse", ".4f", paired=True))

    def table_columns(self, settings: Mapping[str, Any]) -> tuple[Column, ...]:
        """The columns of a result measured with ``settings``: :attr:`columns`, with FD and
        KID under each of ``more_extractors`` after the first two."""
        more = tuple(c for name in settings.get("more_extractors", ())
                     for c in (Column(f"FD ({name})", f"fd_{name}", ".3f"),
                               Column(f"KID ({name})", f"kid_{name}", ".4f")))
        return (*self.columns[:2], *more, *self.columns[2:])

    def memory_needed(self, ecfg: EvalConfig) -> int:
        """Rough bytes an evaluation of ``ecfg.n`` examples holds at once: 6 float32 arrays
        (n, C, H, W) and two sets of float64 features (n, 2048)."""
        return ecfg.n * (24 * math.prod(self.shape) + 16 * FEATURES)

    def sample_batch(self, ecfg: EvalConfig) -> int:
        """Rows per sampler call when the evaluation samples."""
        return ecfg.batch_size

    def timing_batch(self, ecfg: EvalConfig) -> int:
        """Rows of the batch whose throughput is timed."""
        return ecfg.batch_size

    def reference(self, cfg: Config, data_known: bool, teacher: Sampler | None,
                  pairs: Mapping[str, np.ndarray] | None, sigma_max: float, num_classes: int,
                  device: torch.device) -> Reference:
        """Up to ``eval.n`` real images of the data the teacher learned (its test split when
        it has one), or the training pairs' clean side when that data is not known."""
        from ..evaluation.core import Reference

        if data_known:
            values, name = reference_images(cfg, cfg.eval.n)
            return Reference(values, name, data_name=name)
        if pairs is None:
            raise KDMError("this run's pairs record no training data and are not on this "
                           "machine: there is nothing to score its images against")
        return Reference(pairs["clean"], "training pairs (the teacher's data is not known)")

    def scorer(self, cfg: Config, reference: Reference, labels: torch.Tensor | None,
               device: torch.device) -> Scorer:
        """Fréchet distance and KID on ``eval.extractor`` features against the reference,
        class accuracy of conditional samples (by the classifier trained on the real data),
        paired MSE against the teacher's outputs on the same noise."""
        import numpy as np

        from ..evaluation.core import Scorer
        from ..metrics.images import (
            extract_features,
            feature_stats,
            frechet_distance,
            kernel_inception_distance,
        )

        e = cfg.eval
        known = reference.data_name is not None  # the teacher's real data, with its labels
        if e.extractor in e.more_extractors:
            raise KDMError(f"eval.more_extractors repeats eval.extractor ({e.extractor}); "
                           "name each extractor once")
        clf = (classifier_for(cfg, progress=cfg.train.progress)
               if labels is not None and known else None)
        # metric-name suffix -> extractor; "" is eval.extractor's (fd, kid)
        extractors = {f"_{name}" if name != e.extractor else "":
                      (clf if name == "classifier" and clf is not None
                       else extractor_for(cfg, known, name)).to(device)
                      for name in (e.extractor, *e.more_extractors)}
        settings: dict[str, Any] = {"extractor_settings": extractors[""].settings}
        if e.more_extractors:
            settings["more_extractor_settings"] = {
                name: extractors[f"_{name}"].settings for name in e.more_extractors}
        references: dict[str, tuple[np.ndarray | None, np.ndarray, np.ndarray]] = {}
        for suffix, extractor in extractors.items():
            if e.reference_stats and not suffix:  # its features are not known: no KID
                from ..metrics.reference_stats import read_stats

                mu_r, sigma_r, settings["reference_stats"] = read_stats(e.reference_stats,
                                                                        extractor.dim)
                references[suffix] = (None, mu_r, sigma_r)
            else:
                feats = extract_features(extractor, reference.values, batch_size=e.batch_size)
                references[suffix] = (feats, *feature_stats(feats))

        def score(samples: np.ndarray, target: np.ndarray | None) -> dict[str, float]:
            out = {}
            for suffix, extractor in extractors.items():
                feats = extract_features(extractor, samples, batch_size=e.batch_size)
                ref_feats, mu_r, sigma_r = references[suffix]
                out[f"fd{suffix}"] = frechet_distance(*feature_stats(feats), mu_r, sigma_r)
                if ref_feats is not None:
                    out[f"kid{suffix}"], out[f"kid_std{suffix}"] = kernel_inception_distance(
                        feats, ref_feats, subset_size=e.kid_subset, seed=e.seed)
            if target is not None:
                out.update(self.paired(samples, target))
            if clf is not None and labels is not None:
                out["class_accuracy"] = float(np.mean(clf.predict(samples) == labels.numpy()))
            return out

        if clf is not None and labels is not None:
            settings["classifier_heldout_accuracy"] = clf.settings.get("heldout_accuracy")
        return Scorer(score, settings)

    def heldout_scorer(self, cfg: Config, data_known: bool, labels: torch.Tensor | None,
                       device: torch.device) -> Callable[[np.ndarray], dict[str, float]] | None:
        """What the in-training evaluation scores of a student's samples (N, C, H, W) on
        held-out noise with ``labels`` (N,) or None: FD and KID on ``eval.extractor``'s
        features against the real images ``kdm eval`` uses, and class accuracy (not the
        ``eval.more_extractors``, to keep it cheap); None when the teacher's data is not
        known."""
        if not data_known:
            return None
        one = replace(cfg, eval=replace(cfg.eval, more_extractors=[]))
        reference = self.reference(one, True, None, None, 0.0, 0, device)
        score = self.scorer(one, reference, labels, device).score
        return lambda samples: score(samples, None)

    def paired(self, samples: np.ndarray, target: np.ndarray) -> dict[str, float]:
        """``paired_mse`` of samples against targets made from the same noise."""
        import numpy as np

        return {"paired_mse": float(np.mean((samples - target) ** 2))}

    def pair_errors(self, samples: np.ndarray, target: np.ndarray) -> np.ndarray:
        """Per-pair error (N,) float64 in the units of :meth:`paired`: each image's MSE."""
        import numpy as np

        d = np.asarray(samples, np.float64) - np.asarray(target, np.float64)
        return np.square(d).reshape(len(d), -1).mean(axis=1)

    def features(self, cfg: Config, data_known: bool, device: torch.device
                 ) -> tuple[Callable[[np.ndarray], np.ndarray], dict[str, Any]]:
        """The space nearest-neighbour distances between images are measured in: images
        (N, C, H, W) -> ``eval.extractor`` features (N, F) float32 (the classifier needs the
        teacher's data, ``data_known``); and the extractor's settings."""
        from ..metrics.images import extract_features

        extractor = extractor_for(cfg, data_known).to(device)
        return (lambda x: extract_features(extractor, x, batch_size=cfg.eval.batch_size),
                {"space": f"{extractor.name} features", **extractor.settings})

    def read_examples(self, path: Path) -> np.ndarray:
        """Examples a user names, e.g. images to keep out of a store: a ``.npy`` (N, C, H, W)
        in [-1, 1], or a directory of PNGs brought to this domain's channels and side;
        float32 (N, C, H, W)."""
        from ..data.arrays import load_array
        from ..data.folders import read_png_folder

        if Path(path).is_dir():
            return read_png_folder(path, self.shape[0], self._side())
        return load_array(path, shape=self.shape, what="examples")

    def quality_check(self, kdm: Mapping[str, Any], kd: Mapping[str, Any]) -> dict[str, Any]:
        """Bench: KDM's Fréchet distance at most 0.6 of KD's (one-step rows); the same ratio
        under each further extractor (``fd_NAME``) is reported beside it."""
        ratio = kdm["fd"] / kd["fd"]
        more = {k[3:]: kdm[k] / kd[k] for k in kdm if k.startswith("fd_") and k in kd}
        said = "".join(f"; under {name}: {r:.3f}" for name, r in more.items())
        return {"kdm_fd_over_kd_fd": ratio, "quality_target_met": ratio <= 0.6,
                **{f"kdm_fd_over_kd_fd_{name}": r for name, r in more.items()},
                "quality_check": f"KDM FD / KD FD = {ratio:.3f} (target <= 0.6){said}"}

    def plots(self, out: Path, shown: Sequence[Shown], reference: Reference,
              extras: DatasetExtras | None, target: str | None, *, noise: Any,
              num_classes: int, seed: int, device: torch.device, per_row: int = 10,
              **_: Any) -> dict[str, Path]:
        """``samples.png``: every entry's samples side by side from the same noise (drawn by
        ``noise(n, seed + 7)``); a conditional run gets one row per class."""
        import torch

        from ..analysis import plots
        from ..evaluation.core import draw

        k = num_classes
        x_T = noise(per_row * (k or per_row), seed + 7)
        labels = torch.arange(k).repeat_interleave(per_row) if k else None
        panels = {s.name: draw(s.sample, x_T, labels, len(x_T), device) for s in shown}
        rows = [str(c) for c in range(k)] if k else None
        return {"samples": plots.image_grids(panels, Path(out) / "samples.png", per_row, rows)}

    def picture(self, panels: Mapping[str, np.ndarray], path: Path) -> Path:
        """A grid of each panel's images, 10 per row."""
        from ..analysis import plots

        return plots.image_grids(dict(panels), path)

    # -- analysis ----------------------------------------------------------------------------
    def semantics(self, cfg: Config, data_known: bool, extras: DatasetExtras | None,
                  device: torch.device) -> Semantics:
        """What ``kdm analyze`` compares images by: for a teacher that learned labelled data
        here, the evaluation classifier's predicted label and its features; else no labels,
        and pixels."""
        from ..analysis.latent import Semantics, flat

        if data_known:
            from ..data.images import load_images
            from ..metrics.images import extract_features

            data = load_images(cfg.data.source, cfg.data.resolution, cfg.data.channels or None)
            if data.labels is not None:
                clf = classifier_for(cfg, progress=cfg.train.progress)  # stays on the CPU
                return Semantics(clf.predict, "classifier label",
                                 lambda x: extract_features(clf, x, cfg.eval.batch_size),
                                 "classifier features")
        return Semantics(None, None, flat, "pixels")

    def sequences(self, panels: Mapping[str, np.ndarray], path: Path, context: np.ndarray,
                  extras: DatasetExtras | None) -> Path:
        """Sequences of images (P, L, C, H, W) per panel (an interpolation, a walk along a
        direction): a grid with a row per sequence."""
        from ..analysis import plots

        return plots.image_grids({k: v.reshape(-1, *v.shape[2:]) for k, v in panels.items()},
                                 path, nrow=next(iter(panels.values())).shape[1])

    def outliers(self, rows: Mapping[str, tuple[np.ndarray, np.ndarray, np.ndarray]],
                 path: Path, extras: DatasetExtras | None, top: int) -> Path:
        """Per row (name -> noise, images, outlier scores (N,)): the ``top`` images of highest
        score, highest first."""
        import numpy as np

        from ..analysis import plots

        return plots.image_grids({f"{name}: top {min(top, len(x))} outliers": x[
            np.argsort(-scores, kind="stable")[:top]] for name, (_, x, scores) in rows.items()},
            path, nrow=min(top, 8))



def classifier_for(cfg: Config, progress: bool = True) -> Any:
    """The small classifier trained (once, then cached in
    :func:`~..metrics.extractors.cache_dir`) on the run's real training data."""
    from ..data.images import load_images
    from ..metrics.extractors import cache_dir, load_or_train_classifier

    data = load_images(cfg.data.source, cfg.data.resolution, cfg.data.channels or None)
    if data.labels is None:
        raise KDMError(f"the classifier extractor needs a labelled dataset; {cfg.data.source} "
                       "has no labels: use eval.extractor=effnet or inception")
    return load_or_train_classifier(cache_dir(), data.images, data.labels, data.num_classes,
                                    progress=progress, steps=cfg.eval.classifier_steps)


def extractor_for(cfg: Config, data_known: bool, name: str | None = None) -> Any:
    """The frozen extractor ``name`` (default ``eval.extractor``; on the CPU): the classifier
    trained on the teacher's data (``data_known``), EfficientNet-Lite0 or the FID Inception
    (from ``eval.extractor_weights``)."""
    from ..metrics.extractors import build_extractor

    e = cfg.eval
    name = name or e.extractor
    if e.extractor_weights and "inception" not in (e.extractor, *e.more_extractors):
        raise KDMError(f"eval.extractor_weights is the FID Inception's weights file; it does not "
                       f"apply to eval.extractor={e.extractor}: drop it")
    if name == "classifier":
        if not data_known:
            key = "eval.extractor" if name == e.extractor else "eval.more_extractors"
            raise KDMError(f"{key}=classifier is trained on the teacher's data, which this run "
                           "does not record (a teacher not trained here): use --set "
                           f"{key}=effnet or inception")
        return classifier_for(cfg, progress=cfg.train.progress)
    if name == "effnet":
        return build_extractor(name, resolution=e.effnet_resolution)
    return build_extractor(name, e.extractor_weights or None)


def reference_images(cfg: Config, n: int) -> tuple[np.ndarray, str]:
    """Up to ``n`` real images (a subset of seed ``eval.reference_seed``): the test split when
    the source has one, else training data; and what they are."""
    import numpy as np

    from ..data.images import image_data, load_images

    try:
        data = load_images(cfg.data.source, cfg.data.resolution, cfg.data.channels or None,
                           split="test")
        split = "test"
    except KDMError:
        data, split = image_data(cfg), "train"
    if "no separate test split" in data.source:
        split = "train (no test split)"
    keep = np.random.default_rng(cfg.eval.reference_seed).permutation(len(data.images))[:n]
    return data.images[np.sort(keep)], f"{data.source} [{split}], n={len(keep)}"
