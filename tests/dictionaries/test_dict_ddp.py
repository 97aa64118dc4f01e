"""Data-parallel training with two gloo processes on CPU (part of the normal suite, ~10 s)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


def test_two_gloo_ranks_stay_identical_and_learn(tmp_path):
    steps = 60
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(HERE / "ddp_worker.py"), str(tmp_path), str(steps)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    if proc.returncode != 0 and "terminate called without an active exception" in proc.stderr:
        # seen once on a machine with three CPU-bound processes on two cores: a gloo rank aborted
        # in a C++ thread after its work (SIGABRT, nothing from our code); one fresh launch, and
        # every assertion below still applies to its output
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for name in ("sae", "tc"):
        per_rank = [[rec for rec in r["records"] if rec["name"] == name] for r in ranks]
        assert [rec["step"] for rec in per_rank[0]] == list(range(1, steps + 1))
        assert all(rec["identical"] for recs in per_rank for rec in recs), name
        assert per_rank[0][-1]["tokens"] == steps * 64 * 2  # tokens counted over both ranks
        # each rank reads its own shard: the ranks see different batches, hence different losses
        assert all(a["loss"] != b["loss"] for a, b in zip(*per_rank))
        losses = [rec["loss"] for rec in per_rank[0]]
        assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5, losses
        assert ranks[0]["metrics"][name]["tokens"] == steps * 128
        assert (tmp_path / name / "weights.safetensors").is_file()
