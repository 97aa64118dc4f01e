"""Measure what the exclusion rules remove, and the error of each storage dtype.

On the embedded model at one hook point, over N tokens of the embedded corpus with NO
exclusion: the mean residual norm by context position, the share of the total variance
(sum ||x - mean||^2) carried by each kind of position, and the same statistics with the
default rules. Then the relative reconstruction error ||x - q(x)|| / ||x|| of float16
and bfloat16 storage.

    python benchmarks/measure_exclusions.py --tokens 100000 --hookpoint blocks.15.hook_out
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from autointerp.data import ContextConfig, ExclusionRules, make_contexts, open_corpus
from autointerp.models import capture, load_model


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--hookpoint", default="blocks.15.hook_out")
    p.add_argument("--tokens", type=int, default=100_000)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model(args.model)
    cfg = ContextConfig(exclude=ExclusionRules(special_tokens=False, first_positions=0))
    ctx = make_contexts(open_corpus("python-stdlib"), model.tokenizer, cfg, args.tokens)
    t = time.time()
    acts = torch.cat([capture(model, ctx.tokens[i:i + 16], [args.hookpoint])[args.hookpoint]
                      for i in range(0, len(ctx.tokens), 16)])  # [n_ctx, L, d]
    print(f"forward {acts.shape[0] * acts.shape[1]} tokens in {time.time() - t:.0f}s")
    norms = acts.norm(dim=-1)
    special = torch.isin(ctx.tokens, torch.tensor(model.tokenizer.all_special_ids))
    flat = acts.reshape(-1, acts.shape[-1])
    dev = (flat - flat.mean(0)).pow(2).sum(-1).reshape(norms.shape)
    total = dev.sum()
    median = norms.median()
    out = {
        "hookpoint": args.hookpoint, "tokens": int(norms.numel()),
        "median_norm": round(float(median), 1),
        "mean_norm_by_position": {i: round(float(norms[:, i].mean()), 1) for i in range(8)},
        "variance_share_position_0": round(float(dev[:, 0].sum() / total), 4),
        "variance_share_positions_0_3": round(float(dev[:, :4].sum() / total), 4),
        "variance_share_special_tokens": round(float(dev[special].sum() / total), 4),
        "variance_share_top3_tokens": round(float(dev.flatten().topk(3).values.sum() / total), 4),
        "tokens_over_10x_median_norm": int((norms > 10 * median).sum()),
    }
    keep = ~special
    keep[:, :4] = False
    kept = flat[keep.flatten()]
    kdev = (kept - kept.mean(0)).pow(2).sum(-1)
    kn = kept.norm(dim=-1)
    out["default_rules"] = {
        "kept_fraction": round(float(keep.float().mean()), 4),
        "max_norm_over_median": round(float(kn.max() / kn.median()), 1),
        "variance_share_top3_tokens": round(float(kdev.topk(3).values.sum() / kdev.sum()), 4),
        "tokens_over_10x_median_norm": int((kn > 10 * kn.median()).sum()),
    }
    for dtype in (torch.float16, torch.bfloat16):
        q = kept.to(dtype).float()
        out[f"relative_error_{str(dtype)[6:]}"] = float(f"{float((q - kept).norm() / kept.norm()):.2e}")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
