"""The config of ``autointerp run``: one YAML file mapped onto nested dataclasses.

One dataclass per stage, one attribute docstring per field (they become the comments of
``autointerp config --print-defaults``). Loading is strict: an unknown or misspelled key is an
error naming the nearest known key, a value of the wrong type is an error naming the field and
the type, and cross-field rules are checked in ``__post_init__``. Any field can be overridden
from the command line with its dotted path (``--train.k 64``, ``--explain.explainers
token-enrichment,token-activation``); override values are read as YAML scalars.

Round trip: ``load_config(dump_config(cfg)) == cfg`` for every valid config.
"""

from autointerp.config.loading import (diff_configs, dump_config, from_dict, load_config, parse_overrides,
                                       to_dict)
from autointerp.config.sections import (CacheSection, ClientSection, ConfigError, EvaluateSection,
                                        ExamplesSection, ExplainSection, ReportSection, RunConfig, ScoreSection,
                                        TrainSection)

__all__ = ["CacheSection", "ClientSection", "ConfigError", "EvaluateSection", "ExamplesSection", "ExplainSection",
           "ReportSection", "RunConfig", "ScoreSection", "TrainSection", "diff_configs", "dump_config", "from_dict",
           "load_config", "parse_overrides", "to_dict"]
