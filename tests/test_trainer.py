"""bench.training.train.Trainer: one epoch loop with early stopping on validation AUC, for any adapter
(a fake one whose validation AUC follows a given sequence; StepLoop, our models'); the DeepCTR-Torch
adapter's pass through it is in tests/test_efficiency.py."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from bench.training import train as train_mod
from bench.training.train import Trainer
from test_golden import golden_dataset


class SequenceAdapter:
    """Epoch e sets the single weight to e; the validation AUC at the end of epoch e is aucs[e-1];
    ``mid`` mid-epoch validations per epoch score 0.99 (they must never select an epoch)."""

    def __init__(self, aucs, mid: int = 0, lls=None):
        self.model = nn.Linear(1, 1, bias=False)
        self.steps, self.aucs, self.mid = 0, list(aucs), mid
        self.lls = list(lls) if lls is not None else [0.5] * len(self.aucs)
        self.calls: list[str] = []
        self.epoch, self.in_epoch = 0, False

    def fit_epoch(self, epoch):
        self.calls.append(f"fit{epoch}")
        self.epoch = epoch
        with torch.no_grad():
            self.model.weight.fill_(float(epoch))
        for _ in range(self.mid):
            self.steps += 5
            self.in_epoch = True
            yield
        self.steps += 5
        self.in_epoch = False

    def score(self, split):
        self.calls.append(split)
        auc = 0.99 if self.in_epoch else self.aucs[self.epoch - 1]
        ll = 0.5 if self.in_epoch else self.lls[self.epoch - 1]
        if split == "test":
            auc = self.model.weight.detach().item()  # tells which weights were scored
            ll = 10 + auc
        return {"auc": auc, "logloss": ll, "gauc": auc}

    def take_train_loss(self):
        return float(self.steps)


@pytest.mark.parametrize("aucs, patience, max_epochs, best, run", [
    ([0.60, 0.70, 0.65, 0.66, 0.80], 2, 20, 2, 4),   # stops `patience` epochs after the best
    ([0.60, 0.70, 0.65, 0.80, 0.70, 0.60], 2, 20, 4, 6),
    ([0.60, 0.60, 0.60, 0.90], 2, 20, 1, 3),         # a tie is no gain
    ([0.60, 0.50, 0.90], 1, 20, 1, 2),
    ([0.1, 0.2, 0.3, 0.4, 0.5, 0.6], 2, 5, 5, 5),    # the epoch cap
])
def test_early_stopping_follows_the_validation_auc(aucs, patience, max_epochs, best, run):
    adapter = SequenceAdapter(aucs, mid=1)
    seen = []
    trainer = Trainer(adapter, max_epochs, patience, on_eval=seen.append).fit()
    assert (trainer.best_epoch, trainer.epochs_run, trainer.best_auc) == (best, run, aucs[best - 1])
    assert adapter.model.weight.detach().item() == best  # the best epoch's weights restored
    assert not adapter.model.training
    assert "test" not in adapter.calls  # fit never reads the test split
    assert trainer.test()["auc"] == best and adapter.calls[-1] == "test" and adapter.calls.count("test") == 1
    # one mid-epoch and one epoch-end entry per epoch, each passed to on_eval
    assert seen == trainer.history and len(trainer.history) == 2 * run
    assert [h["epoch_end"] for h in trainer.history] == [False, True] * run
    assert [h["step"] for h in trainer.history] == [5 * k for k in range(1, 2 * run + 1)]
    assert trainer.best_valid == {"auc": aucs[best - 1], "logloss": 0.5, "gauc": aucs[best - 1]}
    with pytest.raises(RuntimeError, match="stopped"):
        trainer.epoch()


@pytest.mark.parametrize("aucs, lls, best, by_ll", [
    ([0.60, 0.70, 0.65, 0.66], [0.70, 0.60, 0.55, 0.58], 2, 3),  # logloss still falls after the AUC's best
    ([0.60, 0.70, 0.65, 0.66], [0.70, 0.50, 0.55, 0.50], 2, 2),  # the same epoch (a tie is no gain)
    ([0.60, 0.70, 0.65, 0.66], [0.40, 0.50, 0.55, 0.58], 2, 1),
    ([0.60, 0.70, 0.65, 0.66], [float("nan"), 0.50, float("nan"), 0.45], 2, 4),  # NaN never selected
])
def test_selection_on_logloss_rides_along_without_changing_the_auc_selection(aucs, lls, best, by_ll):
    adapter = SequenceAdapter(aucs, mid=1, lls=lls)
    trainer = Trainer(adapter, 20, 2).fit()
    assert (trainer.best_epoch, trainer.epochs_run, trainer.best_logloss_epoch) == (best, 4, by_ll)
    with pytest.raises(RuntimeError, match="test"):
        trainer.test_by_logloss()
    test = trainer.test()
    by = trainer.test_by_logloss()
    assert by == {"epoch": by_ll, "auc": float(by_ll), "logloss": 10.0 + by_ll, "gauc": float(by_ll)}
    assert adapter.calls.count("test") == (1 if by_ll == best else 2)  # the first scoring reused when it can be
    assert adapter.model.weight.detach().item() == best and not adapter.model.training  # AUC-selected weights back
    assert test["auc"] == best and trainer.test_logits is None  # an adapter without score_logits
    assert trainer.valid_by_logloss == {"auc": aucs[by_ll - 1], "logloss": lls[by_ll - 1], "gauc": aucs[by_ll - 1]}


def test_epoch_by_epoch_then_fit_is_the_same_run():
    # the efficiency benchmark times the first epoch alone, then lets fit() go on
    a = Trainer(SequenceAdapter([0.5, 0.7, 0.6, 0.6]), 20, 2)
    first = a.epoch()
    assert first["epoch"] == 1 and first["epoch_end"] and a.epochs_run == 1 and not a.stopped
    a.fit()
    b = Trainer(SequenceAdapter([0.5, 0.7, 0.6, 0.6]), 20, 2).fit()
    assert (a.best_epoch, a.epochs_run, a.history) == (b.best_epoch, b.epochs_run, b.history) == (2, 4, b.history)


def _config(**train) -> dict:
    base = {"lr": 0.01, "batch_size": 32, "max_epochs": 20, "patience": 2, "eval_batch_size": 64,
            "eval_every_steps": 0, "weight_decay": 0.0}
    base.update(train)
    return {"train": base, "model": {}}


def test_step_loop_stops_restores_and_scores_test_last(monkeypatch):
    """train_run = Trainer over StepLoop: validation AUCs forced to a sequence (the real evaluate
    scores the test split), the returned model holds the best epoch's weights."""
    ds = golden_dataset()  # 320 training samples: 10 steps per epoch of 32
    aucs = iter([0.6, 0.8, 0.7, 0.75, 0.9])
    snapshots, order = [], []
    real = train_mod.score_split

    def score_split(model, split, batch_size):  # every scoring (evaluate, the test logits) goes through it
        if split.label is ds.test.label:
            order.append("test")
            return real(model, split, batch_size)
        order.append("valid")
        snapshots.append(copy.deepcopy(model.state_dict()))
        return {"auc": next(aucs), "logloss": 0.6, "gauc": 0.5}, np.zeros(len(split.label))

    monkeypatch.setattr(train_mod, "score_split", score_split)
    record, model = train_mod.train_run(ds, "lr", _config(), seed=0, progress=False)
    assert (record["best_epoch"], record["epochs_run"], record["steps"]) == (2, 4, 40)
    assert order[:5] == ["valid"] * 4 + ["test"]
    assert record["valid"]["auc"] == 0.8
    state = model.state_dict()
    assert all(torch.equal(state[k], snapshots[1][k]) for k in state)  # epoch 2's weights
    assert not all(torch.equal(state[k], snapshots[3][k]) for k in state)
    assert record["test"] == real(model, ds.test, 64)[0]
    # logloss constant: its first epoch end is its best, another epoch than the AUC's; scored once more
    assert record["test_by_logloss"]["epoch"] == 1 and record["valid_by_logloss"]["auc"] == 0.6
    assert order == ["valid"] * 4 + ["test", "test"]
    assert record["test_by_logloss"] != {"epoch": 1, **record["test"]}  # epoch 1's weights, scored after fit


def test_train_run_hands_over_the_test_logits_its_record_scored():
    from bench.metrics import split_metrics
    from bench.training.runs import record_problems, sealed

    ds = golden_dataset()
    kept = []
    record, model = train_mod.train_run(ds, "lr", _config(max_epochs=3), seed=0, progress=False,
                                        on_test_scores=kept.append)
    [logits] = kept
    assert logits.shape == (len(ds.test.label),) and logits.dtype == np.float64
    assert np.array_equal(logits.astype(np.float32).astype(np.float64), logits)  # float32 keeps them exactly
    assert split_metrics(ds.test.label.numpy(), logits, ds.test.user_index.numpy()) == record["test"]
    np.testing.assert_array_equal(logits, train_mod.predict(model, ds.test, 64))
    ends = [h for h in record["valid_history"] if h["epoch_end"]]
    best = min(ends, key=lambda h: h["valid"]["logloss"])
    assert record["test_by_logloss"]["epoch"] == best["epoch"] and record["valid_by_logloss"] == best["valid"]
    if best["epoch"] == record["best_epoch"]:
        assert {k: record["test_by_logloss"][k] for k in record["test"]} == record["test"]
    assert record_problems(sealed(record)) == []
