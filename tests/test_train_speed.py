"""The trainer's speed changes keep its behaviour: same batches, same errors, allocator switch."""
from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
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


# ------------------------------------------------------------------ issue 13: exact speed paths

SPEED_MODELS = ("lr", "wide_deep", "dcn", "deepfm", "xdeepfm", "din", "dien", "mian")


def test_trim_padding_drops_only_the_slots_that_are_padding_in_every_row():
    schema = tiny_schema()
    batch = make_split(schema, n=6, seed=1, lengths=[0, 3, 1, 2, 0, 3]).take(slice(None))
    trimmed = batch.trim_padding()
    assert trimmed.hist.shape == (6, 3, 2) and trimmed.hist_mask.shape == (6, 3)
    assert torch.equal(trimmed.hist, batch.hist[:, -3:]) and torch.equal(trimmed.hist_mask, batch.hist_mask[:, -3:])
    assert torch.equal(trimmed.hist_mask.sum(1), batch.hist_mask.sum(1))  # no real behaviour lost
    empty = make_split(schema, n=4, seed=2, lengths=[0, 0, 0, 0]).take(slice(None)).trim_padding()
    assert empty.hist.shape == (4, 1, 2) and not empty.hist_mask.any()  # at least one slot kept
    full = make_split(schema, n=4, seed=3, lengths=[8, 0, 1, 2]).take(slice(None))
    assert full.trim_padding() is full


def test_length_sorted_batches_cover_every_sample_once_in_length_order():
    split = make_split(tiny_schema(), n=50, seed=5)
    pairs = list(split.length_sorted_batches(16))
    pos = torch.cat([p for p, _ in pairs])
    assert sorted(pos.tolist()) == list(range(50))
    assert not torch.equal(pos, torch.arange(50))  # the order is not the split's own
    lengths = torch.cat([b.hist_mask.sum(1) for _, b in pairs])
    assert torch.equal(lengths, split.hist_mask.sum(1)[pos]) and bool((lengths.diff() >= 0).all())
    assert [b.hist.shape[1] for _, b in pairs] == [max(1, int(b.hist_mask.sum(1).max())) for _, b in pairs]
    assert pairs[0][1].hist.shape[1] < split.hist.shape[1]  # the short batches are really trimmed


@pytest.mark.parametrize("name", SPEED_MODELS)
def test_length_sorted_trimmed_scoring_equals_split_order_scoring(name):
    """Every model scores a split the same in length-sorted, trimmed batches as in split order
    with every slot (float rounding aside), and the scores come back in split order."""
    from test_baselines import build

    schema = tiny_schema()
    split = make_split(schema, n=90, seed=7)
    model = build(name, schema).eval()
    with torch.no_grad():  # zero-initialised biases would hide a slot counted from the wrong end
        for pname, p in model.named_parameters():
            if pname.endswith("bias"):
                p.normal_(0.0, 0.3)
    fast = train_mod.collect_output(model, split, 32)
    slow = train_mod.collect_output(model, split, 32, by_length=False)
    assert fast.shape == (90,) and np.allclose(fast, slow, rtol=0, atol=1e-6)
    # the check can fail: scores left in sorted order do not match
    order = torch.sort(split.hist_mask.sum(1), stable=True).indices.numpy()
    assert not np.allclose(slow[order], slow, atol=1e-6)


def test_collect_output_refuses_an_output_whose_width_follows_the_history_length():
    from test_baselines import build

    schema = tiny_schema()
    split = make_split(schema, n=40, seed=8)

    model = build("din", schema)
    model.forward = lambda b: SimpleNamespace(w=b.hist_mask.float())  # [B, T'] changes with T'
    with pytest.raises(ValueError, match="by_length=False"):
        train_mod.collect_output(model, split, 8, "w", by_length=True)
    # an output other than the logits is collected in split order with every slot by default, even
    # when all histories have one length (every trimmed batch would have the same, short, width)
    assert train_mod.collect_output(model, split, 8, "w").shape == (40, schema.max_len)
    same = make_split(schema, n=40, seed=8, lengths=[3] * 40)
    assert train_mod.collect_output(model, same, 8, "w").shape == (40, schema.max_len)
    assert train_mod.collect_output(model, same, 8, "w", by_length=True).shape == (40, 3)  # what the default avoids


@pytest.mark.parametrize("split_half, activation", [(False, "identity"), (True, "identity"), (True, "relu")])
def test_cin_batched_outer_product_equals_the_broadcast_form(split_half, activation):
    from bench.nn.interaction import CIN

    torch.manual_seed(0)
    cin = CIN(5, (6, 4, 2), activation=activation, split_half=split_half)
    x0 = torch.randn(7, 5, 3, requires_grad=True)

    def reference(x):  # Eq. 6 with the broadcast multiply, as first written
        B, m, d = x.shape
        xt = x.transpose(1, 2)
        xk, pooled = xt, []
        for k, (layer, act) in enumerate(zip(cin.layers, cin.activations)):
            h = act(layer((xk.unsqueeze(3) * xt.unsqueeze(2)).reshape(B, d, -1)))
            if split_half and k < len(cin.layers) - 1:
                xk, out = h.split([cin.next_sizes[k], h.shape[-1] - cin.next_sizes[k]], dim=-1)
            else:
                xk, out = h, h
            pooled.append(out.sum(1))
        return torch.cat(pooled, 1)

    out, ref = cin(x0), reference(x0)
    assert torch.allclose(out, ref, atol=1e-6)
    (g,) = torch.autograd.grad(out.square().sum(), x0)
    (g_ref,) = torch.autograd.grad(ref.square().sum(), x0)
    assert torch.allclose(g, g_ref, atol=1e-5) and g.abs().sum() > 0


def test_fused_adam_follows_the_reference_adam():
    from bench.training.config import TrainConfig
    from test_baselines import build

    schema = tiny_schema()
    batches = list(make_split(schema, n=128, seed=9).batches(32))
    a, b = build("din", schema), build("din", schema)
    tcfg = TrainConfig(lr=1e-2, weight_decay=1e-4)
    fused = train_mod.make_optimizer(a, tcfg)
    assert fused.defaults["fused"] is True
    ref = torch.optim.Adam(b.parameters(), lr=1e-2, weight_decay=1e-4, foreach=False)
    for batch in batches * 2:
        train_mod.train_step(a, fused, batch)
        train_mod.train_step(b, ref, batch)
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.allclose(p, q, atol=1e-5), name
    assert not torch.equal(a.embedding.item.weight, build("din", schema).embedding.item.weight)  # it trained
