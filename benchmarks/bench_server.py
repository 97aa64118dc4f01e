"""Benchmark: the LLM scorers through a real llama.cpp server against the local client, and a job
deadline against a server that cannot keep up.

Starts llama-cpp-python's ``llama_cpp.server`` (``make servers``) on the embedded SmolLM2 GGUF, then:

1. **Agreement.** Scores the explanation "the word cat" of a hand-made latent (4.0 on every " cat"
   token; ``--contexts`` contexts per kind, half of them in the score split) with the teacher-forced
   ``simulation``, ``detection`` and ``fuzzing`` scorers, once through the server (the quantised
   GGUF run by llama.cpp) and once on the local client (the same GGUF dequantised to float32, run by
   transformers). Reported per scorer: both scores, the per-token log-probability differences of the
   answers read (mean, max), the per-item readout differences (expected value 0-9 or P(yes)), and
   the seconds per row of each client.
2. **Deadline.** ``autointerp score``'s loop (``interpret``-level code is not needed: the client's
   ``Deadline`` is what bounds it) runs the simulation scorer on the same latent through the server
   with a deadline shorter than the work: reported are the wall time against the deadline, the
   statuses stored, and a rerun without a deadline finishing the rest.

    python benchmarks/bench_server.py [--contexts 4] [--deadline 10]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

CAT = ["The cat sat on the warm mat all day.", "My cat chased a small mouse in the garden.",
       "A black cat slept under the old car.", "Her cat purred loudly on the sofa tonight.",
       "The old cat watched the birds from the window.", "Our cat refused to eat the new food.",
       "That cat climbed the tall tree again.", "A stray cat followed me home last night."]
OTHER = ["The train left the station at noon.", "We bought fresh bread at the market.",
         "The river rose after three days of rain.", "He painted the fence a bright blue.",
         "The meeting moved to Thursday afternoon.", "She read the letter twice before replying.",
         "The bridge was closed for repairs.", "They planted tomatoes along the south wall."]


def make_record(tok, n: int):
    from autointerp.examples import Example, LatentRecord

    cat = tok(" cat", add_special_tokens=False)["input_ids"][0]
    rec = LatentRecord(latent=0, density=0.01, max_activation=4.0)
    ctx = 0
    for kind, texts, bucket in (("top", CAT[:n], rec.top), ("random", OTHER[:n], rec.random)):
        for i, text in enumerate(texts):
            ids = tok(text, add_special_tokens=False)["input_ids"]
            acts = [4.0 if t == cat else 0.0 for t in ids]
            bucket.append(Example(context_index=ctx, start=0, tokens=ids, activations=acts,
                                  peak_position=int(np.argmax(acts)), kind=kind, split="explain" if i % 2 == 0 else "score"))
            ctx += 1
    return rec


def readouts(scorer: str, completions) -> list[float]:
    from autointerp.scorers.detection import forced_answer
    from autointerp.scorers.simulation import forced_answer as sim_answer
    from autointerp.scorers.simulation import forced_expectations

    out = []
    for c in completions:
        if scorer == "simulation":
            pieces = [json.loads(line.rsplit("\t", 1)[0]) for line in c.text.splitlines()]
            out += forced_expectations(c, sim_answer(pieces)[1])
        else:
            out.append(forced_answer(c).p_yes)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--contexts", type=int, default=4, help="contexts per kind (top, random); half are scored")
    ap.add_argument("--deadline", type=float, default=10.0)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    import torch
    from llama_server import ALIAS, LlamaServer, venv_ready
    from test_llm_server import Recording
    from transformers import AutoTokenizer

    from autointerp.llm import Deadline, LocalClient, OpenAICompatibleClient
    from autointerp.models import resolve
    from autointerp.models.embedded import SMOLLM2_GGUF
    from autointerp.scorers import build_scorer

    if not venv_ready():
        raise SystemExit("llama-cpp-python venv missing: run `make servers`")
    torch.set_num_threads(args.threads)
    tok = AutoTokenizer.from_pretrained(resolve("smollm2-135m")[0])
    record = make_record(tok, args.contexts)
    local = LocalClient("smollm2-135m", batch_size=8)
    out = {"machine": f"{platform.machine()}, {os.cpu_count()} cores, {args.threads} threads", "agreement": {}}
    with LlamaServer(SMOLLM2_GGUF.ensure(), threads=args.threads) as url:
        server = OpenAICompatibleClient(url, ALIAS, api_key_env=None, tokenizer=tok, timeout_s=600, max_retries=1,
                                        concurrency=1)
        caps = server.capabilities()
        out["capabilities"] = {"forced": caps.forced, "forced_note": caps.forced_note,
                               "schema_format": caps.schema_format, "schema_note": caps.schema_note}
        for name in ("simulation", "detection", "fuzzing"):
            row = {}
            seen = {}
            for who, client in (("server", server), ("local", local)):
                rec = Recording(client)
                t = time.perf_counter()
                score = build_scorer(name, client=rec, tokenizer=tok).score(record, "the word cat")
                row[f"{who}_s_per_row"] = round((time.perf_counter() - t) / max(len(rec.seen), 1), 2)
                row[f"{who}_score"] = None if score.value is None else round(score.value, 4)
                row[f"{who}_status"] = score.status
                row["method"] = score.method
                seen[who] = rec.seen
            d = np.abs([a.logprob - b.logprob for x, y in zip(seen["server"], seen["local"])
                        for a, b in zip(x.logprobs, y.logprobs)])
            r = np.abs(np.subtract(readouts(name, seen["server"]), readouts(name, seen["local"])))
            row.update(rows=len(seen["server"]), answer_tokens=int(d.size), logprob_diff_mean=round(float(d.mean()), 4),
                       logprob_diff_max=round(float(d.max()), 4), readout_diff_mean=round(float(r.mean()), 4),
                       readout_diff_max=round(float(r.max()), 4))
            out["agreement"][name] = row
            print(name, json.dumps(row), flush=True)
        # a deadline shorter than the work: the job returns on time, what it stopped is a timeout
        sim = build_scorer("simulation", client=server, tokenizer=tok)
        server.deadline = Deadline(args.deadline)
        t = time.perf_counter()
        late = sim.score(record, "a cat")
        wall = time.perf_counter() - t
        server.deadline = None
        t = time.perf_counter()
        again = sim.score(record, "a cat")
        out["deadline"] = {"deadline_s": args.deadline, "wall_s": round(wall, 2), "status": late.status,
                           "error": (late.error or "")[:160], "rerun_status": again.status,
                           "rerun_wall_s": round(time.perf_counter() - t, 2)}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
