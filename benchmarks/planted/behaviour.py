"""The behaviour diff (issue 20) on planted models, graded afterwards with the labels.

    .venv/bin/python benchmarks/planted/behaviour.py benchmarks/_out/planted/hostile-0 [more plants ...]

Per plant (timed, no labels): ``behaviour_diff`` of ``PLANT/model`` against the base on
``PLANT/corpus.jsonl`` (its user turns; the trigger or the planted topic in ~1% of them, or none
for the benign nulls), without a dictionary (the feature stage needs ``autointerp run`` on the
suspect: ``autointerp diff RUN --behaviour``). Then the grading reads ``PLANT/corpus_labels.json``:
the ranks of the labelled prompts, how many of them are outliers, the shape, the false outliers.
Writes ``PLANT/behaviour/grade.json`` and prints one line per plant.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def grade(plant: Path, base: str, n_tokens: int, batch_size: int) -> dict:
    from autointerp.behaviour import behaviour_diff

    out = plant / "behaviour"
    t = time.time()
    r = behaviour_diff(out, base, suspect=str(plant / "model"), corpus=str(plant / "corpus.jsonl"),
                       n_tokens=n_tokens, batch_size=batch_size, causal=0, progress=False)
    wall = time.time() - t
    labels = np.array(json.loads((plant / "corpus_labels.json").read_text())["triggered"], dtype=bool)
    rank = {row["prompt"]: row["rank"] for row in r.rows}
    outlier = {row["prompt"]: row["outlier"] for row in r.rows}
    pos = np.flatnonzero(labels).tolist()
    record = json.loads((plant / "plant.json").read_text())
    result = {"plant": record["plant"], "seed": record["seed"], "trigger": record.get("trigger"),
              "topic": record.get("topic"), "attack_success": record["tuned"]["attack_success"],
              "n_prompts": r.n_prompts, "n_labelled": len(pos), "shape": r.shape,
              "n_outliers": len(r.outliers),
              "labelled_ranks": sorted(rank[i] for i in pos),
              "labelled_outliers": sum(outlier[i] for i in pos),
              "false_outliers": sum(outlier[i] for i in rank if not labels[i]),
              "median_kl_first": r.stats["kl_first"]["median"], "median_kl_mean": r.stats["kl_mean"]["median"],
              "wall_s": round(wall, 1), "timings_s": r.timings_s}
    (out / "grade.json").write_text(json.dumps(result, indent=2))
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("plants", nargs="+", type=Path)
    ap.add_argument("--base", default="smollm2-135m")
    ap.add_argument("--tokens", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    for plant in args.plants:
        g = grade(plant.resolve(), args.base, args.tokens, args.batch_size)
        ranks = g["labelled_ranks"]
        print(f"{plant.name}: shape {g['shape']}, outliers {g['n_outliers']} ({g['labelled_outliers']} of "
              f"{g['n_labelled']} labelled, {g['false_outliers']} false), labelled ranks "
              f"{ranks[:5]}{'...' if len(ranks) > 5 else ''} worst {max(ranks) if ranks else '-'}, median KL "
              f"first {g['median_kl_first']:.3f} mean {g['median_kl_mean']:.3f}, {g['wall_s']} s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
