"""The run report: static HTML pages that open offline (no CDN, no network request).

:func:`build_report` writes into the run folder (layout in :mod:`autointerp.runfolder`):

``report.html``, the run at a glance:
    * the config (``config.yaml``, escaped, collapsible), or a note that the run has none;
    * the model(s) of the dictionaries (spec, layers, width, dtype, checksum);
    * each dictionary's held-out metrics from ``metrics.json``'s ``evaluation`` block: FVU, L0,
      dead fraction, CE loss recovered (zero and mean ablation), KL, held-out tokens;
    * feature counts, and explanation / score rows per explainer / scorer and status;
    * a plotly histogram of log10 firing density of the live features (``features.db``);
    * per scorer, the distribution of scores of the explanations against their two controls
      (a random other feature's explanation, and the no-LLM baseline), with n and medians;
    * a table of every feature (id, dictionary, latent, density, max activation, best
      explanation with its explainer, the best explanation's scores and control values) that
      sorts on a header click and filters with a text box (vanilla JS, data embedded as JSON).
      Failed explanations and scores show their status (``parse_error``, ...), never a value;
    * with ``diffs`` rows in ``features.db`` (``autointerp diff``), a "Model diff" section per base
      model and dictionary: the summary from ``diff.json`` (models, tokens, FVU on base vs
      fine-tuned activations, significant latents, the z threshold) and the top 50 latents by rank;
    * with ``circuits/*.json`` (``autointerp circuit``), a list of the circuits (prompt, target, link
      to the target's page); a file that cannot be read or drawn is shown as a note with the reason.

``features/<id>.html``, one feature (``id`` = the ``features.db`` row id):
    density, max activation; every explanation (explainer, model, status; the raw response of a
    failure); every score with its controls, n, 95% CI and status; a histogram of the non-zero
    activations in the stored example windows (labelled as such: top examples are
    over-represented); the tokens the unit decoder direction promotes and suppresses through the
    final norm scale and the unembedding of the dictionary's model (direct effect only); the 10
    nearest latents by decoder cosine (linked when they have a page); and the top, quantile and
    random examples, each token a span whose background follows its activation, the value on hover.
    Audit evidence when there is some: watchlist flags, the feature's model-diff rows, and every
    circuit whose target is the feature (its checks as text and the graph drawn with plotly).
    Besides explained features, ``feature_pages="explained"`` pages flagged features, significantly
    diffed ones and circuit targets.

``assets/plotly.min.js``: plotly's JavaScript from the installed ``plotly`` package, loaded by
relative ``<script src>``.

Safety: dataset, model and config text is untrusted. It is HTML-escaped everywhere; JSON in a
``<script>`` block has ``<``, ``>``, ``&`` and U+2028/2029 escaped; the table is built with
``textContent``; figures carry no dataset text.

The model of a dictionary is loaded once per process (``autointerp.models.load_model``); when it
cannot be loaded, the pages say so instead of showing the unembedding view. For notebooks,
:func:`feature_fragment_html` returns one feature's page content (scoped styles, no script) and
:func:`feature_histogram` its activation histogram as a plotly Figure.
"""

from autointerp.report.build import build_report, feature_fragment_html, feature_histogram

__all__ = ["build_report", "feature_fragment_html", "feature_histogram"]
