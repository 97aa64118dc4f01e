"""Trainer: schedule, initialisation, checkpoints, exact resume, divergence, outputs, data source."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import dictionaries as dl
from dict_helpers import ARCHS, make_spec, quick_train_cfg


class Crashing:
    """Wraps a source and raises on the ``crash_at``-th batch (0-based): a simulated kill."""

    def __init__(self, inner, crash_at: int):
        self.inner, self.crash_at = inner, crash_at

    def __iter__(self):
        for i, batch in enumerate(self.inner):
            if i == self.crash_at:
                raise KeyboardInterrupt("simulated kill")
            yield batch

    def state_dict(self):
        return self.inner.state_dict()

    def load_state_dict(self, state):
        self.inner.load_state_dict(state)


class Poisoned(Crashing):
    """Puts a NaN into ``key`` of the ``crash_at``-th batch."""

    def __init__(self, inner, crash_at: int, key: str):
        super().__init__(inner, crash_at)
        self.key = key

    def __iter__(self):
        for i, batch in enumerate(self.inner):
            if i == self.crash_at:
                batch = dict(batch)
                batch[self.key] = batch[self.key].clone()
                batch[self.key][3, 5] = float("nan")
            yield batch


def _specs(arch: str) -> list[dl.DictionarySpec]:
    """An SAE and a skip transcoder trained side by side from the same batches."""
    return [make_spec(arch, "sae", name="sae"), make_spec(arch, "transcoder+skip", name="tc")]


def _source(synthetic, seed: int = 0) -> dl.TensorBatchSource:
    return dl.TensorBatchSource(synthetic.tensors(), batch_size=128, seed=seed)


def _tree_tensors(path: Path) -> dict[str, torch.Tensor]:
    out = {}
    for f in sorted(path.rglob("*.safetensors")):
        for k, v in load_file(str(f)).items():
            out[f"{f.relative_to(path)}:{k}"] = v
    return out


# ---- schedule and config --------------------------------------------------------------


def test_lr_schedule_and_default_lr():
    cfg = dl.TrainConfig(steps=100, warmup_steps=10, decay_fraction=0.2)
    factors = [cfg.lr_factor(s) for s in range(100)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == 1.0
    assert all(f == 1.0 for f in factors[10:80])
    assert factors[80] == 1.0 and factors[90] == pytest.approx(0.5) and factors[99] == pytest.approx(0.05)
    assert all(a >= b for a, b in zip(factors[10:], factors[11:]))
    assert cfg.lr_for(16384) == pytest.approx(3e-3)
    assert cfg.lr_for(16384 * 4) == pytest.approx(1.5e-3)
    assert dl.TrainConfig(steps=100).warmup_steps == 10 and dl.TrainConfig(steps=5).warmup_steps == 1
    assert dl.TrainConfig(steps=5, warmup_steps=0, lr=1e-3).lr_for(16384 * 4) == 1e-3
    assert cfg.betas == (0.9, 0.999) and cfg.eps == 6.25e-10


def test_encoder_learns_at_a_scaled_rate():
    """The optimizer's encoder group gets lr * encoder_lr_scale, the decoder group lr."""
    spec = make_spec("topk", "sae")
    trainer = dl.Trainer([spec], dl.TrainConfig(steps=4, lr=1e-3, encoder_lr_scale=0.25, progress=False), "/unused")
    run = trainer._new_run(spec)
    groups = {tuple(id(p) for p in g["params"]): g["lr_scale"] for g in run.optimizer.param_groups}
    assert groups[(id(run.model.W_enc), id(run.model.b_enc))] == 0.25
    assert sorted(groups.values()) == [0.25, 1.0]
    with pytest.raises(ValueError, match="encoder_lr_scale"):
        dl.TrainConfig(steps=4, encoder_lr_scale=0.0)


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(steps=0), "steps"),
        (dict(steps=10, warmup_steps=11), "warmup_steps"),
        (dict(steps=10, warmup_steps=1, decay_fraction=1.5), "decay_fraction"),
        (dict(steps=10, warmup_steps=1, lr=-1.0), "lr"),
        (dict(steps=10, warmup_steps=1, checkpoint_every=0), "checkpoint_every"),
        (dict(steps=10, warmup_steps=1, dead_after_tokens=0), "dead_after_tokens"),
        (dict(steps=10, warmup_steps=1, keep_checkpoints=1), "keep_checkpoints"),
        (dict(steps=10, warmup_steps=1, device="gpu0"), "device"),
        (dict(steps=10, warmup_steps=1, b_dec_init="median"), "b_dec_init"),
        (dict(steps=10, warmup_steps=1, betas=(0.9, 1.0)), "betas"),
    ],
)
def test_train_config_validation(kwargs, field):
    with pytest.raises(ValueError, match=field):
        dl.TrainConfig(**kwargs)


