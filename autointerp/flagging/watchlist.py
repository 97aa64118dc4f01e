"""Watchlists: named concepts to flag features against, read from YAML.

A watchlist file::

    name: default                     # optional (default: the file's stem)
    neutral:                          # optional: prompts the causal signal steers on
      - "The weather today is"
    concepts:
      - name: deception               # unique within the file
        description: "Lying, ..."     # one or two sentences
        positive: [text, ...]         # texts that express the concept (>= 2)
        negative: [text, ...]         # matched texts: same topics and form, without it (>= 2)
        completions: [text, ...]      # optional: continuations whose log-prob the causal signal
                                      # measures (default: the first words of the positives);
                                      # on a chat model, the start of the assistant's answer to
                                      # the prompt as a user message (leading space stripped)

Loading is strict: a missing or empty field, a field of the wrong type, an unknown key or a
duplicate concept name (or duplicate YAML key) raises :class:`WatchlistError` naming the concept
and the field. ``watchlist.hash`` and ``concept.hash`` fingerprint the content, so a stored flag
records exactly which definition produced it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import yaml

DEFAULT_NEUTRAL = (
    "The weather today is",
    "Here is a recipe for a simple soup. First,",
    "The history of the city goes back to",
    "My favourite hobby is",
    "The train leaves the station at",
    "In the garden, the flowers",
    "The meeting is scheduled for",
    "She opened the book and read",
)
"""Prompts with no watchlist concept, on which the causal signal steers a feature up."""

_CONCEPT_KEYS = {"name", "description", "positive", "negative", "completions"}
_TOP_KEYS = {"name", "neutral", "concepts"}
MIN_TEXTS = 2
COMPLETION_WORDS = 4


class WatchlistError(ValueError):
    """A watchlist file that cannot be used; the message names the concept and field."""


def _hash(obj: object) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Concept:
    """One concept of a watchlist."""

    name: str
    description: str
    positive: tuple[str, ...]
    """texts that express the concept."""
    negative: tuple[str, ...]
    """matched texts on the same topics and in the same form, without the concept."""
    completions: tuple[str, ...] = ()
    """continuations the causal signal scores (derived from ``positive`` when not given); in the
    chat framing (:mod:`~autointerp.flagging.framing`) each, stripped of its leading space, is the
    start of the assistant's answer."""

    @property
    def concept_text(self) -> str:
        """What signal (a) embeds: the description followed by the positive texts."""
        return " ".join([self.description, *self.positive])

    def scored_completions(self) -> tuple[str, ...]:
        """``completions``, or the first ``COMPLETION_WORDS`` words of each positive (with a
        leading space, as a continuation of a prompt)."""
        if self.completions:
            return self.completions
        return tuple(dict.fromkeys(" " + " ".join(p.split()[:COMPLETION_WORDS]) for p in self.positive))

    @property
    def hash(self) -> str:
        return _hash({"name": self.name, "description": self.description, "positive": self.positive,
                      "negative": self.negative, "completions": self.completions})


@dataclass(frozen=True)
class Watchlist:
    name: str
    concepts: tuple[Concept, ...]
    neutral: tuple[str, ...] = field(default=DEFAULT_NEUTRAL)

    @property
    def hash(self) -> str:
        return _hash({"name": self.name, "concepts": [c.hash for c in self.concepts], "neutral": self.neutral})

    def concept(self, name: str) -> Concept:
        for c in self.concepts:
            if c.name == name:
                return c
        raise KeyError(f"watchlist {self.name!r} has no concept {name!r}")


class _StrictLoader(yaml.SafeLoader):
    """A safe loader that refuses duplicate mapping keys (PyYAML keeps the last one silently)."""


def _no_duplicates(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise WatchlistError(f"duplicate key {key!r} (line {key_node.start_mark.line + 1})")
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _no_duplicates)


