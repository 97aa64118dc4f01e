"""The config of ``autointerp run``: one YAML file mapped onto nested dataclasses.

One dataclass per stage, one attribute docstring per field (they become the comments of
``autointerp config --print-defaults``). Loading is strict: an unknown or misspelled key is an
error naming the nearest known key, a value of the wrong type is an error naming the field and
the type, and cross-field rules are checked in ``__post_init__``. Any field can be overridden
from the command line with its dotted path (``--train.k 64``, ``--explain.explainers
token-enrichment,token-activation``); override values are read as YAML scalars.

Round trip: ``load_config(dump_config(cfg)) == cfg`` for every valid config.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import inspect
import textwrap
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from autointerp.activations import CacheConfig
from autointerp.data import ContextConfig, ExclusionRules
from autointerp.examples import ExamplesConfig
from autointerp.training import TrainJob


class ConfigError(ValueError):
    """A config that cannot be used: unknown field, wrong type, failed cross-field check."""


def _checked(section: str, build: Any) -> None:
    """Run ``build()`` (which constructs the job object a section maps onto) so that the job's own
    checks apply at load time; its ``ValueError`` becomes a ``ConfigError`` naming the section."""
    try:
        build()
    except ValueError as exc:
        raise ConfigError(f"{section}: {exc}") from exc


# ------------------------------------------------------------------------------- sections
@dataclass
class CacheSection:
    """Stage ``cache``: tokenise the corpus and cache activations at the hook points."""

    corpus: str = "python-stdlib"
    """corpus: python-stdlib (embedded), a .txt/.jsonl/.parquet file, a folder, or a datasets folder."""
    text_field: str = ContextConfig.text_field
    """field or column holding the text in JSONL, Parquet and datasets corpora."""
    hookpoints: list[str] = field(default_factory=lambda: ["mid"])
    """TransformerLens hook points; "mid" is blocks.<n_layers // 2>.hook_out (the residual stream at mid depth)."""
    tokens: int = 330_000
    """activation rows to cache (after exclusions); the trailing train.heldout_tokens are held out."""
    ctx_len: int = ContextConfig.ctx_len
    """tokens per context, BOS included."""
    packing: str = ContextConfig.packing
    """packed (documents joined, cut into contexts) or document (one document per context)."""
    exclude_first: int = ExclusionRules.first_positions
    """drop the first N positions of every context (attention sinks) from the cache."""
    keep_special: bool = False
    """keep special tokens (BOS, separators, padding) in the cache."""
    batch_size: int = CacheConfig.batch_size
    """contexts per forward pass."""
    shard_contexts: int = CacheConfig.shard_contexts
    """contexts per shard (a multiple of batch_size)."""
    dtype: str = CacheConfig.dtype
    """storage dtype: float32, float16 or bfloat16."""

    def __post_init__(self) -> None:
        if self.exclude_first < 0:
            raise ConfigError(f"cache.exclude_first must be >= 0, got {self.exclude_first}")
        _checked("cache", lambda: self.job("model", "cpu", self.hookpoints))

    def job(self, model: str, device: str, hookpoints: list[str]) -> CacheConfig:
        """The :class:`CacheConfig` of this section (its checks are the section's checks)."""
        return CacheConfig(model=model, hookpoints=hookpoints, corpus=self.corpus, tokens=self.tokens,
                           batch_size=self.batch_size, shard_contexts=self.shard_contexts, dtype=self.dtype,
                           device=device,
                           context=ContextConfig(ctx_len=self.ctx_len, packing=self.packing, text_field=self.text_field,
                                                 exclude=ExclusionRules(special_tokens=not self.keep_special,
                                                                        first_positions=self.exclude_first)))


