"""The layout of a run folder: one job of ``autointerp run`` writes one folder.

::

    RUN/
      config.yaml                     the resolved config of the job
      run.log                         every stage's timings, figures and warnings
      stages/<stage>.json             completion record of each finished stage
      activations/<hookpoint>/        manifest.json + shard-*.safetensors
      dictionaries/<hookpoint>/       cfg.json, weights.safetensors, autointerp.json, metrics.json
      features.db                     features, examples, explanations, scores (SQLite)
      report.html                     the run at a glance
      features/<id>.html              one page per feature (``id`` = the features.db row id)
      assets/plotly.min.js            plotly's JavaScript, served locally (no CDN)
      search/                         search indexes (MiniLM embeddings, FTS5), rebuilt from features.db
      behaviour/                      behaviour diff: prompts.sqlite (per-prompt table), behaviour.json
      audit/                          `autointerp audit`: identity.json, stages/, base/ (the base's
                                      cache), triggers.json, token_scan.npy, audit.json (the verdict)

Everything that reads or writes a run goes through :class:`RunFolder`, so the layout lives here
only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RunFolder:
    """Paths inside one run folder (nothing is created by constructing it)."""

    root: Path

    def __init__(self, root: str | Path) -> None:
        object.__setattr__(self, "root", Path(root))

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def log(self) -> Path:
        return self.root / "run.log"

    @property
    def stages(self) -> Path:
        return self.root / "stages"

    def stage_record(self, stage: str) -> Path:
        return self.stages / f"{stage}.json"

    @property
    def activations(self) -> Path:
        return self.root / "activations"

    @property
    def dictionaries(self) -> Path:
        return self.root / "dictionaries"

    def dictionary_dirs(self) -> list[Path]:
        """The trained dictionaries of the run (folders holding ``autointerp.json``), sorted."""
        if not self.dictionaries.is_dir():
            return []
        return sorted(p.parent for p in self.dictionaries.glob("*/autointerp.json"))

    @property
    def audit(self) -> Path:
        return self.root / "audit"

    @property
    def db(self) -> Path:
        return self.root / "features.db"

    @property
    def report(self) -> Path:
        return self.root / "report.html"

    @property
    def feature_pages(self) -> Path:
        return self.root / "features"

    def feature_page(self, feature_id: int) -> Path:
        return self.feature_pages / f"{feature_id}.html"

    @property
    def assets(self) -> Path:
        return self.root / "assets"

    @property
    def behaviour(self) -> Path:
        return self.root / "behaviour"
