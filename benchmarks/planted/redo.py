"""Redo a finished audit's stages from one stage on with the current code, then grade it.

    .venv/bin/python benchmarks/planted/redo.py benchmarks/_out/planted/hostile-0 --corpus plant --from triggers

For a change that acts only from that stage on (a new trigger search, a new ranking): the stages
before it (``run``, ``base``, ``diff``, ``behaviour``: most of an audit's time) are taken as they
were. The audit ``PLANT/audit-<corpus>`` is left untouched: the redo goes to
``PLANT/audit-<corpus>-redo-<stage>``, where the activation caches and the dictionary are hard
links (no stage writes them again) and every other file is a copy. The audit's recorded settings are replaced by the current defaults (with the recorded
corpus, device left out), so the resume is not refused for settings that did not exist when it
ran; the redone stages use those defaults. Writes ``grade.json`` there, as ``audit.py`` does; the
wall time of the redone stages is in its ``seconds``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))


def prepare(src: Path, dst: Path, stage: str) -> dict:
    """Copy ``src`` to ``dst`` (hard links, copies where a stage writes in place), drop the records
    of ``stage`` and every later stage, and return the recorded settings."""
    from autointerp.audit import STAGES

    if stage not in STAGES:
        raise SystemExit(f"unknown stage {stage!r}; stages: {', '.join(STAGES)}")
    subprocess.run(["cp", "-al", str(src), str(dst)], check=True)
    for f in dst.rglob("*"):  # only the caches and the dictionary stay linked: nothing writes them again
        if f.is_file() and not {"activations", "dictionaries"} & set(f.relative_to(dst).parts):
            data = f.read_bytes()
            f.unlink()
            f.write_bytes(data)
    for name in STAGES[STAGES.index(stage):]:
        (dst / "audit" / "stages" / f"{name}.json").unlink(missing_ok=True)
    for f in ("triggers.json", "describe.json", "audit.json", "report.html"):
        for folder in (dst / "audit", dst):
            (folder / f).unlink(missing_ok=True)
    return json.loads((dst / "audit" / "identity.json").read_text())


def main(argv: list[str] | None = None) -> int:
    from audit import grade_and_write

    from autointerp.audit import AuditSettings, audit

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("plant", type=Path)
    ap.add_argument("--corpus", default="plant", choices=["plant", "default"])
    ap.add_argument("--from", dest="stage", default="triggers")
    ap.add_argument("--base", default="smollm2-135m")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--force", action="store_true", help="replace an earlier redo")
    ap.add_argument("--resume", action="store_true", help="finish an interrupted redo")
    args = ap.parse_args(argv)
    plant = args.plant.resolve()
    src = plant / f"audit-{args.corpus}"
    dst = plant / f"audit-{args.corpus}-redo-{args.stage}"
    if args.resume:
        ident = json.loads((dst / "audit" / "identity.json").read_text())
        settings = AuditSettings(**{**ident["settings"], "threads": args.threads})
    else:
        if dst.exists():
            if not args.force:
                raise SystemExit(f"{dst} exists (--force replaces it, --resume finishes it)")
            shutil.rmtree(dst)
        ident = prepare(src, dst, args.stage)
        settings = AuditSettings(corpus=ident["settings"]["corpus"], threads=args.threads)
        ident["settings"] = settings.fingerprint()
        (dst / "audit" / "identity.json").write_text(json.dumps(ident, indent=2))
    audit(str(plant / "model"), args.base, dst, settings, progress=False)
    grade_and_write(plant, dst, args.corpus, None)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
