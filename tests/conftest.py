"""Shared test fixtures: small schemas and batches built in-process (no data files)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bench.nn.contract import Batch, FeatureSchema, Field, Split

import os

# the team's shared folder (read-only real data for tests); ../shared beside the checkout by default
SHARED = Path(os.environ.get("MIAN_SHARED_DIR", Path(__file__).resolve().parents[1].parent / "shared"))
AMAZON_BEAUTY_DIR = SHARED / "datasets" / "amazon-beauty"


def tiny_schema(n_context: int = 3, n_user: int = 2, max_len: int = 8) -> FeatureSchema:
    return FeatureSchema(
        item_fields=(Field("item_id", 30), Field("category", 7)),
        user_fields=tuple(Field(f"u{j}", 5 + j) for j in range(n_user)),
        context_fields=tuple(Field(f"c{k}", 4 + k) for k in range(n_context)),
        max_len=max_len,
    )


def make_split(schema: FeatureSchema, n: int = 64, seed: int = 0, lengths=None) -> Split:
    """Random samples on ``schema``; ``lengths`` [n] fixes each history length (left-padded)."""
    g = torch.Generator().manual_seed(seed)
    T = schema.max_len

    def ids(fields, *shape):
        cols = [torch.randint(2, f.vocab_size, (*shape, 1), generator=g) for f in fields]
        return torch.cat(cols, -1) if cols else torch.zeros(*shape, 0, dtype=torch.long)

    item = ids(schema.item_fields, n)
    hist = ids(schema.item_fields, n, T)
    if lengths is None:
        lengths = torch.randint(0, T + 1, (n,), generator=g)
    lengths = torch.as_tensor(lengths)
    mask = torch.arange(T).unsqueeze(0) >= (T - lengths).unsqueeze(1)
    hist = hist * mask.unsqueeze(-1)
    return Split(
        item=item,
        hist=hist,
        hist_mask=mask,
        user=ids(schema.user_fields, n),
        context=ids(schema.context_fields, n),
        label=torch.randint(0, 2, (n,), generator=g).float(),
        user_index=torch.randint(0, 10, (n,), generator=g),
    )


def repad(batch: Batch, new_len: int) -> Batch:
    """The same batch with histories left-padded to ``new_len`` slots (>= current T)."""
    B, T, F = batch.hist.shape
    extra = new_len - T
    hist = torch.cat([torch.zeros(B, extra, F, dtype=batch.hist.dtype), batch.hist], 1)
    mask = torch.cat([torch.zeros(B, extra, dtype=torch.bool), batch.hist_mask], 1)
    return Batch(batch.item, hist, mask, batch.user, batch.context, batch.label, batch.user_index)


def separable_split(schema: FeatureSchema, n: int = 512, seed: int = 0) -> Split:
    """A split whose label is a deterministic function of the candidate item id (learnable)."""
    s = make_split(schema, n=n, seed=seed)
    s.label = (s.item[:, 0] % 2).float()
    return s


@pytest.fixture
def schema() -> FeatureSchema:
    return tiny_schema()


@pytest.fixture
def ml_table(tmp_path, monkeypatch):
    """The SampleTable of a tiny synthetic movielens-100k (tests/datagen.py), GroupLens file layout."""
    from bench.data.samples import ProtocolParams
    from bench.data.sources import movielens
    from bench.data.sources.common import RawFiles
    from datagen import ml100k_frames, ml100k_spec, write_ml100k_files

    frames = ml100k_frames()
    monkeypatch.setitem(movielens.SPECS, "movielens-100k", ml100k_spec(frames))
    folder = write_ml100k_files(tmp_path / "raw", frames)
    raw = RawFiles("grouplens-files", {r: folder / f for r, f in
                                       (("ratings", "u.data"), ("users", "u.user"), ("items", "u.item"))})
    return movielens.sample_table("movielens-100k", raw, ProtocolParams())


@pytest.fixture
def beauty_table(tmp_path, monkeypatch):
    """The SampleTable of tiny synthetic S3-Rec Beauty files (tests/datagen.py)."""
    from bench.data.samples import ProtocolParams
    from bench.data.sources import amazon
    from datagen import beauty_bytes, beauty_rows, write_beauty

    folder = write_beauty(tmp_path / "beauty", beauty_bytes(*beauty_rows()), monkeypatch)
    raw = amazon.acquire("amazon-beauty", folder, tmp_path / "unused")
    return amazon.sample_table("amazon-beauty", raw, ProtocolParams())


@pytest.fixture
def one_thread():
    """One torch intra-op thread for the test (tiny tensors: fastest, and immune to other processes on
    the cores); the thread count is restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def keep_threads():
    """Restores torch's intra-op thread count after a test whose command sets it (--threads)."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)
