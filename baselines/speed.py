"""Forward+backward time per batch of each baseline at MovieLens-100K shapes (a report, not a test).

Run: ``python -m baselines.speed [--threads 2] [--steps 30] [--batch 256] [--models din,dien]``.
Inputs are synthetic batches with the ml100k-ctr-v1 field vocabularies and full histories
(T = 50 real behaviours, the worst case for DIN/DIEN). One step = forward, mean BCE (+ aux loss),
backward; the median over ``steps`` steps after ``warmup`` steps is reported with the parameter
count.
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
        return torch.stack([torch.randint(2, f.vocab_size, shape, generator=g) for f in fields], -1)

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


def step_time(name: str, batch: Batch, schema: FeatureSchema, steps: int = 30, warmup: int = 5) -> tuple[float, int]:
    """(median seconds of one forward+backward+Adam step, parameter count) of model ``name``."""
    torch.manual_seed(0)
    model = build_model(name, schema, item_table=item_table(schema))
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    times = []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        out = model(batch)
        loss = F.binary_cross_entropy_with_logits(out.logits, batch.label)
        if out.aux_loss is not None:
            loss = loss + out.aux_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return statistics.median(times), count_params(model)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--models", default=",".join(BASELINES))
    p.add_argument("--partial", action="store_true", help="history lengths U[0, 50] instead of full")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)
    schema = ml100k_schema()
    batch = synthetic_batch(schema, args.batch, full=not args.partial)
    res = {}
    for name in args.models.split(","):
        sec, n_params = step_time(name, batch, schema, args.steps, args.warmup)
        res[name] = sec
        log.info("%-10s %8.2f ms/step %9.0f samples/s %9d params", name, sec * 1e3, args.batch / sec, n_params)
    if "din" in res and "dien" in res:
        log.info("DIEN/DIN step-time ratio: %.2f", res["dien"] / res["din"])


if __name__ == "__main__":
    main()
