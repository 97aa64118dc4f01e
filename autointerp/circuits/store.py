"""A circuit on disk: its file name (:func:`circuit_slug`), and the JSON written and read back."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

from autointerp.circuits.targets import CircuitError

FORMAT_VERSION = 1


def circuit_slug(prompt: str, target: str) -> str:
    """A file name for a circuit: the target in safe characters plus a hash of prompt and target."""
    h = hashlib.blake2b(f"{target}\0{prompt}".encode(), digest_size=6).hexdigest()
    return f"{re.sub(r'[^A-Za-z0-9_.=-]+', '_', target)[:60]}-{h}"


def save_circuit(graph: dict, path: str | Path) -> Path:
    """Write ``graph`` as JSON (atomically: a temporary file renamed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(graph, indent=1, ensure_ascii=False, allow_nan=False) + "\n")
    tmp.replace(path)
    return path


def load_circuit(path: str | Path) -> dict:
    """A graph written by :func:`circuit`; ``CircuitError`` when the file is not one."""
    try:
        graph = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CircuitError(f"cannot read circuit {path}: {e}") from e
    if not isinstance(graph, dict) or graph.get("version") != FORMAT_VERSION or "nodes" not in graph:
        raise CircuitError(f"{path} is not a circuit graph of format version {FORMAT_VERSION}")
    graph["path"] = str(path)  # where it was read from (the file may have moved since it was written)
    return graph
