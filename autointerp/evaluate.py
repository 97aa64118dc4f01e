"""Evaluate a trained dictionary: held-out reconstruction and downstream loss.

Held-out (pure tensor maths, ``dictionaries.metrics``), over the cache shards that training
never read:

* FVU = sum_t ||x_t - x_hat_t||^2 / sum_t ||x_t - mean(x)||^2 (mean over the held-out set);
* L0 = mean number of active latents per token; dead fraction = share of latents that never
  fire on the held-out tokens; dense fraction = share firing on more than 10% of tokens;
  per-latent firing density (and its histogram figure).

Downstream (needs the model): the held-out contexts are run three ways and the next-token
cross-entropy is averaged over the positions whose activation the dictionary was trained on
(the cache's kept positions; excluded sink positions keep their clean values, since the
dictionary never saw them):

* clean; spliced (the activation at the target hook point replaced by the reconstruction);
  zero-ablated; mean-ablated (replaced by the mean activation over kept positions);
* CE loss recovered = (CE_ablate - CE_dict) / (CE_ablate - CE_clean), for both ablations;
* KL(clean || spliced) of the next-token distributions, mean over the same positions.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

import dictionaries as dl
from autointerp.activations import load_shard, read_manifest
from autointerp.models import LoadedModel
from autointerp.training import PROVENANCE


def heldout_metrics(dictionary: dl.Dictionary, store, input_key: str, target_key: str) -> dict:
    """FVU, L0, dead/dense fractions and firing densities over every batch of ``store``."""
    acc = dl.FVUAccumulator()
    fired, n, l0_sum = None, 0, 0.0
    with torch.inference_mode():
        for batch in store:
            x, y = batch[input_key], batch[target_key]
            out = dictionary(x, target=y)
            acc.update(y, out.x_hat)
            active = out.latents > 0
            fired = active.sum(0) if fired is None else fired + active.sum(0)
            l0_sum += float(active.sum())
            n += x.shape[0]
    if n == 0:
        raise ValueError("the held-out set is empty")
    density = fired.double() / n
    return {
        "heldout_tokens": n,
        "fvu": float(acc.compute()),
        "l0": l0_sum / n,
        "dead_fraction": float((fired == 0).double().mean()),
        "dense_fraction": float((density > 0.1).double().mean()),
        "density": density.tolist(),
    }


def _ce_and_logp(logits: Tensor, tokens: Tensor) -> tuple[Tensor, Tensor]:
    """Per-position next-token CE ``[b, L-1]`` and log-probabilities ``[b, L-1, vocab]``."""
    logp = F.log_softmax(logits[:, :-1].float(), dim=-1)
    ce = -logp.gather(-1, tokens[:, 1:, None]).squeeze(-1)
    return ce, logp


def downstream_metrics(model: LoadedModel, dictionary: dl.Dictionary, input_hook: str, target_hook: str,
                       contexts: Tensor, keep: Tensor, mean_act: Tensor, batch_size: int = 8) -> dict:
    """CE-loss recovered (zero and mean ablation) and KL to the clean model on ``contexts``.

    Args:
        contexts: ``[n, L]`` token ids; keep: ``[n, L]`` positions the dictionary covers.
        mean_act: ``[d]`` mean target activation over kept positions (for mean ablation).
    """
    sums = {"clean": 0.0, "dict": 0.0, "zero": 0.0, "mean": 0.0, "kl": 0.0}
    count = 0
    bridge = model.bridge
    for b in range(0, len(contexts), batch_size):
        ids = contexts[b:b + batch_size].long().to(model.device)
        k = keep[b:b + batch_size].to(ids.device)
        pos = k[:, :-1]  # CE of predicting token t+1 from position t, where t is covered
        captured: dict[str, Tensor] = {}

        def grab(act, hook):
            captured["x"] = act
            return act

        def splice_with(fn):
            def hook(act, hook):
                new = fn(captured["x"] if input_hook != target_hook else act, act)
                return torch.where(k[..., None], new.to(act.dtype), act)
            hooks = [(target_hook, hook)]
            if input_hook != target_hook:
                hooks.insert(0, (input_hook, grab))
            return hooks

        variants = {
            "dict": splice_with(lambda x, act: dictionary(x).x_hat),
            "zero": splice_with(lambda x, act: torch.zeros_like(act)),
            "mean": splice_with(lambda x, act: mean_act.to(act).expand_as(act)),
        }
        with torch.inference_mode():
            clean_ce, clean_logp = _ce_and_logp(bridge(ids), ids)
            sums["clean"] += float(clean_ce[pos].sum())
            for name, hooks in variants.items():
                with bridge.hooks(fwd_hooks=hooks):
                    ce, logp = _ce_and_logp(bridge(ids), ids)
                sums[name] += float(ce[pos].sum())
                if name == "dict":
                    kl = (clean_logp.exp() * (clean_logp - logp)).sum(-1)
                    sums["kl"] += float(kl[pos].sum())
        count += int(pos.sum())
    ce = {k: v / count for k, v in sums.items()}

    def recovered(ablate: float) -> float:
        return (ablate - ce["dict"]) / (ablate - ce["clean"])

    return {
        "downstream_positions": count,
        "ce_clean": ce["clean"], "ce_dict": ce["dict"], "ce_zero_ablation": ce["zero"],
        "ce_mean_ablation": ce["mean"],
        "ce_recovered_zero": recovered(ce["zero"]), "ce_recovered_mean": recovered(ce["mean"]),
        "kl_clean_to_dict": ce["kl"],
    }


def heldout_contexts(folder: Path, shard_ids: list[int], max_contexts: int) -> tuple[Tensor, Tensor, Tensor]:
    """Token ids ``[n, L]``, kept mask ``[n, L]`` and mean activation ``[d]`` of held-out shards."""
    m = read_manifest(folder)
    ctxs, keeps, act_sum, rows = [], [], None, 0
    for s in shard_ids:
        entry = m["shards"][s]
        t = load_shard(folder, entry)
        lo = entry["contexts"][0]
        keep = torch.zeros(t["contexts"].shape, dtype=torch.bool)
        keep[t["ctx"].long() - lo, t["ctx_pos"].long()] = True
        ctxs.append(t["contexts"])
        keeps.append(keep)
        a = t["activations"].double().sum(0)
        act_sum = a if act_sum is None else act_sum + a
        rows += t["activations"].shape[0]
    return torch.cat(ctxs)[:max_contexts], torch.cat(keeps)[:max_contexts], (act_sum / rows).float()


def evaluate_dictionary(path: str | Path, model: LoadedModel | None = None, downstream_contexts: int = 64,
                        batch_size: int = 4096) -> dict:
    """Evaluate the dictionary at ``path`` (trained by ``autointerp train``) and write ``metrics.json``.

    Held-out metrics come from the held-out shards recorded in ``autointerp.json``; with a
    ``model``, downstream metrics run on up to ``downstream_contexts`` held-out contexts. Also
    writes ``density.json`` (per-latent firing density) and ``density.html`` (its histogram).
    """
    from autointerp.store import ActivationStore

    path = Path(path)
    prov_file = path / PROVENANCE
    if not prov_file.exists():
        raise FileNotFoundError(f"{path} has no {PROVENANCE}: not a dictionary trained by `autointerp train`")
    prov = json.loads(prov_file.read_text())
    dictionary = dl.load(path)
    inp, tgt = prov["input_hookpoint"], prov["target_hookpoint"]
    folders = {hp: Path(c["folder"]) for hp, c in prov["caches"].items()}
    for hp, folder in folders.items():
        found = read_manifest(folder)["fingerprint"]
        if found != prov["caches"][hp]["fingerprint"]:
            raise ValueError(f"cache {folder} changed since training (fingerprint {found[:12]}, "
                             f"trained on {prov['caches'][hp]['fingerprint'][:12]}): held-out split no longer valid")
    store = ActivationStore(folders, batch_size=batch_size, buffer_size=batch_size, shuffle=False,
                            drop_last=False, shards=prov["heldout_shards"])
    metrics = heldout_metrics(dictionary, store, inp, tgt)
    if model is not None:
        ctx, keep, mean_act = heldout_contexts(folders[tgt], prov["heldout_shards"], downstream_contexts)
        metrics.update(downstream_metrics(model, dictionary, inp, tgt, ctx, keep, mean_act))
    metrics_file = path / "metrics.json"
    existing = json.loads(metrics_file.read_text()) if metrics_file.exists() else {}
    existing["evaluation"] = {k: v for k, v in metrics.items() if k != "density"}
    metrics_file.write_text(json.dumps(existing, indent=2) + "\n")
    (path / "density.json").write_text(json.dumps(metrics["density"]) + "\n")
    fig = dl.density_histogram_figure(torch.tensor(metrics["density"]), title=f"{inp}: latent firing density")
    # plotly.js embedded in the file: the page opens offline, no CDN request
    fig.write_html(path / "density.html", include_plotlyjs=True, full_html=True)
    return metrics
