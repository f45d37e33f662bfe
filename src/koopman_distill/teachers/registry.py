"""Teacher kinds and their loaders: a pair store's teacher rebuilt from the spec its manifest
records, whoever made the store.

A loader is ``loader(spec, device) -> Teacher`` for ``spec = teacher.spec()`` (a JSON object
with ``"kind"``). It raises :class:`TeacherUnavailable` when the teacher cannot be rebuilt on
this machine (files gone or changed). The teachers trained here register their kinds in
:mod:`.runs`; a package with its own teacher kind calls :func:`register` once.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import torch

from ..errors import KDMError, warn
from ..protocols import Teacher

if TYPE_CHECKING:
    from ..config import PairsConfig

Loader = Callable[[dict[str, Any], torch.device], Teacher]
# target (what follows "kind:" in --teacher) and the pairs settings -> the teacher
Parser = Callable[[str, "PairsConfig"], Teacher]
# a teacher identity -> its latent decoder (B, *latent) -> (B, *image), or None (pixel space)
DecoderLoader = Callable[[dict[str, Any], torch.device], Callable | None]
_LOADERS: dict[str, Loader] = {}
_PARSERS: dict[str, Parser] = {}
_DECODERS: dict[str, DecoderLoader] = {}


class TeacherUnavailable(KDMError):
    """A teacher that cannot be rebuilt on this machine: its files are gone or changed."""


def register(kind: str, loader: Loader, parse: Parser | None = None,
             decoder: DecoderLoader | None = None) -> None:
    """Make teachers of ``kind`` rebuildable from their spec by ``loader``; with ``parse``,
    ``kind:TARGET`` also names one in ``kdm pairs --teacher`` and :func:`~..api.make_pairs`;
    with ``decoder``, a teacher of latents names the decoder that turns them into images."""
    _LOADERS[kind] = loader
    if parse is not None:
        _PARSERS[kind] = parse
    if decoder is not None:
        _DECODERS[kind] = decoder


def latent_decoder(identity: Any, device: str | torch.device = "cpu") -> Callable | None:
    """The decoder of a teacher that makes latents, from its ``identity()`` (as a store's
    manifest and a student run record it): (B, *latent) -> (B, C, H, W) images; None for a
    teacher in pixel space."""
    kind = identity.get("kind") if isinstance(identity, Mapping) else None
    if not isinstance(kind, str) or kind not in _DECODERS:
        return None
    return _DECODERS[kind](dict(identity), torch.device(device))


def teacher_prefixes() -> list[str]:
    """The ``kind:`` prefixes a teacher argument may start with, sorted."""
    return sorted(f"{kind}:" for kind in _PARSERS)


def teacher_from_arg(text: str, pairs: PairsConfig) -> Teacher | None:
    """The teacher ``kind:TARGET`` names (``diffusers:DIR``, ``denoiser:MODULE:FUNCTION``,
    ...), set up with the ``pairs`` solver settings; None when ``text`` does not start with a
    registered kind (a teacher run directory)."""
    kind, sep, target = str(text).partition(":")
    if not sep or kind not in _PARSERS:
        return None
    if not target:
        raise KDMError(f"--teacher {text} names no {kind} teacher; give {kind}:TARGET")
    return _PARSERS[kind](target, pairs)


def teacher_kinds() -> list[str]:
    """The registered teacher kinds, sorted."""
    return sorted(_LOADERS)


def load_teacher_spec(spec: Mapping[str, Any], device: str | torch.device = "cpu") -> Teacher:
    """The teacher ``spec`` (a ``teacher.spec()``) describes, rebuilt on ``device``."""
    kind = spec.get("kind") if isinstance(spec, Mapping) else None
    if not isinstance(kind, str):
        raise KDMError(f"a teacher spec must be an object with a 'kind' string, got {spec!r}")
    if kind not in _LOADERS:
        raise KDMError(f"no loader for teacher kind {kind!r} (known: "
                       f"{', '.join(teacher_kinds())}); register one with "
                       "koopman_distill.teachers.register, or pass the teacher object")
    return _LOADERS[kind](dict(spec), torch.device(device))


def store_teacher(manifest: Any, device: str | torch.device = "cpu") -> Teacher | None:
    """The teacher of a pair store, rebuilt on ``device``; None when it cannot be rebuilt on
    this machine (a kind with no loader, such as imported pairs, or files gone: a warning says
    which).

    ``manifest`` is a :class:`~..pairs.PairStore`, its manifest, or a KDM run's ``run.json``
    (whose ``teacher`` entry is the store's). A store written before manifests recorded a spec
    stands for it with its teacher entry and sampler.
    """
    m = getattr(manifest, "manifest", manifest)
    entry = m.get("teacher") or {}
    spec = entry.get("spec") or {**entry, "sampler": m.get("sampler")}
    if spec.get("kind") not in _LOADERS:
        return None
    try:
        return load_teacher_spec(spec, device)
    except TeacherUnavailable as e:
        warn(str(e))
        return None
