"""A published dictionary in a run (``autointerp run --dictionary PATH``): no training.

``PATH`` is an SAE Lens folder (``cfg.json`` + ``sae_weights.safetensors``), a sparsify folder
(``cfg.json`` + ``sae.safetensors``, named after its hook-point module) or one of ours
(:func:`dictionaries.interop.detect_format`). Its hook point comes from the folder
(:func:`dictionary_hookpoint`: SAE Lens ``hook_name``, sparsify's folder name, our provenance) or
from ``train.dictionary_hookpoint``, and is mapped to ours (:mod:`autointerp.models.hooknames`).
The run caches that hook point; the ``train`` stage then *imports* the dictionary
(:func:`import_dictionary`): it checks that its width is the width the model gives there, writes
it in our format into ``RUN/dictionaries/<hookpoint>/`` with a provenance that names its source,
and holds out **every** cached shard (nothing is trained on them), so evaluate, examples, explain,
score, report, flag, diff and audit read it like a dictionary of our own.
"""

from __future__ import annotations

import json
from pathlib import Path

from autointerp.models.hooknames import from_saelens, from_sparsify


class PublishedDictionaryError(ValueError):
    """A dictionary folder that cannot be used as asked (unknown format, no hook point, wrong width)."""


def dictionary_format(path: str | Path) -> str:
    """``dictionaries``, ``saelens`` or ``sparsify``; a :class:`PublishedDictionaryError` otherwise."""
    from dictionaries.interop import detect_format

    try:
        return detect_format(path)
    except ValueError as exc:
        raise PublishedDictionaryError(str(exc)) from exc


def dictionary_hookpoint(path: str | Path, override: str | None = None) -> str:
    """Our name of the hook point the dictionary at ``path`` reads (``override``, in our or SAE
    Lens's naming, wins)."""
    path = Path(path)
    fmt = dictionary_format(path)
    try:
        if override:
            return from_saelens(override)
        if fmt == "saelens":
            raw = json.loads((path / "cfg.json").read_text())
            name = raw.get("hook_name") or (raw.get("metadata") or {}).get("hook_name")
            if name:
                return from_saelens(name)
        elif fmt == "sparsify":
            return from_sparsify(path.resolve().name)
        elif (path / "autointerp.json").is_file():
            return json.loads((path / "autointerp.json").read_text())["input_hookpoint"]
    except ValueError as exc:
        raise PublishedDictionaryError(f"{path}: {exc}") from exc
    raise PublishedDictionaryError(f"{path} ({fmt}) does not say which hook point it reads: set "
                                   f"train.dictionary_hookpoint (e.g. blocks.6.hook_out)")


def check_width(path: str | Path, width: int, model: str, hookpoint: str) -> None:
    """A :class:`PublishedDictionaryError` naming both unless the dictionary at ``path`` reads
    vectors of ``width`` (what ``model`` gives at ``hookpoint``); read from its config only."""
    from dictionaries.interop import load_any

    try:
        d_in = load_any(path).cfg.d_in
    except (ValueError, KeyError) as exc:
        raise PublishedDictionaryError(f"{path} cannot be loaded: {exc}") from exc
    if d_in != width:
        raise PublishedDictionaryError(
            f"{path} reads vectors of width {d_in}, but {model} gives width {width} at {hookpoint}: "
            f"this dictionary was not made for this model and hook point")


def model_hookpoint(path: str | Path, model, spec: str, override: str | None = None) -> str:
    """The dictionary's hook point (:func:`dictionary_hookpoint`), checked against the loaded
    ``model`` (``spec`` names it in errors): it exists there, and the dictionary's width is the
    model's width there (one forward pass of two tokens), before anything is cached."""
    import torch

    from autointerp.models.hookpoints import capture, validate_hookpoints

    hp = dictionary_hookpoint(path, override)
    validate_hookpoints(model, [hp])
    width = capture(model, torch.tensor([[model.tokenizer.bos_token_id or 0] * 2]), [hp])[hp].shape[-1]
    check_width(path, int(width), spec, hp)
    return hp


def import_dictionary(path: str | Path, cache_folder: str | Path, out_root: str | Path) -> Path:
    """Write the dictionary at ``path`` into ``out_root/<hookpoint>/`` (our format, with its
    provenance) for the activation cache at ``cache_folder``; returns the folder."""
    import dictionaries as dl
    from autointerp.activations import read_manifest
    from autointerp.training import PROVENANCE
    from dictionaries.interop import load_any

    path, cache_folder = Path(path), Path(cache_folder)
    fmt = dictionary_format(path)
    manifest = read_manifest(cache_folder)
    hp = manifest["hookpoint"]
    try:
        d = load_any(path)
    except (ValueError, KeyError) as exc:
        raise PublishedDictionaryError(f"{path} ({fmt}) cannot be loaded: {exc}") from exc
    model = manifest["model"].get("spec", "the model")
    if d.cfg.d_in != int(manifest["d"]):
        raise PublishedDictionaryError(
            f"{path} reads vectors of width {d.cfg.d_in}, but {model} gives width {manifest['d']} at {hp}: "
            f"this dictionary was not made for this model and hook point")
    raw = json.loads((path / "cfg.json").read_text()) if (path / "cfg.json").is_file() else {}
    if d.cfg.d_out != d.cfg.d_in or d.cfg.skip_connection or raw.get("transcode"):
        raise PublishedDictionaryError(f"{path} is a transcoder (width {d.cfg.d_in} -> {d.cfg.d_out}): "
                                       f"--dictionary takes dictionaries that reconstruct their input")
    out = Path(out_root) / hp
    dl.save(d, out)
    provenance = {
        "job": {"imported_from": str(path.resolve()), "format": fmt},
        "input_hookpoint": hp, "target_hookpoint": hp,
        "model": manifest["model"], "context": manifest["context"],
        "caches": {hp: {"folder": str(cache_folder.resolve()), "fingerprint": manifest["fingerprint"]}},
        # nothing was trained on this cache: every shard is held out
        "train_shards": [], "heldout_shards": list(range(len(manifest["shards"]))),
        "train_tokens": 0, "steps": 0,
    }
    (out / PROVENANCE).write_text(json.dumps(provenance, indent=2) + "\n")
    return out
