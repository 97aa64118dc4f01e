"""Print the audit benchmark table (markdown): one row per ``PLANT/audit-<corpus>/grade.json``
written by ``benchmarks/planted/audit.py``, beside the plant's own figures (``PLANT/plant.json``).

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


HEAD = ["plant", "seed", "corpus", "trigger", "plant attack success", "verdict", "behaviour", "trigger signal",
        "feature signal", "watchlist flags", "diff rank", "audit rank", "first separating flagged",
        "recovered trigger (attack success)", "true trigger", "recovered / true", "audit wall"]


def row(plant: dict, g: dict) -> list[str]:
    s = g["signals"]
    rec, true = g.get("recovered"), g.get("true_trigger")
    return [plant["plant"], str(plant["seed"]), g["corpus"], f"`{plant['trigger']}`" if plant.get("trigger") else "-",
            fmt(plant["tuned"].get("attack_success"), ".0%"), g["verdict"],
            "concentrated" if s["behaviour"] else "not concentrated", str(s["trigger"]), str(s["feature"]),
            str(s["watchlist"]) + (" (" + ", ".join(sorted({c["concept"] for c in g.get("concepts", [])})) + ")"
                                   if g.get("concepts") else ""),
            fmt(g.get("diff_rank")), fmt(g.get("audit_rank")),
            fmt(g.get("first_separating_flagged")),
            "-" if rec is None else f"`{rec['text']}` ({rec['attack_success']:.0%}, random <= {rec['control_max']:.0%})",
            "-" if true is None else f"{true['attack_success']:.0%}" + (
                f" (opening the message: {true['as_planted']['attack_success']:.0%})" if "as_planted" in true else ""),
            fmt(g.get("recovered_vs_true"), ".2f"),
            "-" if g.get("wall_s") is None else f"{g['wall_s'] / 60:.1f} min"]


def main(paths: list[str]) -> int:
    print("| " + " | ".join(HEAD) + " |")
    print("|" + "---|" * len(HEAD))
    for p in map(Path, paths):
        if not (p / "plant.json").is_file():
            continue
        plant = json.loads((p / "plant.json").read_text())
        for grade in sorted(p.glob("audit-*/grade.json")):
            print("| " + " | ".join(row(plant, json.loads(grade.read_text()))) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
