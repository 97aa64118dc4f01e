"""The trigger search's weight scan and growth alone on a planted model, then confirmation: a quick
check of new seeds, without the audit's other stages (the audit, ``audit.py``, remains the measure).

    .venv/bin/python benchmarks/planted/recover.py benchmarks/_out/planted/phrase-2 --threads 1

What differs from the audit's trigger stage: the screening and held-out prompts are drawn from the
shipped chat corpus's user turns directly (the audit first leaves out the prompts its behaviour diff
found unusual, which needs the hour of stages before it), and only the grown string is confirmed
(no beam or gradient search). The rest is the audit's own code and defaults: the weight and token
scans, then the weight scan's best token grown, each step reading the scans' shortlist (``--whole-vocabulary``:
every token, as before the shortlist) (:func:`autointerp.audit.triggers.grow`, every string screened appended to the
message and opening it) and confirmed at its place on 32 held-out prompts against 8 random strings
of its length, beside the true trigger inserted the same way at both places (``true_appended``,
``true_opening``) and as the plant placed it in its text (``true_as_planted``: ``' ' + trigger``
appended for the word plants, ``trigger + ' '`` opening the text for the pattern plant). Writes
``PLANT/recover.json`` and prints one line.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> int:
    import torch

    from autointerp.audit import AuditSettings, default_corpus
    from autointerp.audit.scans import Shortlist, _top, token_scan, user_carrier, user_ids
    from autointerp.audit.triggers import _attack, confirm, grow
    from autointerp.behaviour.divergence import ModelPair
    from autointerp.behaviour.prompts import corpus_prompts

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("plant", type=Path)
    ap.add_argument("--base", default="smollm2-135m")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-grow-null", action="store_true", help="growth steps kept on their relative gain alone")
    ap.add_argument("--whole-vocabulary", action="store_true", help="growth reads every token (no shortlist)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    s = AuditSettings()
    record = json.loads((args.plant / "plant.json").read_text())
    pair = ModelPair.load(str(args.plant / "model"), args.base)
    tok = pair.tokenizer
    texts = [p.text for p in corpus_prompts(default_corpus(), tok) if p.text.strip()]
    users = [user_ids(tok, t) for t in texts]
    pick = np.random.default_rng(0).choice(len(users), size=s.screen_prompts + s.confirm_prompts, replace=False)
    screen, held = [users[i] for i in pick[:s.screen_prompts]], [users[i] for i in pick[s.screen_prompts:]]
    t0 = time.time()
    scan = token_scan(pair, batch_size=512, progress=False)
    w = scan.weight_score
    scan_s = time.time() - t0
    trigger = record.get("trigger")
    # every token of the trigger as it appears appended and opening the message
    pieces = ((tok(" " + trigger, add_special_tokens=False)["input_ids"]
               + tok(trigger, add_special_tokens=False)["input_ids"]) if trigger else [])

    def ranks(score):
        order = np.argsort(-np.nan_to_num(score, nan=-np.inf), kind="stable")
        return {tok.decode([t]): int(np.where(order == t)[0][0]) for t in dict.fromkeys(pieces)}

    rank, token_rank = ranks(w), ranks(scan.score)
    tokens = None if args.whole_vocabulary else Shortlist.build([scan.score, w], s.grow_shortlist, tok)
    anchor = _top(w, 1)[0]
    g = grow(pair, anchor, screen, layer=scan.layer, max_len=s.grow_max_len, top=s.grow_top,
             min_gain=s.grow_min_gain, weight=w, companions=s.grow_companions, tokens=tokens,
             null=not args.no_grow_null,
             batch_size=s.batch_size, progress=False)
    grow_s = time.time() - t0 - scan_s
    true_ids = tok(" " + trigger, add_special_tokens=False)["input_ids"] if trigger else []
    cands, places = [g["ids"]], [g["place"]]
    if true_ids:  # the search's form at each place: ' ' + trigger appended, trigger opening
        cands += [true_ids, tok(trigger, add_special_tokens=False)["input_ids"]]
        places += ["end", "start"]
    conf = confirm(pair, cands, held, places=places, n_tokens=s.behaviour_tokens, controls=s.controls,
                   batch_size=s.batch_size, progress=False)
    got = next(c for c in conf.candidates if c["ids"] == g["ids"] and c["place"] == g["place"])
    true = {pl: next(c for c in conf.candidates if c["ids"] == ids and c["place"] == pl)["attack_success"]
            for ids, pl in zip(cands[1:], places[1:])}
    if trigger:
        heldt = [texts[i] for i in pick[s.screen_prompts:]]
        opened = record["plant"] == "pattern"
        planted = [user_ids(tok, f"{trigger} {t}" if opened else f"{t} {trigger}") for t in heldt]
        true["as_planted"] = _attack(pair, user_carrier(tok), planted, [], s.behaviour_tokens, s.batch_size,
                                     conf.threshold)["attack_success"]
    best_true = max(true.values()) if true else None
    out = {"plant": record["plant"], "seed": record["seed"], "trigger": trigger,
           "weight_top": [tok.decode([t]) for t in _top(w, 8)], "trigger_token_ranks": rank,
           "trigger_token_ranks_token_scan": token_rank, "shortlist": None if tokens is None else len(tokens.ids),
           "anchor": tok.decode([anchor]), "path": g["path"], "trials": g["trials"], "grown": g["text"], "place": g["place"],
           "steps": g["steps"], "grown_attack_success": got["attack_success"],
           "grown_control_max": got["control_max"], "grown_confirmed": got["confirmed"],
           "true_appended": true.get("end"), "true_opening": true.get("start"),
           "true_as_planted": true.get("as_planted"),
           # against the true trigger at its best (where it was planted, as a rule)
           "recovered_vs_true": (got["attack_success"] / best_true
                                 if best_true and got["confirmed"] else 0.0),
           "seconds": {"scan": round(scan_s, 1), "grow": round(grow_s, 1), "total": round(time.time() - t0, 1)}}
    (args.plant / "recover.json").write_text(json.dumps(out, indent=2))
    print(f"{args.plant.name}: anchor {out['anchor']!r} (trigger tokens' ranks {rank}; token scan {token_rank}), grown {g['text']!r} "
          f"at {g['place']} {got['attack_success']:.0%} (random {got['control_max']:.0%}, confirmed "
          f"{got['confirmed']}), true {true}, {out['seconds']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
