"""Forward+backward time per batch of each baseline at MovieLens-100K shapes (a report, not a test).

Run: ``python -m baselines.speed [--threads 2] [--steps 30] [--batch 256] [--models din,dien]
[--dataset movielens-100k] [--threads 1 --cpu-time]``.
Inputs are synthetic batches with the ml100k-ctr-v1 field vocabularies and full histories
(T = 50 real behaviours, the worst case for DIN/DIEN), or real shuffled training batches of a
prepared dataset (``--dataset``). One step = forward, mean BCE (+ aux loss),
backward, Adam update; the median (and min) over ``steps`` steps after ``warmup`` steps is
reported with the parameter count. Models take turns step by step so that load from other
processes affects all of them alike.
"""
from __future__ import annotations

import argparse
import logging
import statistics
import time

import torch
from torch.nn import functional as F

from bench.contract import Batch, FeatureSchema, Field
from bench.registry import build_model, count_params

log = logging.getLogger(__name__)

BASELINES = ("lr", "wide_deep", "dcn", "deepfm", "xdeepfm", "din", "dien")


def ml100k_schema(max_len: int = 50) -> FeatureSchema:
    """Field vocabularies of MovieLens-100K (ml100k-ctr-v1), padding and OOV included."""
    return FeatureSchema(
        item_fields=(Field("movie_id", 1650), Field("genre", 20), Field("year", 20)),
        user_fields=(Field("user_id", 760), Field("gender", 4), Field("age", 9), Field("occupation", 23), Field("zip1", 12)),
        context_fields=(Field("hour", 26), Field("weekday", 9), Field("gap", 9)),
        max_len=max_len,
    )


def synthetic_batch(schema: FeatureSchema, batch_size: int, seed: int = 0, full: bool = True) -> Batch:
    """A random batch on ``schema``; ``full`` gives every row T real behaviours, else lengths U[0, T]."""
    g = torch.Generator().manual_seed(seed)
    T = schema.max_len

    def ids(fields, *shape):
        cols = [torch.randint(2, f.vocab_size, (*shape, 1), generator=g) for f in fields]
        return torch.cat(cols, -1) if cols else torch.zeros(*shape, 0, dtype=torch.long)

    lengths = torch.full((batch_size,), T) if full else torch.randint(0, T + 1, (batch_size,), generator=g)
    mask = torch.arange(T).unsqueeze(0) >= (T - lengths).unsqueeze(1)
    return Batch(
        item=ids(schema.item_fields, batch_size),
        hist=ids(schema.item_fields, batch_size, T) * mask.unsqueeze(-1),
        hist_mask=mask,
        user=ids(schema.user_fields, batch_size),
        context=ids(schema.context_fields, batch_size),
        label=torch.randint(0, 2, (batch_size,), generator=g).float(),
        user_index=torch.zeros(batch_size, dtype=torch.long),
    )


def item_table(schema: FeatureSchema, seed: int = 0) -> torch.Tensor:
    """A random [V_item_id, F_i] item table (row v: item id v and random other fields)."""
    g = torch.Generator().manual_seed(seed)
    V = schema.item_fields[0].vocab_size
    cols = [torch.arange(V)] + [torch.randint(2, f.vocab_size, (V,), generator=g) for f in schema.item_fields[1:]]
    return torch.stack(cols, -1)


class _Stepper:
    """One model with its Adam optimiser; ``step()`` = forward, loss, backward, update on the
    next of ``batches`` (cycled)."""

    def __init__(self, name: str, schema: FeatureSchema, batches: list[Batch], table: torch.Tensor):
        torch.manual_seed(0)
        self.model = build_model(name, schema, item_table=table).train()
        self.opt = torch.optim.Adam(self.model.parameters(), lr=1e-3)
        self.batches = batches
        self.i = 0
        self.n_params = count_params(self.model)

    def step(self, clock=time.perf_counter) -> float:
        batch = self.batches[self.i % len(self.batches)]
        self.i += 1
        t0 = clock()
        out = self.model(batch)
        loss = F.binary_cross_entropy_with_logits(out.logits, batch.label)
        if out.aux_loss is not None:
            loss = loss + out.aux_loss
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return clock() - t0


def step_times(
    names: list[str],
    schema: FeatureSchema,
    batches: list[Batch],
    table: torch.Tensor,
    steps: int = 30,
    warmup: int = 5,
    clock=time.perf_counter,
) -> dict[str, tuple[float, float, int]]:
    """{name: (median s, min s, parameter count)} of one training step per model.

    Models take turns step by step (round robin), so a change in machine load hits them alike
    and the ratios stay meaningful on a shared machine. ``clock`` is wall time by default;
    ``time.process_time`` with one thread measures this process's CPU time, which other
    processes on the machine barely disturb.
    """
    steppers = {name: _Stepper(name, schema, batches, table) for name in names}
    for s in steppers.values():
        for _ in range(warmup):
            s.step()
    times: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(steps):
        for name, s in steppers.items():
            times[name].append(s.step(clock))
    return {n: (statistics.median(t), min(t), steppers[n].n_params) for n, t in times.items()}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--models", default=",".join(BASELINES))
    p.add_argument("--partial", action="store_true", help="history lengths U[0, 50] instead of full")
    p.add_argument("--cpu-time", action="store_true", help="process CPU time instead of wall time (needs --threads 1)")
    p.add_argument("--dataset", default=None, help="time real shuffled training batches of this prepared dataset")
    args = p.parse_args(argv)
    if args.cpu_time and args.threads != 1:
        p.error("--cpu-time measures one thread's work; use it with --threads 1")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)
    if args.dataset:
        from bench.data import load_prepared

        ds = load_prepared(args.dataset)
        schema, table = ds.schema, torch.as_tensor(ds.item_table).long()
        gen = torch.Generator().manual_seed(0)
        batches = [b for _, b in zip(range(args.steps + args.warmup), ds.train.batches(args.batch, shuffle=True, generator=gen))]
        what = f"{args.dataset} training batches"
    else:
        schema = ml100k_schema()
        table = item_table(schema)
        batches = [synthetic_batch(schema, args.batch, full=not args.partial)]
        what = "synthetic, " + ("history lengths U[0, 50]" if args.partial else "full histories (50)")
    clock = time.process_time if args.cpu_time else time.perf_counter
    res = step_times(args.models.split(","), schema, batches, table, args.steps, args.warmup, clock)
    log.info("threads %d, %s, batch %d, %s", args.threads, "CPU time" if args.cpu_time else "wall time", args.batch, what)
    log.info("%-10s %10s %10s %10s %10s", "model", "median ms", "min ms", "samples/s", "params")
    for name, (med, low, n_params) in res.items():
        log.info("%-10s %10.2f %10.2f %10.0f %10d", name, med * 1e3, low * 1e3, args.batch / med, n_params)
    if "din" in res and "dien" in res:
        log.info("DIEN/DIN step-time ratio: %.2f (median), %.2f (min)", res["dien"][0] / res["din"][0], res["dien"][1] / res["din"][1])


if __name__ == "__main__":
    main()