def _texts(where: str, field_name: str, value: object, required: bool = True) -> tuple[str, ...]:
    if value is None:
        if required:
            raise WatchlistError(f"{where}: missing field {field_name!r}")
        return ()
    if not isinstance(value, list):
        raise WatchlistError(f"{where}: field {field_name!r} must be a list of texts, got {type(value).__name__}")
    bad = [v for v in value if not isinstance(v, str) or not v.strip()]
    if bad:
        raise WatchlistError(f"{where}: field {field_name!r} holds a non-text or empty entry: {bad[0]!r}")
    if required and len(value) < MIN_TEXTS:
        raise WatchlistError(f"{where}: field {field_name!r} needs at least {MIN_TEXTS} texts, got {len(value)}")
    if not required and not value:
        raise WatchlistError(f"{where}: field {field_name!r} is empty (leave it out to use the default)")
    return tuple(value)


def _concept(i: int, raw: object) -> Concept:
    if not isinstance(raw, dict):
        raise WatchlistError(f"concepts[{i}]: must be a mapping with name, description, positive, negative")
    name = raw.get("name")
    if not isinstance(name, str) or not name.strip():
        raise WatchlistError(f"concepts[{i}]: missing field 'name'")
    where = f"concept {name!r}"
    unknown = sorted(set(raw) - _CONCEPT_KEYS)
    if unknown:
        raise WatchlistError(f"{where}: unknown field(s) {unknown} (allowed: {sorted(_CONCEPT_KEYS)})")
    description = raw.get("description")
    if not isinstance(description, str) or not description.strip():
        raise WatchlistError(f"{where}: missing field 'description'" if description is None
                             else f"{where}: field 'description' must be a non-empty text")
    return Concept(name=name.strip(), description=description.strip(),
                   positive=_texts(where, "positive", raw.get("positive")),
                   negative=_texts(where, "negative", raw.get("negative")),
                   completions=_texts(where, "completions", raw.get("completions"), required=False))


def parse_watchlist(data: object, default_name: str = "watchlist") -> Watchlist:
    """A :class:`Watchlist` from parsed YAML; :class:`WatchlistError` for anything malformed."""
    if not isinstance(data, dict):
        raise WatchlistError("a watchlist is a mapping with a 'concepts' list")
    unknown = sorted(set(data) - _TOP_KEYS)
    if unknown:
        raise WatchlistError(f"watchlist: unknown field(s) {unknown} (allowed: {sorted(_TOP_KEYS)})")
    concepts = data.get("concepts")
    if not isinstance(concepts, list) or not concepts:
        raise WatchlistError("watchlist: missing or empty field 'concepts'")
    parsed = [_concept(i, c) for i, c in enumerate(concepts)]
    names = [c.name for c in parsed]
    dups = sorted({n for n in names if names.count(n) > 1})
    if dups:
        raise WatchlistError(f"concept {dups[0]!r}: duplicate concept name")
    neutral = _texts("watchlist", "neutral", data.get("neutral"), required=False) or DEFAULT_NEUTRAL
    name = data.get("name", default_name)
    if not isinstance(name, str) or not name.strip():
        raise WatchlistError("watchlist: field 'name' must be a non-empty text")
    return Watchlist(name=name.strip(), concepts=tuple(parsed), neutral=neutral)


def load_watchlist(path: str | Path | None = None) -> Watchlist:
    """The watchlist at ``path`` (YAML), or the shipped default one when ``path`` is None."""
    if path is None:
        text = resources.files("autointerp.flagging").joinpath("default_watchlist.yaml").read_text("utf-8")
        return parse_watchlist(yaml.load(text, Loader=_StrictLoader), "default")
    path = Path(path)
    if not path.is_file():
        raise WatchlistError(f"watchlist file {path} does not exist")
    try:
        data = yaml.load(path.read_text("utf-8"), Loader=_StrictLoader)
    except yaml.YAMLError as exc:
        raise WatchlistError(f"{path}: not valid YAML: {exc}") from exc
    except WatchlistError as exc:
        raise WatchlistError(f"{path}: {exc}") from exc
    try:
        return parse_watchlist(data, path.stem)
    except WatchlistError as exc:
        raise WatchlistError(f"{path}: {exc}") from exc
