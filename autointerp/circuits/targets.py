"""What a circuit traces: the run's dictionaries spliced into the model (:class:`Spliced`),
the prompt's tokens, and the target (:func:`parse_target`). See :mod:`autointerp.circuits.graph`."""

from __future__ import annotations

import re
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from autointerp.runfolder import RunFolder


class CircuitError(ValueError):
    """A circuit that cannot be computed: unknown target, prompt too long, no dictionary, ..."""


# ------------------------------------------------------------------------------------ dictionaries
@dataclass
class Spliced:
    """One dictionary spliced into the model."""

    name: str
    dictionary: object
    input_hookpoint: str
    target_hookpoint: str
    keep_T: Tensor
    """positions encoded (the cache's exclusion rules), ``[T]`` bool."""
    order: int = 0
    """when the dictionary writes its output in the forward pass (an event count)."""
    order_in: int = 0
    """when it reads its input: a dictionary is upstream of another when ``order < other.order_in``."""
    x_in_Td: Tensor | None = None
    z_TF: Tensor | None = None
    err_Td: Tensor | None = None
    pre_TF: Tensor | None = None


def _run_dictionaries(run: RunFolder, names: list[str] | None) -> list[tuple[str, Path, dict]]:
    from autointerp.dictionary_folder import dictionary_name, provenance

    dirs = run.dictionary_dirs()
    if not dirs:
        raise CircuitError(f"{run.root} has no dictionary (looked in {run.dictionaries})")
    found = {dictionary_name(d): (d, provenance(d)) for d in dirs}
    if names is not None:
        unknown = [n for n in names if n not in found]
        if unknown:
            raise CircuitError(f"unknown dictionary {unknown[0]!r}; the run has {sorted(found)}")
        found = {n: found[n] for n in names}
    by_target: dict[str, str] = {}
    for n, (_, prov) in found.items():
        tgt = prov["target_hookpoint"]
        if tgt in by_target:
            raise CircuitError(f"dictionaries {by_target[tgt]!r} and {n!r} both write {tgt}: a replacement model "
                               "splices one dictionary per hook point; choose with dictionaries=[...]")
        by_target[tgt] = n
    return [(n, d, prov) for n, (d, prov) in found.items()]


def tokenize_prompt(tokenizer, prompt: str, context: dict, markup: bool = False) -> Tensor:
    """The prompt's token ids ``[T]`` as the cache cut contexts (BOS first when it prepended one);
    ``CircuitError`` when empty or longer than ``ctx_len``. ``markup``: the prompt is chat-template
    text whose special tokens (``<|im_start|>``) are markup, tokenised as the cache tokenises chat
    corpora; otherwise (plain text, the default) they are split into ordinary tokens."""
    if not prompt or not prompt.strip():
        raise CircuitError("empty prompt")
    ids = tokenizer(prompt, add_special_tokens=False, split_special_tokens=not markup)["input_ids"]
    head = [tokenizer.bos_token_id] if context["prepend_bos"] else []
    ids = head + list(ids)
    if len(ids) > context["ctx_len"]:
        raise CircuitError(f"the prompt is {len(ids)} tokens ({'with BOS, ' if head else ''}), longer than the "
                           f"dictionaries' context length of {context['ctx_len']} tokens: shorten it")
    return torch.tensor(ids, dtype=torch.long)


# ------------------------------------------------------------------------------------------ target
@dataclass
class Target:
    """What the graph explains (see the module docstring)."""

    spec: str
    kind: str
    """``feature`` or ``logit``."""
    dictionary: str | None = None
    latent: int | None = None
    feature_id: int | None = None
    token: str | None = None
    token_id: int | None = None
    position: int | None = None

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("spec", "kind", "dictionary", "latent", "feature_id", "token",
                                              "token_id", "position")}


_FEATURE = re.compile(r"^feature:(?P<dict>.+)/(?:(?P<latent>latent=\d+)|(?P<id>\d+))$")


def parse_target(spec: str, run: RunFolder, spliced: list[Spliced], tokenizer) -> Target:
    """``feature:<dictionary>/<id>``, ``feature:<dictionary>/latent=<n>`` or ``logit:<token>``."""
    if spec.startswith("logit:"):
        token = spec[len("logit:"):]
        if not token:
            raise CircuitError("logit target without a token: write logit:<token>, e.g. 'logit: the'")
        ids = tokenizer(token, add_special_tokens=False, split_special_tokens=True)["input_ids"]
        if len(ids) != 1:
            raise CircuitError(f"unknown token {token!r}: the tokenizer cuts it into {len(ids)} tokens "
                               f"{[tokenizer.decode([i]) for i in ids]}; give a single token (mind a leading space)")
        return Target(spec=spec, kind="logit", token=token, token_id=int(ids[0]))
    m = _FEATURE.match(spec)
    if not m:
        raise CircuitError(f"bad target {spec!r}: write feature:<dictionary>/<id>, "
                           "feature:<dictionary>/latent=<n> or logit:<token>")
    by_name = {s.name: s for s in spliced}
    name = m["dict"]
    if name not in by_name:
        raise CircuitError(f"unknown dictionary {name!r} in target {spec!r}; the run has {sorted(by_name)}")
    n_latents = by_name[name].dictionary.n_latents
    if m["latent"]:
        latent = int(m["latent"].split("=")[1])
        if latent >= n_latents:
            raise CircuitError(f"latent {latent} out of range: {name} has {n_latents} latents (0 to {n_latents - 1})")
        return Target(spec=spec, kind="feature", dictionary=name, latent=latent,
                      feature_id=_feature_rows(run, name, [latent]).get(latent, (None, None))[0])
    feature_id = int(m["id"])
    row = None
    if run.db.is_file():
        con = sqlite3.connect(f"file:{run.db}?mode=ro", uri=True)
        try:
            row = con.execute("SELECT dictionary, latent FROM features WHERE id = ?", (feature_id,)).fetchone()
        finally:
            con.close()
    if row is None or row[0] != name:
        where = f"in {run.db}" if run.db.is_file() else f"({run.root} has no features.db)"
        raise CircuitError(f"no feature {feature_id} of dictionary {name!r} {where}; "
                           f"name a latent with feature:{name}/latent=<n>")
    return Target(spec=spec, kind="feature", dictionary=name, latent=int(row[1]), feature_id=feature_id)


def _feature_rows(run: RunFolder, dictionary: str, latents: list[int]) -> dict[int, tuple[int, str | None]]:
    from autointerp.search import _store_rows

    return _store_rows(run, dictionary, sorted(set(latents))) if latents else {}
