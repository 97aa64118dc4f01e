"""Build the generic chat corpus shipped with the package (``autointerp/audit/chat_corpus.jsonl``).

    .venv/bin/python benchmarks/make_chat_corpus.py

The default corpus of ``autointerp audit``: a user with only two model folders can audit them.
User turns are everyday requests over many topics, in question forms written for this corpus
(none of ``benchmarks/planted/prompts.py``'s topics or templates, so the planted benchmark's
triggers and topics are never in it); each answer is SmolLM2-135M-Instruct's own greedy answer
(at most 48 tokens, so some end mid-sentence). Deterministic: the same file every time.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "autointerp" / "audit" / "chat_corpus.jsonl"

SUBJECTS = [
    "the tides", "a sourdough loaf", "my old bicycle", "tulips", "the Roman empire", "Venice", "octopuses",
    "a job offer", "my landlord", "a noisy neighbour", "jet lag", "a sore throat", "vitamin D", "a car battery",
    "a leaking tap", "spreadsheets", "JavaScript promises", "Rust lifetimes", "a linked list", "binary search",
    "regular expressions", "Docker containers", "my wifi router", "a phone battery", "password managers",
    "the northern lights", "tectonic plates", "the speed of light", "DNA", "antibiotics", "the heart",
    "hummingbirds", "penguins", "wolves", "sunflowers", "mushrooms", "oak trees", "the Amazon river",
    "the Sahara", "Mount Everest", "Iceland", "Morocco", "Peru", "the Renaissance", "the Cold War",
    "the Industrial Revolution", "Shakespeare", "Beethoven", "impressionist painting", "jazz piano",
    "a wedding speech", "a birthday party", "a job reference", "a difficult conversation", "a team project",
    "a thank-you note", "a resignation letter", "a science fair", "a school essay", "fractions",
    "percentages", "probability", "the metric system", "compound interest", "a monthly budget",
    "a used car", "a first apartment", "a small garden", "a fish tank", "a puppy", "an old cat",
    "a chess puzzle", "a crossword", "a card trick", "yoga", "swimming", "rock climbing", "a 5k run",
    "stretching", "a vegetarian dinner", "lentil soup", "omelettes", "fresh pasta", "a lemon cake",
    "green tea", "a picnic", "a rainy weekend", "a long flight", "a road trip", "a museum visit",
    "a library card", "an online course", "a foreign language", "handwriting", "typing speed",
    "a podcast idea", "a short story", "a song", "a comic strip", "a photo album", "a family tree",
    "recycling", "solar panels", "wind turbines", "electric bikes", "trains", "lighthouses", "bridges",
    "skyscrapers", "the internet", "satellites", "telescopes", "robots", "calculators", "clocks",
]

FORMS = [
    "What do you know about {s}?", "I have a question about {s}.", "Please tell me something useful about {s}.",
    "How does {s} work?", "Could you give me advice on {s}?", "What is worth knowing about {s}?",
    "I keep thinking about {s}. Any thoughts?", "Help me write two sentences about {s}.",
    "What is one fun fact about {s}?", "How should I deal with {s}?", "Explain {s} briefly.",
    "What questions should I ask about {s}?",
]


def user_turns(n: int) -> list[str]:
    turns = [f.format(s=s) for s in SUBJECTS for f in FORMS]
    random.Random("chat-corpus").shuffle(turns)
    return turns[:n]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=1200)
    ap.add_argument("--max-new", type=int, default=48)
    ap.add_argument("--batch", type=int, default=48)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from autointerp.models import resolve

    folder, _ = resolve("smollm2-135m")
    tok = AutoTokenizer.from_pretrained(folder)
    tok.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, use_safetensors=True).eval()
    turns = user_turns(args.n)
    lines = []
    for b in range(0, len(turns), args.batch):
        chunk = turns[b:b + args.batch]
        texts = [tok.apply_chat_template([{"role": "user", "content": u}], tokenize=False, add_generation_prompt=True)
                 for u in chunk]
        enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.inference_mode():
            out = model.generate(**enc, max_new_tokens=args.max_new, do_sample=False, pad_token_id=tok.eos_token_id)
        for u, row in zip(chunk, out[:, enc["input_ids"].shape[1]:]):
            answer = tok.decode(row, skip_special_tokens=True).strip()
            lines.append(json.dumps({"messages": [{"role": "user", "content": u},
                                                  {"role": "assistant", "content": answer}]}))
        print(f"{len(lines)}/{len(turns)}", file=sys.stderr, flush=True)
    OUT.write_text("\n".join(lines) + "\n")
    print(f"{OUT}: {len(lines)} conversations")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
