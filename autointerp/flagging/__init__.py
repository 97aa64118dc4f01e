"""Flag features against watchlists of concepts (deception, backdoors, power-seeking, ...).

* :mod:`~autointerp.flagging.watchlist`: the YAML watchlist format and its strict loader
  (``default_watchlist.yaml`` ships with the package);
* :mod:`~autointerp.flagging.signals`: the three signals (explanation similarity, activation
  AUROC on probe texts, causal effect of steering and ablating) and their nulls, with the maths;
* :mod:`~autointerp.flagging.nulls`: a value against a null sample (z, empirical p);
* :mod:`~autointerp.flagging.framing`: the causal probes' prompts as token ids (plain or chat);
* :mod:`~autointerp.flagging.flag`: the flag rule, :func:`flag_run` (writes ``features.db``'s
  ``flags`` table) and :func:`flags` (reads it back, best first);
* :mod:`~autointerp.flagging.cli`: ``autointerp flag RUN [--watchlist FILE]``.
"""

from autointerp.flagging.flag import FlagError, FlagSettings, decide, flag_run, flags, passes
from autointerp.flagging.watchlist import Concept, Watchlist, WatchlistError, load_watchlist, parse_watchlist

__all__ = ["Concept", "FlagError", "FlagSettings", "Watchlist", "WatchlistError", "decide", "flag_run", "flags",
           "load_watchlist", "parse_watchlist", "passes"]