@dataclass
class TrainSection:
    """Stage ``train``: one sparse dictionary per hook point."""

    arch: str = TrainJob.arch
    """relu, topk, batchtopk or jumprelu."""
    latents: int = 4608
    """dictionary size."""
    k: int = 32
    """active latents per token (topk, batchtopk)."""
    batch_size: int = TrainJob.batch_size
    """activation rows per step."""
    epochs: int = TrainJob.epochs
    """passes over the training tokens."""
    heldout_tokens: int = TrainJob.heldout_tokens
    """trailing cache tokens never trained on: the held-out set of evaluate, examples and scores."""
    lr: float | None = None
    """learning rate; null: the dictionaries library's size-scaled default."""
    seed: int = TrainJob.seed
    """initialisation and shuffling seed."""
    checkpoint_every: int = 10
    """steps between checkpoints (a killed run resumes from the last one)."""
    dictionary: str | None = None
    """a published dictionary to use instead of training one: an SAE Lens or sparsify folder, or one
    of ours; the cache then holds its hook point (null: train)."""
    dictionary_hookpoint: str | None = None
    """the hook point the dictionary reads, ours or SAE Lens's name (null: read from the folder)."""

    def __post_init__(self) -> None:
        for name in ("latents", "k", "batch_size", "epochs", "heldout_tokens", "checkpoint_every"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"train.{name} must be positive, got {getattr(self, name)}")
        if self.k > self.latents:
            raise ConfigError(f"train.k ({self.k}) cannot exceed train.latents ({self.latents})")
        if self.lr is not None and self.lr <= 0:
            raise ConfigError(f"train.lr must be positive, got {self.lr}")

    def job(self, activations: list[str], out: str) -> TrainJob:
        """The :class:`TrainJob` of this section over the given cache folders."""
        return TrainJob(activations=activations, out=out, arch=self.arch, latents=[self.latents], k=[self.k],
                        batch_size=self.batch_size, epochs=self.epochs, heldout_tokens=self.heldout_tokens,
                        lr=self.lr, seed=self.seed, checkpoint_every=self.checkpoint_every)


@dataclass
class EvaluateSection:
    """Stage ``evaluate``: held-out FVU, L0, dead fraction, CE loss recovered and KL."""

    downstream: bool = True
    """splice the dictionary into the model for CE-loss recovered and KL."""
    contexts: int = 64
    """held-out contexts for the downstream metrics."""

    def __post_init__(self) -> None:
        if self.contexts <= 0:
            raise ConfigError(f"evaluate.contexts must be positive, got {self.contexts}")


@dataclass
class ExamplesSection:
    """Stage ``examples``: each latent's held-out examples (half to explain, half to score)."""

    n_top: int = ExamplesConfig.n_top
    """top-activating contexts per latent."""
    n_quantile_bins: int = ExamplesConfig.n_quantile_bins
    """activation quantile bins sampled below the top."""
    n_per_quantile: int = ExamplesConfig.n_per_quantile
    """contexts per quantile bin."""
    n_random: int = ExamplesConfig.n_random
    """contexts where the latent does not fire."""
    window_before: int = ExamplesConfig.window[0]
    """tokens kept before the peak."""
    window_after: int = ExamplesConfig.window[1]
    """tokens kept after the peak."""
    explain_fraction: float = ExamplesConfig.explain_fraction
    """share of each kind of example shown to the explainer; the rest are kept for scoring."""
    seed: int = ExamplesConfig.seed
    """sampling seed."""

    def __post_init__(self) -> None:
        # stricter than ExamplesConfig: both splits must get examples, and explanations need top ones
        if not 0.0 < self.explain_fraction < 1.0:
            raise ConfigError(f"examples.explain_fraction must be in (0, 1), got {self.explain_fraction}")
        if self.n_top <= 0:
            raise ConfigError("examples.n_top must be positive: explanations are written from the top examples")
        _checked("examples", self.job)

    def job(self) -> ExamplesConfig:
        """The :class:`ExamplesConfig` of this section."""
        return ExamplesConfig(n_top=self.n_top, n_quantile_bins=self.n_quantile_bins,
                              n_per_quantile=self.n_per_quantile, n_random=self.n_random,
                              window=(self.window_before, self.window_after),
                              explain_fraction=self.explain_fraction, seed=self.seed)


@dataclass
class ClientSection:
    """The language model that explainers and LLM scorers ask."""

    model: str | None = None
    """local model spec (alias, .gguf, folder); null: the subject model."""
    endpoint: str | None = None
    """base URL of an OpenAI-compatible API; when set, it is used instead of a local model."""
    endpoint_model: str | None = None
    """model name at the endpoint."""
    api_key_env: str | None = None
    """environment variable holding the endpoint's API key (the key itself never goes in a config)."""

    def __post_init__(self) -> None:
        if self.endpoint and not self.endpoint_model:
            raise ConfigError("explain.client.endpoint needs explain.client.endpoint_model")
        if self.endpoint and self.model:
            raise ConfigError("explain.client: give either model (local) or endpoint, not both")
        if not self.endpoint and (self.endpoint_model or self.api_key_env):
            raise ConfigError("explain.client.endpoint_model and api_key_env need explain.client.endpoint")