def test_spec_validation():
    cfg = make_spec("topk", "transcoder").cfg
    with pytest.raises(ValueError, match="target_key"):
        dl.DictionarySpec("tc", cfg, input_key="x")
    with pytest.raises(ValueError, match="name"):
        dl.DictionarySpec("a/b", make_spec("topk").cfg, input_key="x")
    with pytest.raises(ValueError, match="unique"):
        dl.Trainer([make_spec("topk", name="a"), make_spec("relu", name="a")], quick_train_cfg(5), "out")


def test_geometric_median_resists_outliers():
    torch.manual_seed(0)
    pts = torch.randn(200, 3) * 0.1
    pts[:20] += 1000.0  # 10% gross outliers
    gm = dl.geometric_median(pts)
    assert gm.norm() < 0.5 < pts.mean(0).norm()
    square = torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]]) + 5.0
    torch.testing.assert_close(dl.geometric_median(square), torch.tensor([5.0, 5.0]))


# ---- data source ------------------------------------------------------------------------


def test_tensor_batch_source_is_reproducible_resumable_and_sharded():
    data = {"a": torch.arange(40.0)[:, None], "b": torch.arange(40.0)[:, None] * 10}
    src = dl.TensorBatchSource(data, batch_size=8, seed=3)
    it = iter(src)
    first = [next(it) for _ in range(7)]  # crosses an epoch boundary (5 batches per epoch)
    for b in first:
        assert torch.equal(b["b"], b["a"] * 10)
    epoch0 = torch.cat([b["a"] for b in first[:5]]).flatten()
    assert sorted(epoch0.tolist()) == list(range(40))
    assert not torch.equal(torch.cat([b["a"] for b in first[5:7]]), torch.cat([b["a"] for b in first[:2]]))

    src2 = dl.TensorBatchSource(data, batch_size=8, seed=3)
    it2 = iter(src2)
    for _ in range(3):
        next(it2)
    state = json.loads(json.dumps(src2.state_dict()))
    src3 = dl.TensorBatchSource(data, batch_size=8, seed=3)
    src3.load_state_dict(state)
    rest = [b["a"] for _, b in zip(range(4), src3)]
    for a, b in zip(rest, first[3:7]):
        assert torch.equal(a, b["a"])

    ranks = [dl.TensorBatchSource(data, batch_size=4, seed=3, rank=r, world_size=2) for r in (0, 1)]
    shards = [torch.cat([b["a"] for _, b in zip(range(5), iter(s))]).flatten().tolist() for s in ranks]
    assert not set(shards[0]) & set(shards[1])
    assert sorted(shards[0] + shards[1]) == list(range(40))
    with pytest.raises(ValueError, match="rank"):
        ranks[0].load_state_dict(ranks[1].state_dict())
    with pytest.raises(ValueError, match="same number of rows"):
        dl.TensorBatchSource({"a": torch.zeros(3, 1), "b": torch.zeros(4, 1)}, batch_size=1)


# ---- outputs ----------------------------------------------------------------------------


def test_outputs_files_and_metrics(synthetic, tmp_path):
    trainer = dl.Trainer(_specs("topk"), quick_train_cfg(20, checkpoint_every=10), tmp_path)
    results = trainer.train(_source(synthetic))
    for name in ("sae", "tc"):
        d = tmp_path / name
        assert (d / "cfg.json").is_file() and (d / "weights.safetensors").is_file()
        metrics = json.loads((d / "metrics.json").read_text())
        assert metrics == json.loads(json.dumps(results[name].metrics))
        for key in ("loss", "fvu", "l0", "dead_fraction", "tokens", "steps", "warnings", "in_scale",
                    "out_scale"):
            assert key in metrics
        assert metrics["steps"] == 20 and metrics["tokens"] == 20 * 128
        assert sorted(p.name for p in (d / "checkpoints").iterdir()) == ["step-0000010", "step-0000020"]
        loaded = dl.load(d)
        for k, v in results[name].dictionary.state_dict().items():
            assert torch.equal(v, loaded.state_dict()[k]), k
    # input scale: sqrt(d) / mean ||x|| from the first batch
    first = next(iter(_source(synthetic)))
    expected = math.sqrt(32) / first["x"].norm(dim=-1).mean().item()
    assert results["sae"].metrics["in_scale"] == pytest.approx(expected, rel=1e-5)
    assert results["sae"].metrics["out_scale"] == results["sae"].metrics["in_scale"]
    assert results["tc"].metrics["out_scale"] == pytest.approx(
        math.sqrt(24) / first["y"].norm(dim=-1).mean().item(), rel=1e-5)
    # nothing pickled anywhere: only JSON and safetensors
    assert {p.suffix for p in tmp_path.rglob("*") if p.is_file()} == {".json", ".safetensors"}


