"""``kdm analyze``: what a distilled KDM's latent holds, measured on the user's own model.

Protocol: ``n`` held-out noise inputs x_T of seed ``eval.seed`` (disjoint from the pair seeds)
and, for a conditional model, uniform labels y from the same seed
(:meth:`~..api.StudentRun.noise`, :meth:`~..api.StudentRun.labels`); their pushed latents
``z = K E_T(x_T / sigma_max) + B y`` and outputs ``x = D(z)`` (decoded to images for a
latent student). The domain's :class:`~.latent.Semantics` say what a semantic label is (the
checkerboard's square, the evaluation classifier's prediction) and where outliers are measured.

- *proximity*: each sample's ``k`` nearest neighbours in z, in x_T, and ``k`` random others;
  how often they share its semantic label, their mean distance in output space, and the
  Spearman rank correlation of latent (and noise) distance with output distance over random
  pairs. In a conditional model every comparison stays within one requested label
  (neighbours, random ones and pairs share the sample's y): across labels ``B y`` alone would
  group the samples of a label, and the requested label would make agreement trivial.
- *interpolation*: outputs along straight lines between two samples' pushed latents (decoded
  with the first one's label), next to the spherical path between their noises through the
  whole model (it keeps the noise's norm; a straight line would shrink it).
- *spectrum*: eigenvalues of the applied K against the unit circle; the leading
  eigen-directions v (by |λ|): ``D(z + a s v)`` for a in [-2, 2], s the latents' std along v.
- *outliers*: each sample's mean distance to its ``k`` nearest samples (of its label) in the
  semantic feature space, and the same for the teacher's first ``n`` pairs of the store.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from ..api import StudentRun, data_source
from ..errors import KDMError
from ..evaluation.core import draw
from ..evaluation.extras import DatasetExtras, dataset_extras
from ..io import write_json
from ..models.koopman import spectra
from ..pairs import PairStore
from . import latent, plots

RANK_PAIRS = 20_000  # random pairs of the rank correlation
INTERPOLATIONS = 6  # pairs of samples walked between
STEPS = 9  # points per interpolation and per eigen-direction walk
DIRECTIONS = 4  # leading eigen-directions shown
TOP = 16  # outliers listed and shown
SHOWN_NEIGHBOURS = 7  # neighbours per query in the neighbours picture
BASES = 16  # samples the output change along each eigen-direction is averaged over
Rows = tuple[np.ndarray, np.ndarray, np.ndarray]  # noise, outputs, outlier scores (N, ...)


class _Latent:
    """A KDM's one-step path split at the pushed latent, on arrays in batches."""

    def __init__(self, gen: StudentRun):
        self.gen, self.m = gen, gen.model
        self.batch = gen.domain.sample_batch(gen.cfg.eval)

    def push(self, noise: torch.Tensor, labels: torch.Tensor | None) -> np.ndarray:
        """x_T (N, *shape) [, y (N,)] -> z = K E_T(x_T / sigma_max) + B y, (N, d)."""
        def f(x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
            y = self.m.one_hot(y, len(x))
            return self.m.koopman(self.m.encode_noise(x, y), y)

        return draw(f, noise, labels, self.batch, self.gen.device)

    def decode(self, z: np.ndarray, labels: torch.Tensor | None) -> np.ndarray:
        """z (N, d) [, y (N,)] -> outputs (N, *output_shape)."""
        decode = self.gen.decode

        def f(z: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
            x = self.m.decode(z, self.m.one_hot(y, len(z)))
            return x if decode is None else decode(x)

        return draw(f, torch.from_numpy(np.ascontiguousarray(z, np.float32)), labels,
                    self.batch, self.gen.device)


def analyze_run(run: str | Path | StudentRun, out: str | Path | None = None, n: int = 2000,
                k: int = 10, seed: int | None = None, device: str = "auto",
                make_plots: bool = True, progress: bool = True) -> dict[str, Any]:
    """Analyse the latent of a KDM run (a run directory, or a loaded
    :class:`~..api.StudentRun`) on ``n`` noise inputs of ``seed`` (default ``eval.seed``)
    with ``k`` neighbours: writes ``analysis.json`` (and its PNGs, unless ``make_plots`` is
    off) into ``out`` (default ``RUN/analysis``) and returns the result (see the module
    docstring)."""
    gen = run if isinstance(run, StudentRun) else StudentRun.load(run, device=device)
    if getattr(gen.model, "K", None) is None:
        raise KDMError(f"{gen.run or 'this model'} is a {gen.method!r} student without a "
                       "Koopman latent; kdm analyze needs a KDM run (model.method=kdm)")
    if out is None and gen.run is None:
        raise KDMError("give out=DIR for a model without a run directory")
    out = Path(out) if out is not None else gen.run / "analysis"
    cfg = gen.cfg
    seed = cfg.eval.seed if seed is None else seed
    noise, labels = gen.noise(n, seed), gen.labels(n, seed)
    groups = None if labels is None else labels.numpy()
    latent.check_neighbours(groups, n, k)  # before any work is done or anything written
    source = data_source(cfg, gen.meta)
    extras = dataset_extras(source)
    sem = gen.domain.semantics(cfg, source is not None, extras, gen.device)
    rng = np.random.default_rng(seed)
    lat = _Latent(gen)
    stages = tqdm(total=5, desc="analyze", unit="stage", disable=None if progress else True)

    z = lat.push(noise, labels)
    x = lat.decode(z, labels)
    proximity, near = _proximity(z, noise.numpy(), x, groups, k, sem, rng)
    stages.update()
    walks, interpolation = _interpolation(lat, z, noise, labels, groups, rng)
    stages.update()
    directions, spectrum = _directions(lat, gen, z, labels)
    stages.update()
    scores = latent.knn_scores(sem.features(x), k, groups)
    outliers = {"space": sem.feature_name, "k": k,
                "samples": latent.outlier_summary(scores, noise.numpy(), TOP, groups)}
    pairs = _pair_outliers(gen, n, k, sem)
    outliers["pairs"] = pairs[0] if pairs is not None else None
    stages.update()

    out.mkdir(parents=True, exist_ok=True)
    paths = _plots(gen, out, x, noise.numpy(), scores, near, walks, directions, pairs, extras) \
        if make_plots else {}
    stages.update()
    stages.close()
    result = {"run": str(gen.run.resolve()) if gen.run is not None else None,
              "method": gen.method, "shape": list(gen.shape), "data": source,
              "settings": {"n": n, "k": k, "seed": seed, "noise": "eval.seed" if
                           seed == cfg.eval.seed else "seed", "weights": "ema",
                           "device": str(gen.device), "semantic_label": sem.label_name,
                           "output_distance": "Euclidean, in output space",
                           "within_requested_label": labels is not None,
                           "rank_pairs": RANK_PAIRS},
              "proximity": proximity, "interpolation": interpolation, "spectrum": spectrum,
              "outliers": outliers,
              "plots": {k: str(v.resolve()) for k, v in paths.items()}}
    write_json(out / "analysis.json", result)
    return result


def _plots(gen: StudentRun, out: Path, x: np.ndarray, noise: np.ndarray, scores: np.ndarray,
           near: dict[str, np.ndarray], walks: dict[str, np.ndarray],
           directions: dict[str, np.ndarray], pairs: tuple[Any, Rows] | None,
           extras: DatasetExtras | None) -> dict[str, Path]:
    """The PNGs of the analysis in ``out``: name -> path (those the domain can draw)."""
    queries = np.arange(min(INTERPOLATIONS, len(x)))
    shown = min(SHOWN_NEIGHBOURS, near["latent"].shape[1])
    paths: dict[str, Path | None] = {
        "neighbours": gen.domain.sequences(
            {f"latent neighbours (k={shown})": _rows(x, queries, near["latent"][:, :shown]),
             f"noise neighbours (k={shown})": _rows(x, queries, near["noise"][:, :shown])},
            out / "neighbours.png", x, extras),
        "interpolation": gen.domain.sequences(walks, out / "interpolation.png", x, extras),
        "spectrum": plots.spectrum(spectra(gen.model.K), out / "spectrum.png"),
        "eigen_directions": gen.domain.sequences(directions, out / "eigen_directions.png",
                                                 x, extras)}
    rows: dict[str, Rows] = {"KDM samples": (noise, x, scores)}
    if pairs is not None:
        rows["teacher pairs"] = pairs[1]
    paths["outliers"] = gen.domain.outliers(rows, out / "outliers.png", extras, TOP)
    if extras is not None:  # e.g. the checkerboard's noise structure
        paths.update(extras.plots(out, {name: (r[0], r[1]) for name, r in rows.items()}, None))
    return {k: v for k, v in paths.items() if v is not None}


def _rows(x: np.ndarray, queries: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Each query's output followed by its neighbours': (Q, 1 + k, *shape)."""
    return np.concatenate([x[queries][:, None], x[idx[queries]]], axis=1)


def _proximity(z: np.ndarray, noise: np.ndarray, x: np.ndarray, groups: np.ndarray | None,
               k: int, sem: latent.Semantics, rng: np.random.Generator
               ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The proximity numbers and the neighbour indices (N, k) of each space."""
    near = {"latent": latent.neighbours(z, k, groups),
            "noise": latent.neighbours(noise, k, groups),
            "random": latent.random_neighbours(len(z), k, groups, rng)}
    out: dict[str, Any] = {"output_distance": {s: latent.mean_distance(x, i)
                                               for s, i in near.items()}}
    if sem.labels is not None:
        labels = sem.labels(x)
        out["label"] = sem.label_name
        out["agreement"] = {s: latent.agreement(labels, i) for s, i in near.items()}
        out["unlabelled_fraction"] = float(np.mean(labels < 0))
    i, j = latent.random_pairs(len(z), RANK_PAIRS, groups, rng)
    d_out = latent.pair_distances(x, i, j)
    out["rank_correlation"] = {
        "latent_vs_output": latent.spearman(latent.pair_distances(z, i, j), d_out),
        "noise_vs_output": latent.spearman(latent.pair_distances(noise, i, j), d_out)}
    return out, near


def _interpolation(lat: _Latent, z: np.ndarray, noise: torch.Tensor,
                   labels: torch.Tensor | None, groups: np.ndarray | None,
                   rng: np.random.Generator) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Outputs (P, L, *shape) along the latent and the noise walks, and their numbers."""
    a = np.arange(min(INTERPOLATIONS, len(z)))
    b = latent.random_neighbours(len(z), 1, groups, rng)[a, 0]
    t = torch.linspace(0, 1, STEPS)
    y = None if labels is None else labels[a].repeat_interleave(STEPS)
    zl = latent.lerp(torch.from_numpy(z[a]), torch.from_numpy(z[b]), t)
    x_lat = lat.decode(zl.flatten(0, 1).numpy(), y)
    xn = latent.slerp(noise[a], noise[b], t).flatten(0, 1)
    x_noise = lat.decode(lat.push(xn, y), y)
    shape = (len(a), STEPS, *x_lat.shape[1:])
    walks = {"latent (straight line)": x_lat.reshape(shape),
             "noise (spherical)": x_noise.reshape(shape)}
    return walks, {"pairs": [[int(i), int(j)] for i, j in zip(a, b, strict=True)],
                   "steps": STEPS, "noise_path": "spherical (slerp)",
                   "path_length_over_end_distance": {
                       "latent": latent.path_ratio(walks["latent (straight line)"]),
                       "noise": latent.path_ratio(walks["noise (spherical)"])}}


def _directions(lat: _Latent, gen: StudentRun, z: np.ndarray, labels: torch.Tensor | None
                ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The walks along K's leading eigen-directions from the first sample (M, L, *shape),
    and the spectrum's numbers."""
    K = gen.model.K.matrix()
    ev = spectra(gen.model.K)["K (applied)"]
    lam, V = latent.eigen_directions(K, DIRECTIONS)
    s = (z.astype(np.float64) @ V).std(axis=0)  # (M,) latent spread along each direction
    a = np.linspace(-2, 2, STEPS)
    walk = z[0][None, None] + (a[None, :, None] * s[:, None, None]) * V.T[:, None, :]
    y0 = None if labels is None else labels[:1].repeat(walk.shape[0] * STEPS)
    x = lat.decode(walk.reshape(-1, z.shape[1]), y0)
    # output change per latent std along v, over several starting samples
    base = z[:BASES]
    y = None if labels is None else labels[:len(base)]
    change = []
    for m in range(V.shape[1]):
        step = s[m] * V[:, m][None]
        diff = lat.decode(base + step, y) - lat.decode(base - step, y)
        change.append(float(np.linalg.norm(latent.flat(diff), axis=1).mean() / 2))
    mod = np.abs(ev)
    return ({"eigen-directions of K, z + a s v, a = -2..2": x.reshape(
                *walk.shape[:2], *x.shape[1:])},
            {"d": int(K.shape[0]), "spectral_radius": float(mod.max()),
             "outside_unit_circle": int((mod > 1).sum()),
             "modulus_quantiles": {q: float(np.quantile(mod, float(q)))
                                   for q in ("0.1", "0.5", "0.9")},
             "leading": [{"eigenvalue": [float(v.real), float(v.imag)],
                          "modulus": float(abs(v)), "angle": float(np.angle(v)),
                          "latent_std_along": float(s[m]), "output_change_per_std": change[m]}
                         for m, v in enumerate(lam)]})


def _pair_outliers(gen: StudentRun, n: int, k: int, sem: latent.Semantics
                   ) -> tuple[dict[str, Any], Rows] | None:
    """Outlier scores of the teacher's first ``n`` pairs (their clean side, decoded for a
    latent student; store rows as indices) and (noise, outputs, scores); None where the
    store is not on this machine."""
    where = Path(gen.meta["pairs"])
    if not (where / "manifest.json").is_file():
        return None
    store = PairStore(where)
    arrays = store.load(np.arange(min(n, len(store))))
    clean = arrays["clean"]
    if gen.decode is not None:
        clean = draw(lambda z, y: gen.decode(z), torch.from_numpy(clean), None,
                     gen.domain.sample_batch(gen.cfg.eval), gen.device)
    groups = arrays.get("label") if gen.num_classes else None
    least = int(np.unique(groups, return_counts=True)[1].min()) if groups is not None \
        else len(clean)
    kp = min(k, least - 1)  # a small store: fewer neighbours
    if kp < 1:
        return None
    scores = latent.knn_scores(sem.features(clean), kp, groups)
    summary = {"rows": len(clean), "k": kp,
               **latent.outlier_summary(scores, arrays["noise"], TOP, groups)}
    return summary, (arrays["noise"], clean, scores)