@dataclass
class ExplainSection:
    """Stage ``explain``: explanations of live features."""

    explainers: list[str] = field(default_factory=lambda: ["token-enrichment", "token-activation"])
    """explainers to run; token-enrichment asks no language model."""
    features: int = 0
    """live features explained by token-enrichment (the first N by latent); 0: all."""
    llm_features: int = 16
    """live features explained by each LLM explainer (the first N by latent); 0: all."""
    concurrency: int = 8
    """features explained together (local batch size, or concurrent endpoint requests)."""
    client: ClientSection = field(default_factory=ClientSection)
    """the language model asked by LLM explainers and scorers."""

    def __post_init__(self) -> None:
        from autointerp.explainers import explainer_names

        unknown = [e for e in self.explainers if e not in explainer_names()]
        if unknown:
            raise ConfigError(f"explain.explainers: unknown {unknown}; known: {explainer_names()}")
        if "token-enrichment" not in self.explainers:
            raise ConfigError("explain.explainers must include token-enrichment: it is the baseline every "
                              "score is compared with")
        for name in ("features", "llm_features"):
            if getattr(self, name) < 0:
                raise ConfigError(f"explain.{name} must be >= 0, got {getattr(self, name)}")
        if self.concurrency <= 0:
            raise ConfigError(f"explain.concurrency must be positive, got {self.concurrency}")


@dataclass
class ScoreSection:
    """Stage ``score``: every ok explanation scored with its controls."""

    scorers: list[str] = field(default_factory=lambda: ["embedding"])
    """embedding (offline MiniLM), detection, fuzzing, simulation (these ask explain.client)."""
    seed: int = 0
    """picks each random-explanation control."""

    def __post_init__(self) -> None:
        from autointerp.scorers import SCORERS

        unknown = [s for s in self.scorers if s not in SCORERS]
        if unknown:
            raise ConfigError(f"score.scorers: unknown {unknown}; known: {sorted(SCORERS)}")


@dataclass
class ReportSection:
    """Stage ``report``: report.html and features/<id>.html."""

    feature_pages: str = "explained"
    """which features get a page: explained, all, or a number (the first N)."""

    def __post_init__(self) -> None:
        if self.feature_pages not in ("explained", "all") and not str(self.feature_pages).isdigit():
            raise ConfigError(f"report.feature_pages must be explained, all or a number, got {self.feature_pages!r}")


@dataclass
class RunConfig:
    """The whole job: the subject model and one section per stage."""

    model: str = "smollm2-135m"
    """subject model: alias (smollm2-135m), .gguf file, local folder, or a hub id in the local cache."""
    device: str = "cpu"
    """cpu, cuda, cuda:1, ... (does not change results beyond float tolerance, so no stage is redone for it)."""
    threads: int | None = None
    """torch CPU threads; null: torch's default."""
    cache: CacheSection = field(default_factory=CacheSection)
    train: TrainSection = field(default_factory=TrainSection)
    evaluate: EvaluateSection = field(default_factory=EvaluateSection)
    examples: ExamplesSection = field(default_factory=ExamplesSection)
    explain: ExplainSection = field(default_factory=ExplainSection)
    score: ScoreSection = field(default_factory=ScoreSection)
    report: ReportSection = field(default_factory=ReportSection)

    def __post_init__(self) -> None:
        if self.train.dictionary is None and self.train.heldout_tokens >= self.cache.tokens:
            raise ConfigError(f"train.heldout_tokens ({self.train.heldout_tokens}) must be below cache.tokens "
                              f"({self.cache.tokens}): nothing would be left to train on")
        if self.threads is not None and self.threads <= 0:
            raise ConfigError(f"threads must be positive, got {self.threads}")


# ------------------------------------------------------------------------ (de)serialising
def _field_docs(cls: type) -> dict[str, str]:
    """Attribute docstrings of a dataclass: the string literal right after each field."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body
    docs = {}
    for node, nxt in zip(body, body[1:]):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)):
            docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _type_name(tp: Any) -> str:
    if tp is type(None):
        return "null"
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        return f"list of {_type_name(typing.get_args(tp)[0])}"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """``value`` checked against the annotation ``tp`` (ints are accepted for floats; a
    comma-separated string is accepted for a list)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError:
                pass
        raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}")
    if origin is list:
        (item,) = typing.get_args(tp)
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}")
        return [_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)  # e.g. report.feature_pages: 200
    raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r} ({type(value).__name__})")


def _unknown(key: str, known: list[str], where: str) -> ConfigError:
    near = difflib.get_close_matches(key, known, n=1, cutoff=0.5)
    hint = f"; did you mean {(where + '.' if where else '') + near[0]!r}?" if near else f"; known: {', '.join(known)}"
    return ConfigError(f"unknown config field {(where + '.' if where else '') + key!r}{hint}")


