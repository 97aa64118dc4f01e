"""Attribution graphs (circuits) over a run's dictionaries: ``circuit(run, prompt, target)``.

See :mod:`autointerp.circuits.graph` for the replacement model, the attribution maths and the
pruning; :mod:`~autointerp.circuits.targets` for what is traced (dictionaries, prompt, target),
:mod:`~autointerp.circuits.tracer` for the forward passes, :mod:`~autointerp.circuits.ablation` for
the causal check, :mod:`~autointerp.circuits.store` for the JSON on disk, and
:mod:`~autointerp.circuits.figure` for the plotly figure and the HTML fragment.
"""

from autointerp.circuits.ablation import ablation_check
from autointerp.circuits.figure import circuit_figure, circuit_fragment_html
from autointerp.circuits.graph import COMPLETENESS_TOL, circuit
from autointerp.circuits.store import circuit_slug, load_circuit, save_circuit
from autointerp.circuits.targets import CircuitError

__all__ = ["COMPLETENESS_TOL", "CircuitError", "ablation_check", "circuit", "circuit_figure",
           "circuit_fragment_html", "circuit_slug", "load_circuit", "save_circuit"]