def test_b_dec_initialised_from_first_batch(synthetic, tmp_path):
    captured = {}

    def grab(info):
        captured.setdefault("b_dec", info.dictionaries["sae"].b_dec.detach().clone())

    cfg = quick_train_cfg(1, lr=1e-12, b_dec_init="mean", warmup_steps=1)
    res = dl.Trainer([make_spec("topk", name="sae")], cfg, tmp_path).train(_source(synthetic), on_step=grab)
    first = next(iter(_source(synthetic)))["x"] * res["sae"].metrics["in_scale"]
    torch.testing.assert_close(captured["b_dec"], first.mean(0), atol=1e-4, rtol=1e-4)


def test_dead_latent_warning(synthetic, tmp_path, caplog):
    # k=1 with 128 latents and 128-token batches: at most 128 latents can fire per batch, and most
    # will not fire within any 2 consecutive batches.
    spec = make_spec("topk", name="sae", k=1, aux_coeff=0.0)
    cfg = quick_train_cfg(10, dead_after_tokens=256, dead_warn_fraction=0.05)
    with caplog.at_level(logging.WARNING):
        res = dl.Trainer([spec], cfg, tmp_path).train(_source(synthetic))
    metrics = json.loads((tmp_path / "sae" / "metrics.json").read_text())
    assert metrics["dead_fraction"] > 0.05
    assert any("dead" in w for w in metrics["warnings"])
    assert any("DEAD LATENTS" in r.message for r in caplog.records if r.levelno == logging.WARNING)
    assert res["sae"].metrics["dead_fraction"] == metrics["dead_fraction"]


def test_healthy_run_has_no_dead_warning(synthetic, tmp_path):
    res = dl.Trainer([make_spec("topk", name="sae")], quick_train_cfg(10, dead_after_tokens=1280), tmp_path)\
        .train(_source(synthetic))
    assert res["sae"].metrics["warnings"] == []


def test_missing_batch_key_is_a_clear_error(synthetic, tmp_path):
    spec = dl.DictionarySpec("sae", make_spec("topk").cfg, input_key="blocks.3.hook_out")
    with pytest.raises(ValueError, match="blocks.3.hook_out"):
        dl.Trainer([spec], quick_train_cfg(3), tmp_path).train(_source(synthetic))


# ---- exact resume -----------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHS)
def test_resume_is_bit_identical(arch, synthetic, tmp_path):
    n = 12
    # dead_after_tokens small enough that dead counters and AuxK matter during the run
    cfg = quick_train_cfg(2 * n, checkpoint_every=n, dead_after_tokens=128 * 3)
    straight = dl.Trainer(_specs(arch), cfg, tmp_path / "straight").train(_source(synthetic))

    with pytest.raises(KeyboardInterrupt):
        dl.Trainer(_specs(arch), cfg, tmp_path / "killed").train(Crashing(_source(synthetic), n + 3))
    assert not (tmp_path / "killed" / "sae" / "weights.safetensors").exists()
    torch.manual_seed(12345)  # resuming must not depend on the caller's RNG
    resumed = dl.Trainer(_specs(arch), cfg, tmp_path / "killed").train(_source(synthetic), resume=True)

    a, b = _tree_tensors(tmp_path / "straight"), _tree_tensors(tmp_path / "killed")
    assert a.keys() == b.keys()
    assert any("optimizer.safetensors" in k for k in a) and any("rng_state" in k for k in a)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    for name in ("sae", "tc"):
        assert straight[name].metrics == resumed[name].metrics
        for k, v in straight[name].dictionary.state_dict().items():
            assert torch.equal(v, resumed[name].dictionary.state_dict()[k])


def test_resume_uses_latest_checkpoint_common_to_all_dictionaries(synthetic, tmp_path):
    cfg = quick_train_cfg(9, checkpoint_every=3)
    dl.Trainer(_specs("relu"), cfg, tmp_path / "ref").train(_source(synthetic))
    with pytest.raises(KeyboardInterrupt):
        dl.Trainer(_specs("relu"), cfg, tmp_path / "run").train(Crashing(_source(synthetic), 7))
    # as if killed while writing step 6: "tc" has only a temporary directory for it
    ckpts = tmp_path / "run" / "tc" / "checkpoints"
    (ckpts / "step-0000006").rename(ckpts / ".tmp-step-0000006")
    (ckpts / ".tmp-step-0000006" / "state.json").unlink()
    trainer = dl.Trainer(_specs("relu"), cfg, tmp_path / "run")
    trainer.train(_source(synthetic), resume=True)
    assert not (ckpts / ".tmp-step-0000006").exists()
    a, b = _tree_tensors(tmp_path / "ref"), _tree_tensors(tmp_path / "run")
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_keep_checkpoints_prunes_old_ones(synthetic, tmp_path):
    dl.Trainer(_specs("topk"), quick_train_cfg(10, checkpoint_every=2, keep_checkpoints=2), tmp_path)\
        .train(_source(synthetic))
    for name in ("sae", "tc"):
        kept = sorted(p.name for p in (tmp_path / name / "checkpoints").iterdir())
        assert kept == ["step-0000008", "step-0000010"]


