"""Which latents a job works on: ``--features 50`` (the first 50 live ones) or ``--features
0-9,15,20`` (those latents, ranges inclusive)."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class FeatureSelection:
    """Which latents to work on: explicit ``latents``, or the first ``count`` live ones (exactly one set)."""

    latents: tuple[int, ...] | None = None
    count: int | None = None

    def __post_init__(self) -> None:
        if (self.latents is None) == (self.count is None):
            raise ValueError("a FeatureSelection has either latents or a count")
        if self.count is not None and self.count < 0:
            raise ValueError(f"count must be >= 0, got {self.count}")

    def select(self, alive: Sequence[int]) -> list[int]:
        """The selected latents among ``alive`` (sorted live latents), in increasing order."""
        if self.count is not None:
            return sorted(alive)[:self.count]
        wanted = set(self.latents)
        return [f for f in sorted(alive) if f in wanted]


_RANGE = re.compile(r"^(\d+)-(\d+)$")


def parse_feature_selection(spec: str) -> FeatureSelection:
    """``"50"``: the first 50 live features; ``"0-9,15,20"``: those latents (ranges inclusive).

    A bare number is a count; a single latent is written as a range (``"15-15"``) or in a list
    (``"15,"``).
    """
    spec = spec.strip()
    if re.fullmatch(r"\d+", spec):
        return FeatureSelection(count=int(spec))
    latents: list[int] = []
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        if m := _RANGE.match(part):
            lo, hi = int(m.group(1)), int(m.group(2))
            if hi < lo:
                raise ValueError(f"bad range {part!r} in feature selection {spec!r}: end before start")
            latents.extend(range(lo, hi + 1))
        elif part.isdigit():
            latents.append(int(part))
        else:
            raise ValueError(f"bad feature selection {spec!r}: expected a count (50) or latents (0-9,15,20)")
    if not latents:
        raise ValueError(f"feature selection {spec!r} names no latent")
    return FeatureSelection(latents=tuple(sorted(set(latents))))


def as_selection(features: FeatureSelection | str | Iterable[int] | None) -> FeatureSelection | None:
    """A selection from what callers pass: a :class:`FeatureSelection`, a spec string, latent ids, or None."""
    if features is None or isinstance(features, FeatureSelection):
        return features
    if isinstance(features, str):
        return parse_feature_selection(features)
    return FeatureSelection(latents=tuple(sorted({int(f) for f in features})))
