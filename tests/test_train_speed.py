"""The trainer's speed changes keep its behaviour: same batches, same errors, allocator switch."""
from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from torch import nn

from bench.training import runtime as perf
from bench.training import train as train_mod
from bench.nn.contract import BATCH_FIELDS, FeatureSchema, ModelOutput
from bench.training.registry import register
from bench.training.train import TrainingError
from conftest import make_split, tiny_schema
from test_golden import golden_dataset


def test_shuffled_batches_are_the_permuted_samples():
    # Split.take gathers positions with index_select (faster): the same tensors as advanced indexing
    split = make_split(tiny_schema(), n=203, seed=4)
    ours = list(split.batches(64, shuffle=True, generator=torch.Generator().manual_seed(9)))
    perm = torch.randperm(203, generator=torch.Generator().manual_seed(9))
    ref = [{k: getattr(split, k)[perm[s : s + 64]] for k in BATCH_FIELDS} for s in range(0, 203, 64)]
    assert [len(b) for b in ours] == [64, 64, 64, 11]
    assert len(ours) == len(ref)
    for a, b in zip(ours, ref):
        for k in BATCH_FIELDS:
            assert torch.equal(getattr(a, k), b[k]), k
            assert getattr(a, k).dtype == b[k].dtype and getattr(a, k).is_contiguous()


class NanAtStep(nn.Module):
    """Finite logits until the ``bad_step``-th forward in training mode, NaN from then on."""

    @dataclass(frozen=True)
    class Config:
        bad_step: int = 3

    def __init__(self, schema: FeatureSchema, cfg: "NanAtStep.Config", item_table=None):
        super().__init__()
        self.cfg = cfg
        self.w = nn.Embedding(schema.item_fields[0].vocab_size, 1)
        self.calls = 0

    def forward(self, batch):
        if self.training:
            self.calls += 1
        scale = float("nan") if self.training and self.calls >= self.cfg.bad_step else 1.0
        return ModelOutput(logits=scale * self.w(batch.item[:, 0]).squeeze(-1))


register("nan_at_step", NanAtStep)


def _config(bad_step: int) -> dict:
    return {"train": {"lr": 0.01, "batch_size": 32, "max_epochs": 3, "patience": 5, "eval_batch_size": 64,
                      "eval_every_steps": 0, "weight_decay": 0.0}, "model": {"bad_step": bad_step}}


@pytest.mark.parametrize("window", [1, 4, 64])
def test_first_non_finite_step_is_named_whatever_the_check_window(window, monkeypatch):
    # window > 1 is the accelerator path (fewer host synchronisations), exercised here on the CPU
    monkeypatch.setattr(train_mod, "nonfinite_window", lambda device: window)
    ds = golden_dataset()  # 320 training samples -> 10 steps per epoch
    with pytest.raises(TrainingError, match=r"epoch 2, step 13\b"):
        train_mod.train_run(ds, "nan_at_step", _config(13), seed=0, progress=False)
    with pytest.raises(TrainingError, match=r"epoch 1, step 3\b"):
        train_mod.train_run(ds, "nan_at_step", _config(3), seed=0, progress=False)


def test_cpu_checks_every_step_accelerators_batch_the_check():
    assert train_mod.nonfinite_window(torch.device("cpu")) == 1
    assert train_mod.nonfinite_window(torch.device("cuda")) == train_mod.NONFINITE_WINDOW > 1


def test_tune_allocator_is_idempotent_and_can_be_switched_off(monkeypatch):
    import platform

    first = perf.tune_allocator()
    assert perf.tune_allocator() is first
    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        assert first is True
        assert "1 GiB" in perf.allocator_note()
    monkeypatch.setattr(perf, "_state", {})
    monkeypatch.setenv(perf.ENV_SWITCH, "0")
    assert perf.tune_allocator() is False
    assert perf.allocator_note() == "default allocator settings"


@pytest.mark.parametrize("threads", [1, 2])
def test_embedding_backward_is_bitwise_embedding_dense_backward(threads):
    """The CPU lookup's scatter_add_ backward gives exactly torch's embedding gradient (heavy
    collisions, odd sizes, 1 and 2 threads), and _GroupEmbedding's padding rows get none."""
    from bench.nn.embedding import _CPULookup, _GroupEmbedding

    n = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for trial in range(12):
            g0 = torch.Generator().manual_seed(trial)
            V, d, N = (int(torch.randint(lo, hi, (1,), generator=g0)) for lo, hi in ((2, 5000), (1, 33), (1, 40000)))
            ids = torch.randint(0, V if trial % 3 else min(V, 4), (N,), generator=g0).reshape(-1, 1) if N % 2 else \
                torch.randint(0, V, (N,), generator=g0)
            grad = torch.randn(*ids.shape, d, generator=g0) * 10
            w = torch.randn(V, d, generator=g0, requires_grad=True)
            out = _CPULookup.apply(w, ids)
            assert torch.equal(out, torch.nn.functional.embedding(ids, w))
            out.backward(grad)
            ref = torch.ops.aten.embedding_dense_backward(grad, ids, V, -1, False)
            assert torch.equal(w.grad, ref), trial
        emb = _GroupEmbedding([5, 7], 3)
        ids = torch.tensor([[0, 0], [1, 6], [4, 0]])
        emb(ids).sum().backward()
        assert emb.weight.grad[emb.offsets].abs().sum() == 0
        assert emb.weight.grad[1].sum() != 0 and emb.weight.grad[5 + 6].sum() != 0
    finally:
        torch.set_num_threads(n)
