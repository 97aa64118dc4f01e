"""The run config: YAML round trip, strict loading, overrides, the commented template."""

from __future__ import annotations

import pytest
import yaml

from autointerp.config import (
    ConfigError, RunConfig, diff_configs, dump_config, load_config, parse_overrides, to_dict)
from helpers import run_cli


def test_defaults_round_trip_through_yaml_with_and_without_comments():
    cfg = RunConfig()
    assert load_config(dump_config(cfg)) == cfg
    commented = dump_config(cfg, comments=True)
    assert load_config(commented) == cfg
    # every field carries its docstring as a comment
    assert "# dictionary size." in commented and "# held-out contexts for the downstream metrics." in commented
    assert commented.count("\n#") + commented.count("  #") > 40


def test_a_changed_config_round_trips(tmp_path):
    cfg = load_config({"train": {"k": 16, "lr": 1e-3}, "cache": {"hookpoints": ["blocks.3.hook_out"]},
                       "explain": {"client": {"endpoint": "http://localhost:1/v1", "endpoint_model": "m"}}})
    path = tmp_path / "c.yaml"
    path.write_text(dump_config(cfg))
    again = load_config(path)
    assert again == cfg and again.train.k == 16 and again.explain.client.endpoint_model == "m"
    assert diff_configs(to_dict(RunConfig()), to_dict(cfg)) == [
        "cache.hookpoints", "explain.client.endpoint", "explain.client.endpoint_model", "train.k", "train.lr"]


@pytest.mark.parametrize("data, message", [
    ({"trian": {"k": 3}}, "unknown config field 'trian'; did you mean 'train'"),
    ({"train": {"kk": 3}}, "did you mean 'train.k'"),
    ({"explain": {"client": {"endpont": "x"}}}, "did you mean 'explain.client.endpoint'"),
    ({"train": {"k": "many"}}, "train.k: expected int, got 'many'"),
    ({"train": {"k": True}}, "train.k: expected int"),
    ({"train": {"lr": "fast"}}, "train.lr: expected float or null"),
    ({"cache": {"hookpoints": "blocks.1.hook_out"}}, None),  # a string is a one-item list: fine
    ({"cache": {"tokens": 1000}}, "train.heldout_tokens (30000) must be below cache.tokens (1000)"),
    ({"train": {"k": 64, "latents": 32}}, "train.k (64) cannot exceed train.latents (32)"),
    ({"explain": {"explainers": ["token-activation"]}}, "must include token-enrichment"),
    ({"explain": {"explainers": ["token-enrichment", "magic"]}}, "unknown ['magic']"),
    ({"score": {"scorers": ["vibes"]}}, "unknown ['vibes']"),
    ({"explain": {"client": {"endpoint": "http://x"}}}, "needs explain.client.endpoint_model"),
    ({"explain": {"client": {"endpoint_tokenizer": "smollm2-135m"}}}, "need explain.client.endpoint"),
    ({"explain": {"client": {"deadline_s": 0}}}, "deadline_s must be > 0"),
    ({"explain": {"client": {"timeout_s": -1}}}, "timeout_s must be > 0"),
    ({"cache": {"shard_contexts": 10, "batch_size": 16}}, "multiple of"),
    (["not", "a", "mapping"], "mapping"),
    ({"train": 5}, "train: expected a mapping"),
])
def test_bad_configs_name_the_field(data, message):
    if message is None:
        assert load_config(data).cache.hookpoints == ["blocks.1.hook_out"]
        return
    with pytest.raises(ConfigError) as err:
        load_config(data)
    assert message in str(err.value)


def test_overrides_parse_as_yaml_scalars_and_apply_by_path():
    ov = parse_overrides(["--train.k", "64", "--train.lr=1e-3", "--evaluate.downstream", "false",
                          "--explain.explainers", "token-enrichment,token-activation", "--train.lr", "null"])
    assert ov == {"train.k": 64, "train.lr": None, "evaluate.downstream": False,
                  "explain.explainers": "token-enrichment,token-activation"}
    cfg = load_config(None, ov)
    assert cfg.train.k == 64 and cfg.train.lr is None and cfg.evaluate.downstream is False
    assert cfg.explain.explainers == ["token-enrichment", "token-activation"]
    with pytest.raises(ConfigError, match="did you mean 'train.latents'"):
        load_config(None, {"train.latent": 5})
    with pytest.raises(ConfigError, match="is a value, not a section"):
        load_config(None, {"train.k.x": 5})
    with pytest.raises(ConfigError, match="needs a value"):
        parse_overrides(["--train.k"])


def test_malformed_yaml_is_a_clear_error(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  k: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")


def test_config_command_prints_template_and_checks_files(tmp_path):
    out = run_cli("config", "--print-defaults").stdout
    assert yaml.safe_load(out) == to_dict(RunConfig()) and "# " in out
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  k: 8\n")
    assert yaml.safe_load(run_cli("config", str(path), "--train.latents", "512").stdout)["train"] == {
        **to_dict(RunConfig())["train"], "k": 8, "latents": 512}
    bad = run_cli("config", str(path), "--trian.k", "3", check=False)
    assert bad.returncode == 2 and "did you mean 'train'" in bad.stderr
    assert run_cli("cache", "--train.k", "3", check=False).returncode == 2  # overrides only for run/config


def test_deadlines_and_timeouts_change_no_fingerprint_but_the_endpoint_tokenizer_does():
    from autointerp.pipeline import fingerprints

    base = fingerprints(load_config({}))
    bounded = load_config({"explain": {"client": {"timeout_s": 5, "retries": 0, "deadline_s": 30}}})
    assert fingerprints(bounded) == base  # how long a stage may take is not what it computes
    ep = {"endpoint": "http://x/v1", "endpoint_model": "m"}
    plain = fingerprints(load_config({"explain": {"client": ep}}))
    forced = fingerprints(load_config({"explain": {"client": {**ep, "endpoint_tokenizer": "smollm2-135m"}}}))
    assert plain["score"] != forced["score"] and plain["cache"] == forced["cache"]
