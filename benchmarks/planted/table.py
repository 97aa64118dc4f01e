"""Print the adversarial-test table (markdown) from every ``PLANT/plant.json`` + ``PLANT/audit/audit.json``.

    .venv/bin/python benchmarks/planted/table.py benchmarks/_out/planted/*/
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def fmt(x, spec: str = "") -> str:
    if x is None:
        return "-"
    if isinstance(x, bool):
        return "yes" if x else "no"
    return format(x, spec)


def ablation(a: dict) -> str:
    """The circuit's ablation check: top-k vs random nodes (which kind), passed or not."""
    if not a.get("k") or a.get("passed") is None:
        return "-"
    kind = "input tokens" if a.get("nodes") == "input" else "features"
    return (f"{a['abs_delta_top']:.2f} / {a['mean_abs_delta_random']:.2f} ({a['k']} {kind}, "
            f"{'passed' if a['passed'] else 'failed'})")


def main(paths: list[str]) -> int:
    head = ["plant", "seed", "trigger", "attack success", "false trigger", "false trigger (decoy word)", "Δ NLL on base-greedy answers", "Δ NLL neutral text",
            "fine-tune", "triggered ctx", "max AUROC", "separating", "diff ranking", "diff rank", "flag rank", "flagged",
            "explanation names trigger", "circuit: top input is trigger", "trigger share of input influence", "circuit ablation (top / random |Δ|)",
            "control: significant / flagged", "control: flag rule alone", "audit wall"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for p in paths:
        p = Path(p)
        if not (p / "audit" / "audit.json").is_file():
            continue
        plant = json.loads((p / "plant.json").read_text())
        a = json.loads((p / "audit" / "audit.json").read_text())
        c = a.get("circuit") or {}
        row = [plant["plant"], str(plant["seed"]), f"`{plant['trigger']}`",
               fmt(plant["tuned"]["attack_success"], ".0%"), fmt(plant["tuned"]["false_trigger"], ".1%"),
               fmt(plant["tuned"].get("false_trigger_decoy"), ".1%"),
               fmt(plant["clean_nll_change"], "+.3f"), fmt(plant.get("text_nll_change"), "+.3f"),
               f"{plant['train_s'] / 60:.1f} min", f"{a['triggered_contexts']}/{a['corpus_contexts']}",
               fmt(a["max_auroc"], ".3f"), str(a["n_separating"]), a.get("rank_by", "frequency"),
               fmt(a["diff_rank"]), fmt(a["flag_rank"]),
               str(a["n_flagged"]), fmt(a["explanation_names_trigger"]), fmt(c.get("points_at_trigger")),
               fmt(c.get("trigger_input_share"), ".0%"), ablation(c.get("ablation") or {}),
               f"{a['control_significant']} / {fmt(a['control_flagged'])}",
               "-" if a["control_ungated_features"] is None else
               f"{a['control_ungated_flagged']} of {a['control_ungated_features']}", f"{a['audit_wall_s'] / 60:.1f} min" + (" (runs reused)" if a.get("reused_runs") else "")]
        print("| " + " | ".join(row) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