def test_resume_without_checkpoint_starts_fresh(synthetic, tmp_path):
    cfg = quick_train_cfg(5)
    a = dl.Trainer(_specs("topk"), cfg, tmp_path / "a").train(_source(synthetic))
    b = dl.Trainer(_specs("topk"), cfg, tmp_path / "b").train(_source(synthetic), resume=True)
    assert torch.equal(a["sae"].dictionary.W_dec, b["sae"].dictionary.W_dec)


def test_checkpoint_of_a_different_config_is_refused(synthetic, tmp_path):
    cfg = quick_train_cfg(6, checkpoint_every=3)
    with pytest.raises(KeyboardInterrupt):
        dl.Trainer(_specs("topk"), cfg, tmp_path).train(Crashing(_source(synthetic), 4))
    other = [make_spec("topk", "sae", name="sae", k=8), make_spec("topk", "transcoder+skip", name="tc")]
    with pytest.raises(ValueError, match=r"different configuration.*spec\.cfg\.k: checkpoint 4 != now 8"):
        dl.Trainer(other, cfg, tmp_path).train(_source(synthetic), resume=True)
    with pytest.raises(ValueError, match=r"train\.lr"):
        dl.Trainer(_specs("topk"), quick_train_cfg(6, checkpoint_every=3, lr=1e-3), tmp_path)\
            .train(_source(synthetic), resume=True)
    with pytest.raises(ValueError, match="resume=True"):
        dl.Trainer(_specs("topk"), cfg, tmp_path).train(_source(synthetic))
    # bookkeeping-only fields may change
    trainer = dl.Trainer(_specs("topk"), quick_train_cfg(6, checkpoint_every=2), tmp_path)
    assert trainer.train(_source(synthetic), resume=True)["sae"].metrics["steps"] == 6


# ---- divergence -------------------------------------------------------------------------


def test_nan_stops_training_naming_step_dictionary_and_checkpoint(synthetic, tmp_path):
    cfg = quick_train_cfg(20, checkpoint_every=3)
    trainer = dl.Trainer(_specs("topk"), cfg, tmp_path)
    with pytest.raises(dl.TrainingDivergedError) as err:
        trainer.train(Poisoned(_source(synthetic), crash_at=7, key="y"))  # only the transcoder reads y
    msg = str(err.value)
    expected_ckpt = tmp_path / "tc" / "checkpoints" / "step-0000006"
    assert "step 8" in msg and "'tc'" in msg and str(expected_ckpt) in msg
    assert err.value.step == 8 and err.value.name == "tc" and err.value.last_checkpoint == expected_ckpt
    assert not (tmp_path / "tc" / "weights.safetensors").exists()


def test_nan_before_any_checkpoint_says_so(synthetic, tmp_path):
    trainer = dl.Trainer(_specs("jumprelu"), quick_train_cfg(20), tmp_path)
    expected = r"step 3: dictionary 'sae'.*no checkpoint was written"
    with pytest.raises(dl.TrainingDivergedError, match=expected):
        trainer.train(Poisoned(_source(synthetic), crash_at=2, key="x"))


def test_source_running_out_is_reported(synthetic, tmp_path):
    class Finite(Crashing):
        def __iter__(self):
            for i, batch in enumerate(self.inner):
                if i == self.crash_at:
                    return
                yield batch

    res = dl.Trainer(_specs("topk"), quick_train_cfg(10), tmp_path).train(Finite(_source(synthetic), 4))
    assert res["sae"].metrics["steps"] == 4
    assert any("ran out" in w for w in res["sae"].metrics["warnings"])


def test_progress_bar_shows_metrics(synthetic, tmp_path, capsys):
    trainer = dl.Trainer(_specs("topk"), quick_train_cfg(10, progress=True, log_every=5), tmp_path)
    trainer.train(_source(synthetic))
    err = capsys.readouterr().err
    for key in ("loss=", "fvu=", "l0=", "dead="):
        assert key in err
