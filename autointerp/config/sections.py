"""The sections of the ``autointerp run`` config: one dataclass per stage, one attribute
docstring per field (the comments of ``autointerp config --print-defaults``), cross-field rules in
``__post_init__``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

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
    endpoint_tokenizer: str | None = None
    """model spec (alias, folder, hub id in the local cache) whose tokenizer and chat template the
    endpoint's model uses: enables teacher-forced scoring through the endpoint (``/v1/completions``
    with echo + logprobs), probed once; null: the scorers let the endpoint generate."""
    timeout_s: float = 60.0
    """per-request timeout of the endpoint (seconds)."""
    retries: int = 5
    """retries of a failed endpoint request (rate limits, 5xx, timeouts, dropped connections)."""
    deadline_s: float | None = None
    """wall-clock budget (seconds) of each LLM explain / score pass; what it stops is stored as
    timeout and the stage stays unfinished, so the next run redoes only that. null: none."""

    def __post_init__(self) -> None:
        if self.endpoint and not self.endpoint_model:
            raise ConfigError("explain.client.endpoint needs explain.client.endpoint_model")
        if self.endpoint and self.model:
            raise ConfigError("explain.client: give either model (local) or endpoint, not both")
        if not self.endpoint and (self.endpoint_model or self.api_key_env or self.endpoint_tokenizer):
            raise ConfigError("explain.client.endpoint_model, api_key_env and endpoint_tokenizer need "
                              "explain.client.endpoint")
        if not self.timeout_s > 0 or self.retries < 0:
            raise ConfigError(f"explain.client: timeout_s must be > 0 and retries >= 0, got {self.timeout_s}, "
                              f"{self.retries}")
        if self.deadline_s is not None and not self.deadline_s > 0:
            raise ConfigError(f"explain.client.deadline_s must be > 0 (or null), got {self.deadline_s}")


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
