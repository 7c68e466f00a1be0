"""Golden results: a speed change to the trainer or a model must not change what training produces.

Every registered model is trained for a few steps (two epochs of five batches, validation after
each) on a tiny synthetic dataset built here with fixed seeds, one intra-op thread; the
best-epoch validation metrics, the test metrics and the per-epoch training losses are compared
with the values the code produced when this test was written.

Two checks, because float results are exact only on one CPU instruction set:
- on this machine, the same seed gives bit-identical figures: trained twice in this process, and
  once more in a fresh interpreter (exact equality; the test compares two runs of the same machine);
- against the recorded values, within ``TOL``. Measured spread of these figures across CPU kernels
  (``python tests/test_golden.py --spread``: AVX-512, AVX2, no-SIMD and MKL's conditional-numerical-
  reproducibility paths of torch 2.13 on one Xeon, plus the recording machine): at most 1.4e-7, and
  1.9e-7 reported from an AMD EPYC (AVX2). ``TOL`` = 1e-6 is 5x that, and 150x below the smallest
  change a real edit makes (a 0.1 % learning-rate change moves these figures by >= 1.6e-4).
  docs/REPRODUCIBILITY.md has the figures.

The recorded values are in ``tests/golden.json`` (those of the eight Table 2 models were recorded
with the code of commit 29ef94b, before any speed work on bench/training/train.py). A new model gets its
values with ``python tests/test_golden.py --update --model NAME``; if a change is MEANT to alter
results (a bug fix, a new model default), rewrite the affected models' values the same way
(``--update`` alone: every model) and say so in the commit.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.data import PreparedDataset  # noqa: E402
from bench.training.registry import MODEL_NAMES  # noqa: E402
from bench.training.train import train_run  # noqa: E402
from conftest import make_split, tiny_schema  # noqa: E402

TOL = 1e-6  # cross-CPU spread measured at <= 1.9e-7 (module docstring)


def golden_dataset() -> PreparedDataset:
    """320 / 160 / 160 samples on ``tiny_schema()``; label = item-id parity with 15% noise."""
    schema = tiny_schema()
    splits = []
    for seed, n in ((10, 320), (11, 160), (12, 160)):
        s = make_split(schema, n=n, seed=seed)
        noise = torch.rand(n, generator=torch.Generator().manual_seed(100 + seed)) < 0.15
        s.label = ((s.item[:, 0] % 2 == 0) ^ noise).float()
        splits.append(s)
    g = torch.Generator().manual_seed(7)
    V = schema.item_fields[0].vocab_size
    cols = [torch.arange(V)] + [torch.randint(2, f.vocab_size, (V,), generator=g) for f in schema.item_fields[1:]]
    table = torch.stack(cols, -1)
    table[0] = 0
    return PreparedDataset("golden", "golden-v1", "0" * 64, schema, *splits, item_table=table, path=Path("golden"))


def golden_config() -> dict:
    return {
        "train": {"lr": 1e-2, "batch_size": 64, "max_epochs": 2, "patience": 5, "eval_batch_size": 96,
                  "eval_every_steps": 0, "weight_decay": 0.0},
        "model": {},
    }


def golden_figures(model: str) -> dict[str, float]:
    """Train ``model`` on the golden dataset (seed 0, one thread) and flatten what it produced."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        record, _ = train_run(golden_dataset(), model, golden_config(), seed=0, progress=False)
    finally:
        torch.set_num_threads(threads)
    out = {f"valid_{k}": v for k, v in record["valid"].items()}
    out.update({f"test_{k}": v for k, v in record["test"].items()})
    for h in record["valid_history"]:
        out[f"train_loss_epoch{h['epoch']}"] = h["train_loss"]
        out[f"valid_auc_epoch{h['epoch']}"] = h["valid"]["auc"]
    out["best_epoch"] = float(record["best_epoch"])
    out["steps"] = float(record["steps"])
    return out


#: The recorded figures, model -> figure -> value (written by ``--update``, never by hand).
GOLDEN = Path(__file__).resolve().parent / "golden.json"
EXPECTED: dict[str, dict[str, float]] = json.loads(GOLDEN.read_text()) if GOLDEN.exists() else {}


def update_command(models: list[str] | tuple[str, ...] = ()) -> str:
    """The command that (re)writes the golden values of ``models`` (all registered when empty)."""
    return "python tests/test_golden.py --update" + "".join(f" --model {m}" for m in models)


def write_golden(models: list[str]) -> dict[str, dict[str, float]]:
    """Train each of ``models`` with the current code and write its figures to :data:`GOLDEN`,
    keeping the other registered models' recorded values (entries of unregistered models are
    dropped). Returns what was written."""
    old = json.loads(GOLDEN.read_text()) if GOLDEN.exists() else {}
    fresh = {m: golden_figures(m) for m in models}
    table = {m: fresh[m] if m in fresh else old[m] for m in MODEL_NAMES if m in fresh or m in old}
    GOLDEN.write_text(json.dumps(table, indent=2) + "\n")
    return table


