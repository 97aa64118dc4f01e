"""The notebooks run top to bottom (nbclient) on a small run of the tiny model, without an error."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from autointerp.config import dump_config, load_config
from helpers import REPO, tiny_run_config, write_word_corpus

NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))


def test_there_are_notebooks():
    assert [p.name for p in NOTEBOOKS] == ["01_quickstart.ipynb", "02_explore_features.ipynb"]


@pytest.fixture(scope="module")
def env(tiny_model_dir, tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("nb")
    config = root / "tiny.yaml"
    config.write_text(dump_config(load_config(tiny_run_config(tiny_model_dir, write_word_corpus(root / "corpus")))))
    return {"AUTOINTERP_RUN": str(root / "run"), "AUTOINTERP_CONFIG": str(config)}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs_top_to_bottom(path: Path, env, monkeypatch, tmp_path):
    """In order: 01 runs the job into AUTOINTERP_RUN, 02 explores it (module-scoped run folder)."""
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors
    assert all(c.get("execution_count") for c in nb.cells if c.cell_type == "code")
    if path.name.startswith("01"):
        assert (Path(env["AUTOINTERP_RUN"]) / "report.html").exists()
        text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
        assert "features alive" in text
