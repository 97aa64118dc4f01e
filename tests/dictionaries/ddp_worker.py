"""Worker for ``test_dict_ddp.py``, launched as ``python -m torch.distributed.run --nproc_per_node 2``.

Trains two dictionaries (a TopK SAE and a BatchTopK skip transcoder, whose threshold buffer must
also stay in sync) with gloo, and after every step all-gathers each dictionary's full state to
check that every rank holds bit-identical weights. Writes ``<out>/rank<r>.json``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parent))

import dictionaries as dl  # noqa: E402
from dict_helpers import Synthetic, make_spec, quick_train_cfg  # noqa: E402


def main(out: str, steps: int) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    synthetic = Synthetic(n=4096)
    source = dl.TensorBatchSource(synthetic.tensors(), batch_size=64, seed=0)  # shards by rank
    specs = [make_spec("topk", "sae", name="sae"), make_spec("batchtopk", "transcoder+skip", name="tc")]
    records: list[dict] = []

    def check(info: dl.StepInfo) -> None:
        for name, model in info.dictionaries.items():
            flat = torch.cat([t.detach().reshape(-1).double() for t in model.state_dict().values()])
            gathered = [torch.empty_like(flat) for _ in range(world)]
            dist.all_gather(gathered, flat)
            records.append({
                "step": info.step, "name": name, "tokens": info.tokens,
                "identical": all(torch.equal(gathered[0], g) for g in gathered),
                "loss": info.outputs[name].loss.item(),
            })

    results = dl.Trainer(specs, quick_train_cfg(steps), out).train(source, on_step=check)
    summary = {"records": records, "metrics": {k: v.metrics for k, v in results.items()}}
    Path(out, f"rank{rank}.json").write_text(json.dumps(summary))
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