@pytest.mark.parametrize("model", MODEL_NAMES)
def test_training_results_are_unchanged(model):
    if model not in EXPECTED:
        pytest.fail(f"no golden values for {model} in {GOLDEN.name}; create them with {update_command([model])}")
    got = golden_figures(model)
    want = EXPECTED[model]
    assert set(got) == set(want)
    bad = {k: (got[k], want[k]) for k in want if abs(got[k] - want[k]) > TOL}
    assert not bad, f"{model}: results changed by more than {TOL} (got, expected): {bad}"


@pytest.mark.parametrize("model", MODEL_NAMES)
def test_same_seed_is_bit_identical_on_this_machine(model):
    first, second = golden_figures(model), golden_figures(model)
    assert first == second, {k: (first[k], second[k]) for k in first if first[k] != second[k]}


def test_same_seed_is_bit_identical_in_a_fresh_process():
    """A fresh interpreter (nothing cached, other hash seed) gives exactly this process's figures."""
    out = subprocess.run([sys.executable, __file__, "--json"], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONHASHSEED": "12345"}, timeout=600)
    fresh = json.loads(out.stdout)
    here = {m: golden_figures(m) for m in MODEL_NAMES}
    assert fresh == here


def test_every_registered_model_has_golden_values():
    missing = [m for m in MODEL_NAMES if m not in EXPECTED]
    assert not missing, f"no golden values for {', '.join(missing)}; create them with {update_command(missing)}"
    stale = sorted(set(EXPECTED) - set(MODEL_NAMES))
    assert not stale, f"{GOLDEN.name} has values of unregistered models {', '.join(stale)}; {update_command()} drops them"


def test_a_model_without_golden_values_is_named_with_the_command(monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "EXPECTED", {m: EXPECTED[m] for m in MODEL_NAMES if m != "mian"})
    with pytest.raises(AssertionError, match=r"no golden values for mian; create them with "
                                             r"python tests/test_golden.py --update --model mian"):
        test_every_registered_model_has_golden_values()


def test_update_rewrites_only_the_named_models(tmp_path, monkeypatch):
    module = sys.modules[__name__]
    path = tmp_path / "golden.json"
    path.write_text(json.dumps({"mian": {"test_auc": 0.5}, "lr": {"test_auc": 0.25}, "gone": {"test_auc": 0.0}}))
    monkeypatch.setattr(module, "GOLDEN", path)
    monkeypatch.setattr(module, "golden_figures", lambda m: {"test_auc": 0.75})
    module.write_golden(["dcn"])
    table = json.loads(path.read_text())
    assert list(table) == ["lr", "dcn", "mian"]  # registry order; the unregistered entry dropped
    assert table == {"lr": {"test_auc": 0.25}, "dcn": {"test_auc": 0.75}, "mian": {"test_auc": 0.5}}


#: CPU kernel settings of ``--spread``: torch's dispatch level, MKL's and oneDNN's instruction sets
KERNEL_SETTINGS = {
    "native": {},
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"},
    "no-simd": {"ATEN_CPU_CAPABILITY": "default", "MKL_ENABLE_INSTRUCTIONS": "SSE4_2", "ONEDNN_MAX_CPU_ISA": "SSE41"},
    "mkl-cbwr": {"MKL_CBWR": "COMPATIBLE"},
}


def spread() -> None:
    """Print the largest difference of the golden figures between CPU kernel settings (each in a
    fresh interpreter, since the settings are read when torch loads) and against ``EXPECTED``."""
    import itertools

    runs = {"recorded": EXPECTED}
    for name, env in KERNEL_SETTINGS.items():
        out = subprocess.run([sys.executable, __file__, "--json"], capture_output=True, text=True, check=True,
                             env={**os.environ, **env})
        runs[name] = json.loads(out.stdout)
    for a, b in itertools.combinations(runs, 2):
        diff, where = max((abs(runs[a][m][k] - runs[b][m][k]), (m, k)) for m in EXPECTED for k in EXPECTED[m])
        print(f"{a:>9s} vs {b:<9s} max |difference| {diff:.3g} ({where[0]} {where[1]})")


def main(argv: list[str]) -> None:
    import argparse

    p = argparse.ArgumentParser(description="The golden figures of the registered models (module docstring).")
    what = p.add_mutually_exclusive_group()
    what.add_argument("--json", action="store_true", help="print every model's figures as JSON (the fresh-process test, --spread)")
    what.add_argument("--spread", action="store_true", help="largest differences between CPU kernel settings and the recorded values")
    what.add_argument("--update", action="store_true", help=f"(re)write {GOLDEN.name} for the --model models (default: all)")
    p.add_argument("--model", action="append", choices=MODEL_NAMES, metavar="NAME",
                   help=f"with --update: a model to record (repeatable; one of {', '.join(MODEL_NAMES)})")
    args = p.parse_args(argv)
    if args.model and not args.update:
        p.error("--model goes with --update")
    if args.json:
        print(json.dumps({m: golden_figures(m) for m in MODEL_NAMES}))
    elif args.spread:
        spread()
    elif args.update:
        models = args.model or list(MODEL_NAMES)
        write_golden(models)
        print(f"{GOLDEN}: golden values of {', '.join(models)} written from the current code")
    else:  # the figures of the current code in the file's format, nothing written
        print(json.dumps({m: golden_figures(m) for m in MODEL_NAMES}, indent=2))


if __name__ == "__main__":
    main(sys.argv[1:])
