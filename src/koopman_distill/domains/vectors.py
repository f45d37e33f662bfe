"""The vector domain: examples of shape (D,), any dimension D.

Networks are MLPs; metrics are sliced Wasserstein, energy distance and paired error (against
the teacher and against the user's own data); plots are scatter plots (D = 2) or projections.
Importing this module does not import torch (the CLI's up-front checks read ``block`` and
:meth:`Vectors.memory_needed`); what needs torch imports it when called.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
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

SHOWN = 10_000  # points per scatter panel
TIME_FEATURES = 16  # sinusoidal features of a student network's time input


@dataclass(frozen=True)
class Vectors:
    """Examples (D,); batches (B, D)."""

    shape: tuple[int, ...]
    name = "vectors"
    block = 65536  # rows per network call and per noise draw when sampling

    # -- networks ----------------------------------------------------------------------------
    # Every network is called ``net(x, t, y)``: t a float or (B,), y one-hot (B, k) or None.
    # MLPs take y concatenated to their input; a time input enters as sinusoidal features.

    def kdm_networks(self, cfg: ModelConfig, num_classes: int
                     ) -> tuple[Spec, Spec, Spec, int]:
        """The specs of KDM's E_T, E_0: (B, D) -> (B, d) and D: (B, d) -> (B, D), MLPs of
        ``cfg.width`` x ``cfg.depth``, and the latent size ``d = cfg.latent_dim``."""
        from ..models.spec import spec

        D, d = self.shape[0], cfg.latent_dim

        def mlp(d_in: int, d_out: int) -> Spec:
            return spec("ConditionedMLP", d_in=d_in, d_out=d_out, width=cfg.width,
                        depth=cfg.depth, num_classes=num_classes)

        return mlp(D, d), mlp(D, d), mlp(d, D), d

    def student_network(self, cfg: ModelConfig, num_classes: int, target_params: int,
                        time_input: bool) -> nn.Module:
        """A baseline's network (B, D) -> (B, D): an MLP of twice KDM's depth whose width
        gives the parameter count nearest ``target_params``."""
        from ..models.mlp import ConditionedMLP
        from .common import nearest_size

        D, depth = self.shape[0], 2 * cfg.depth
        n_t = TIME_FEATURES if time_input else 0
        width = nearest_size(lambda w: ConditionedMLP(D, D, w, depth, num_classes, n_t),
                             target_params, range(8, 4 * cfg.width + 1))
        return ConditionedMLP(D, D, width, depth, num_classes, n_t)

    def distance(self, cfg: ModelConfig) -> Distance:
        """``cfg.distance`` between batches (B, D) as a scalar: l2 or pseudo-Huber."""
        if cfg.distance not in ("l2", "pseudo_huber"):
            raise KDMError(f"unknown distance {cfg.distance!r}; choose l2 or pseudo_huber")
        from .common import elementwise_distance

        return lambda a, b: elementwise_distance(a, b, cfg.distance, cfg.huber_c)

    def critic(self, cfg: ModelConfig) -> nn.Module:
        """The adversarial critic: (B, D) -> (B, 1) real/fake logits, a 3-layer MLP of width
        ``cfg.disc_channels``."""
        from ..models.mlp import MLP

        return MLP(self.shape[0], 1, cfg.disc_channels, 3)

    # -- evaluation --------------------------------------------------------------------------
    headline = "sliced_wasserstein"  # the metric bench plots against NFE
    headline_label = "sliced W1"
    columns = (Column("sliced W1", "sliced_wasserstein", ".4f"),
               Column("energy", "energy_distance", ".5f"),
               Column("paired sq. err", "paired_sq_error_per_sample", ".2e", se=True,
                      paired=True))

    def table_columns(self, settings: Mapping[str, Any]) -> tuple[Column, ...]:
        """The columns of a result: :attr:`columns`, whatever its ``settings``."""
        return self.columns

    def memory_needed(self, ecfg: EvalConfig) -> int:
        """Rough bytes an evaluation of ``ecfg.n`` examples holds at once: noise, samples,
        teacher samples, reference, the user's data and training pairs with their float64
        copies (14 float64 arrays (n, D))."""
        return ecfg.n * 112 * math.prod(self.shape)

    def sample_batch(self, ecfg: EvalConfig) -> int:
        """Rows per sampler call when the evaluation samples."""
        return self.block

    def timing_batch(self, ecfg: EvalConfig) -> int:
        """Rows of the batch whose throughput is timed."""
        return min(ecfg.n, 10_000)

    def reference(self, cfg: Config, data_known: bool, teacher: Sampler | None,
                  pairs: Mapping[str, np.ndarray] | None, sigma_max: float, num_classes: int,
                  device: torch.device) -> Reference:
        """``eval.n`` fresh teacher samples from noise of seed ``eval.reference_seed`` (labels
        uniform from the same seed), or the training pairs' clean side when the teacher is
        not available; with the data the teacher learned (``data_known``), up to ``eval.n``
        rows of it (a seeded subset) to score against as well."""
        import numpy as np
        import torch

        from ..evaluation.core import Reference, draw

        e = cfg.eval
        if teacher is not None:
            g = torch.Generator().manual_seed(e.reference_seed)
            noise = sigma_max * torch.randn(e.n, *self.shape, generator=g)
            labels = (torch.randint(0, num_classes, (e.n,), generator=g) if num_classes
                      else None)
            values = draw(teacher, noise, labels, self.sample_batch(e), device)
            name = "fresh teacher samples (eval.reference_seed)"
        elif pairs is not None:
            values, name = pairs["clean"], "training pairs (teacher not available)"
        else:
            raise KDMError("neither the teacher nor the training pairs of this run are on this "
                           "machine; evaluate it where its pair store is")
        if not data_known:
            return Reference(values, name)
        from ..data.arrays import vector_data

        data = vector_data(cfg)
        keep = np.sort(np.random.default_rng(e.reference_seed).permutation(len(data))[:e.n])
        source = cfg.data.source
        where = (source if source.endswith(".npy")
                 else f"{source} (data.n={cfg.data.n}, data.seed={cfg.data.seed})")
        return Reference(values, name, data[keep], f"{where}, n={len(keep)}")

    def scorer(self, cfg: Config, reference: Reference, labels: torch.Tensor | None,
               device: torch.device) -> Scorer:
        """Sliced Wasserstein and energy distance to the reference (and ``*_to_data`` to the
        user's data), paired error against the teacher's outputs on the same noise."""
        from ..evaluation.core import Scorer
        from ..metrics.vectors import as_points, distribution_metrics

        e, dim = cfg.eval, self.shape[0]
        ref = as_points(reference.values, "reference", dim)
        data = None if reference.data is None else as_points(reference.data, "data", dim)

        def score(samples: np.ndarray, target: np.ndarray | None) -> dict[str, float]:
            x = as_points(samples, "samples", dim)
            out = distribution_metrics(x, ref, e.projections, e.seed, e.energy_n)
            if data is not None:
                out.update({f"{k}_to_data": v for k, v in distribution_metrics(
                    x, data, e.projections, e.seed, e.energy_n).items()})
            if target is not None:
                out.update(self.paired(x, target))
            return out

        return Scorer(score, {})

    def heldout_scorer(self, cfg: Config, data_known: bool, labels: torch.Tensor | None,
                       device: torch.device) -> Callable[[np.ndarray], dict[str, float]] | None:
        """None: vectors are scored against fresh teacher samples, which training does not
        have (a dataset's extras, e.g. the checkerboard's inside rate, score them instead)."""
        return None

    def paired(self, samples: np.ndarray, target: np.ndarray) -> dict[str, float]:
        """``paired_*`` errors of samples against targets made from the same noise."""
        from ..metrics.vectors import paired_error

        return {f"paired_{k}": v for k, v in paired_error(samples, target).items()}

    def pair_errors(self, samples: np.ndarray, target: np.ndarray) -> np.ndarray:
        """Per-pair error (N,) float64 in the units of :meth:`paired`'s
        ``sq_error_per_sample``: each point's squared distance to its target."""
        import numpy as np

        d = np.asarray(samples, np.float64) - np.asarray(target, np.float64)
        return np.square(d).sum(axis=1)

    def features(self, cfg: Config, data_known: bool, device: torch.device
                 ) -> tuple[Callable[[np.ndarray], np.ndarray], dict[str, Any]]:
        """The space nearest-neighbour distances between points are measured in: the points
        (N, D) themselves, as float32."""
        import numpy as np

        return (lambda x: np.asarray(x, np.float32)), {"space": "the vectors themselves"}

    def read_examples(self, path: Path) -> np.ndarray:
        """Examples a user names, e.g. points to keep out of a store: a ``.npy`` (N, D);
        float32."""
        from ..data.arrays import load_array

        if Path(path).is_dir():
            raise KDMError(f"{path} is a directory; give the {self.shape[0]}-D examples as one "
                           f".npy of shape (N, {self.shape[0]})")
        return load_array(path, shape=self.shape, what="examples")

    def quality_check(self, kdm: Mapping[str, Any], kd: Mapping[str, Any]) -> dict[str, Any]:
        """Bench: KDM's sliced W1 at most KD's (one-step rows)."""
        ratio = kdm["sliced_wasserstein"] / kd["sliced_wasserstein"]
        return {"kdm_sliced_wasserstein_over_kd": ratio, "quality_target_met": ratio <= 1,
                "quality_check": f"KDM sliced W1 / KD sliced W1 = {ratio:.3f} (target <= 1)"}

    def plots(self, out: Path, shown: Sequence[Shown], reference: Reference,
              extras: DatasetExtras | None, target: str | None, **_: Any) -> dict[str, Path]:
        """``scatter.png`` of the first samples of each entry (D = 2; for D > 2 projected on
        the first two principal axes of the reference; none for D = 1), with the dataset's
        extra figures."""
        if self.shape[0] == 1:
            return {}
        from ..analysis import plots

        to_2d, axes = self._projection(reference.values)
        paths = {"scatter": plots.scatter_compare(
            {s.name: to_2d(s.samples[:SHOWN]) for s in shown}, Path(out) / "scatter.png",
            background=None if extras is None else extras.background,
            caption=None if extras is None else extras.caption, axis_labels=axes)}
        if extras is not None:
            paths.update(extras.plots(Path(out), {s.name: (s.noise, s.samples) for s in shown},
                                      target))
        return paths

    def picture(self, panels: Mapping[str, np.ndarray], path: Path) -> Path:
        """A scatter plot of each panel's points (projected as in :meth:`plots`)."""
        from ..analysis import plots

        if self.shape[0] == 1:
            raise KDMError("1-D samples have no scatter picture; drop --grid")
        to_2d, axes = self._projection(next(iter(panels.values())))
        return plots.scatter_compare({k: to_2d(v) for k, v in panels.items()}, path,
                                     axis_labels=axes)

    # -- analysis ----------------------------------------------------------------------------
    def semantics(self, cfg: Config, data_known: bool, extras: DatasetExtras | None,
                  device: torch.device) -> Semantics:
        """What ``kdm analyze`` compares points by: the dataset's semantic labels (the
        checkerboard's square) where its extras give them, else none; outliers are measured in
        the output coordinates."""
        from ..analysis.latent import Semantics, flat

        if extras is None:
            return Semantics(None, None, flat, "output coordinates")
        return Semantics(extras.semantic_labels, extras.semantic_name, flat,
                         "output coordinates")

    def sequences(self, panels: Mapping[str, np.ndarray], path: Path, context: np.ndarray,
                  extras: DatasetExtras | None) -> Path | None:
        """Sequences of points (P, L, D) per panel (an interpolation, a walk along a
        direction) drawn as paths over the ``context`` points (N, D), projected as in
        :meth:`plots`; none for D = 1."""
        if self.shape[0] == 1:
            return None
        from ..analysis import plots

        to_2d, axes = self._projection(context)
        return plots.paths({k: to_2d(v.reshape(-1, self.shape[0])).reshape(*v.shape[:2], 2)
                            for k, v in panels.items()}, path, context=to_2d(context[:SHOWN]),
                           background=None if extras is None else extras.background,
                           axis_labels=axes)

    def outliers(self, rows: Mapping[str, tuple[np.ndarray, np.ndarray, np.ndarray]],
                 path: Path, extras: DatasetExtras | None, top: int) -> Path | None:
        """Per row (name -> noise (N, D), outputs (N, D), outlier scores (N,)): the outputs
        and their noise coloured by score, the ``top`` highest circled; none for D = 1."""
        if self.shape[0] == 1:
            return None
        from ..analysis import plots

        shown = {}
        for name, (noise, x, scores) in rows.items():
            out_2d, noise_2d = self._projection(x)[0], self._projection(noise)[0]
            shown[name] = (noise_2d(noise[:SHOWN]), out_2d(x[:SHOWN]), scores[:SHOWN])
        return plots.outlier_scatter(shown, path, top,
                                     background=None if extras is None else extras.background)

    def _projection(self, basis_of: np.ndarray) -> tuple[Any, tuple[str, str] | None]:
        """Points (N, D) -> (N, 2): unchanged for D = 2, else onto the first two principal
        axes of ``basis_of`` (centred on its mean); and the axis labels."""
        import numpy as np

        if self.shape[0] == 2:
            return (lambda x: x), None
        ref = np.asarray(basis_of, dtype=np.float64)
        mean = ref.mean(axis=0)
        axes = np.linalg.svd(ref - mean, full_matrices=False)[2][:2].T  # (D, 2)
        return (lambda x: (np.asarray(x, dtype=np.float64) - mean) @ axes), (
            "principal axis 1", "principal axis 2")