def from_dict(cls: type, data: Any, where: str = "") -> Any:
    """Build dataclass ``cls`` from a mapping, strictly (see module docstring)."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping of fields, got {data!r}")
    hints = _hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            raise _unknown(str(key), names, where)
        kwargs[key] = _coerce(value, hints[key], f"{where}.{key}" if where else key)
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where or 'config'}: {exc}") from exc


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def dump_config(cfg: Any, comments: bool = False) -> str:
    """YAML text of ``cfg``; with ``comments``, each field is preceded by its docstring."""
    if not comments:
        return yaml.safe_dump(to_dict(cfg), sort_keys=False)
    return "\n".join(_commented(cfg, 0)) + "\n"


def _commented(obj: Any, indent: int) -> list[str]:
    pad = "  " * indent
    docs = _field_docs(type(obj))
    lines = []
    if indent == 0 and type(obj).__doc__:
        lines.append(f"# {type(obj).__doc__.strip().splitlines()[0]}")
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            lines.append("")
            lines.append(f"{pad}# {docs.get(f.name) or type(value).__doc__.strip().splitlines()[0]}")
            lines.append(f"{pad}{f.name}:")
            lines.extend(_commented(value, indent + 1))
            continue
        for line in textwrap.wrap(docs.get(f.name, ""), 96 - len(pad)):
            lines.append(f"{pad}# {line}")
        text = yaml.safe_dump({f.name: value}, default_flow_style=True, sort_keys=False).strip()
        if text.startswith("{") and text.endswith("}"):
            text = text[1:-1]
        lines.append(f"{pad}{text}")
    return lines


def _set_path(data: dict, path: str, value: Any) -> None:
    """Set ``data["a"]["b"] = value`` for ``path`` ``a.b``, checking names against RunConfig."""
    cls: Any = RunConfig
    parts = path.split(".")
    node = data
    walked = []
    for i, part in enumerate(parts):
        names = [f.name for f in dataclasses.fields(cls)]
        if part not in names:
            raise _unknown(part, names, ".".join(walked))
        walked.append(part)
        tp = _hints(cls)[part]
        if i == len(parts) - 1:
            node[part] = value
        else:
            if not dataclasses.is_dataclass(tp):
                raise ConfigError(f"{'.'.join(walked)} is a value, not a section: cannot set {path}")
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
            cls = tp


def parse_overrides(args: list[str]) -> dict[str, Any]:
    """``["--train.k", "64", "--cache.corpus=x.txt"]`` -> ``{"train.k": 64, "cache.corpus": "x.txt"}``."""
    out: dict[str, Any] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--") or len(arg) == 2:
            raise ConfigError(f"unexpected argument {arg!r}: overrides look like --section.field VALUE")
        key = arg[2:]
        if "=" in key:
            key, raw = key.split("=", 1)
            i += 1
        else:
            if i + 1 >= len(args):
                raise ConfigError(f"override {arg} needs a value")
            raw = args[i + 1]
            i += 2
        key = key.replace("-", "_")
        try:
            out[key] = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            out[key] = raw
    return out


def load_config(source: str | Path | dict | list | None = None, overrides: dict[str, Any] | None = None) -> RunConfig:
    """The :class:`RunConfig` of a YAML file (or text, or mapping; ``None``: the defaults) with
    dotted ``overrides`` applied on top."""
    if source is None:
        data: Any = {}
    elif isinstance(source, (dict, list)):
        data = source
    else:
        is_path = isinstance(source, Path) or "\n" not in str(source)
        if is_path and not Path(source).is_file():
            raise ConfigError(f"config file {source} not found")
        text = Path(source).read_text() if is_path else str(source)
        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{source}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"a config is a mapping of sections, got {type(data).__name__}")
    data = _deepcopy(data)
    for path, value in (overrides or {}).items():
        _set_path(data, path, value)
    return from_dict(RunConfig, data)


def _deepcopy(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: _deepcopy(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_deepcopy(v) for v in data]
    return data


def diff_configs(old: dict, new: dict, prefix: str = "") -> list[str]:
    """Dotted paths whose values differ between two config dicts (``to_dict`` form)."""
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        path = f"{prefix}{key}"
        if isinstance(a, dict) and isinstance(b, dict):
            out.extend(diff_configs(a, b, path + "."))
        elif a != b:
            out.append(path)
    return out
