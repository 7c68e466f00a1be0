"""Prepare, cache and load datasets under their protocols (PROTOCOL section 2).

    info = prepare("movielens-100k")            # download if needed, build, cache
    ds = load_prepared("movielens-100k")        # PreparedDataset: schema, train/valid/test, item_table

Cache layout: ``<data_dir>/<dataset>/<protocol>-<key>/`` where ``key`` hashes the protocol, its
parameters, the preparation code version (:data:`PREP_VERSION`) and the sha256 of every raw input
file. A cache holds, per split, the per-sample arrays of :data:`bench.data.store.STORED`
(``<split>.<name>.npy``: int32 ids, the label, the raw user key, and two offsets into the event
array), one ``events.npy`` [E, F_i] int32 (every behaviour event's item fields, sorted by user and
time), ``item_table.npy``, the vocabularies and ``meta.json`` (schema, fingerprint, statistics, the
sha256 of every file). Nothing per sample grows with T x F_i: a batch gathers its histories from
the memory-mapped event array when it is drawn (:class:`bench.data.store.LazySplit`). The
fingerprint hashes the canonical arrays (the materialised histories, streamed in chunks), so it
does not depend on this storage (:func:`canonical_arrays`). It is written to a temporary folder beside it and
renamed into place, so an interrupted prepare never leaves a half-written cache (the temporary
folder is removed, or cleaned by the next prepare), and a failed prepare never touches an earlier
cache. ``<data_dir>/<dataset>/LATEST`` names the cache prepared last with the default protocol
parameters (:data:`PARAMS`), ``LATEST.max_len<T>`` the one prepared last with another ``max_len``;
:func:`load_prepared` without ``raw_dir`` loads it. Raw downloads live in ``<data_dir>/raw/<raw>/``,
``<raw>`` = :func:`raw_name` (the dataset itself, or the release whose files it reads:
``movielens-100k-user`` reads ``raw/movielens-100k/``).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import numpy as np
import torch

from bench.data import samples, stats
from bench.data.store import STORED, CanonicalArray, LazySplit
from bench.nn.contract import BATCH_FIELDS, Batch, FeatureSchema, Split
from bench.data.sources import amazon, movielens, taobao
from bench.data.sources.common import DataError, RawFiles, sha256_file
from bench.io import atomic_write_text

__all__ = [
    "DATASETS", "DEFAULT_DATASET", "DataError", "PreparedDataset", "PreparedInfo",
    "default_data_dir", "load_prepared", "prepare", "prepared_metas", "raw_name",
]

log = logging.getLogger(__name__)

#: the raw-data readers, one module per dataset family; each declares ``DATASETS`` (name ->
#: protocol) and may declare ``DISJOINT_PROTOCOLS`` and ``RAW_NAMES`` (name -> the dataset whose raw
#: files it reads). A new family is one module and one entry here.
SOURCES: tuple[ModuleType, ...] = (movielens, amazon, taobao)
#: dataset name -> protocol name (written into every run record)
DATASETS: dict[str, str] = {name: protocol for source in SOURCES for name, protocol in source.DATASETS.items()}
#: protocols under which a sample found in two splits is a DataError (older ones: a warning)
DISJOINT_PROTOCOLS = frozenset().union(*(getattr(source, "DISJOINT_PROTOCOLS", ()) for source in SOURCES))
DEFAULT_DATASET = "movielens-100k"
#: bump when preparation code changes what is written (invalidates every cache). 2: issue 16's
#: storage form (history offsets into one event array, memory-mapped, per-file sha256 in meta.json);
#: the canonical arrays and so the fingerprints are those of version 1.
PREP_VERSION = 2
PARAMS = samples.ProtocolParams()
META = "meta.json"
LATEST = "LATEST"
ROOT = Path(__file__).resolve().parents[2]

_FAMILY: dict[str, ModuleType] = {name: source for source in SOURCES for name in source.DATASETS}


def default_data_dir() -> Path:
    """``$MIAN_DATA_DIR`` if set, else ``<repo root>/data`` (git-ignored)."""
    env = os.environ.get("MIAN_DATA_DIR")
    return Path(env) if env else ROOT / "data"


@dataclass(frozen=True)
class PreparedInfo:
    """Where a prepared dataset is and what it is.

    counts: samples per split. cache_hit: True when nothing had to be built. stats: split ->
    its statistics (:func:`bench.data.stats.split_stats`, from ``meta.json``).
    """

    name: str
    path: Path
    protocol: str
    fingerprint: str
    cache_hit: bool
    counts: dict[str, int] = field(default_factory=dict)
    stats: dict[str, dict] = field(default_factory=dict)


@dataclass
class PreparedDataset:
    """A prepared dataset: schema, the three splits, the item table.

    item_table: LongTensor [V_item_id, F_i], the item fields of each item-id index (row 0 padding
    zeros, row 1 all OOV). Splits are :class:`bench.data.store.LazySplit` objects over the
    memory-mapped cache (in tests also in-memory :data:`bench.nn.contract.Split` objects): both
    give :class:`bench.nn.contract.Batch` objects (int64 ids, bool mask, float32 label,
    ``user_index`` = raw user key) through ``take``, ``batches`` and ``length_sorted_batches``. ``stats``: the statistics of :mod:`bench.data.stats`.
    ``vocabs``: ``<group>.<field>`` -> sorted raw values (index k >= 2 means ``vocab[k - 2]``).
    ``params``: the protocol parameters it was prepared with (max_len, data_seed).
    """

    name: str
    protocol: str
    fingerprint: str
    schema: FeatureSchema
    train: Split
    valid: Split
    test: Split
    item_table: torch.Tensor
    path: Path
    stats: dict = field(default_factory=dict)
    vocabs: dict[str, np.ndarray] = field(default_factory=dict)
    params: dict = field(default_factory=lambda: dataclasses.asdict(PARAMS))

    def split(self, name: str) -> Split:
        """The split called ``name`` (train, valid or test)."""
        if name not in samples.SPLITS:
            raise DataError(f"split {name!r}: expected one of {', '.join(samples.SPLITS)}.")
        return getattr(self, name)


def raw_name(dataset: str) -> str:
    """The name of the folder ``<data_dir>/raw/<name>/`` that holds ``dataset``'s raw files: its
    family's ``RAW_NAMES`` entry (``movielens-100k-user`` -> ``movielens-100k``: one download serves
    both), else ``dataset`` itself. Raises :class:`DataError` for an unknown dataset."""
    _protocol(dataset)
    return getattr(_FAMILY[dataset], "RAW_NAMES", {}).get(dataset, dataset)


def _protocol(dataset: str) -> str:
    if dataset not in DATASETS:
        raise DataError(f"dataset {dataset!r} is unknown; expected one of {', '.join(DATASETS)}.")
    return DATASETS[dataset]


def _cache_id(dataset: str, raw: RawFiles, params: samples.ProtocolParams) -> tuple[str, dict]:
    """Cache key (16 hex) and the description it hashes: protocol, parameters, raw content."""
    desc = {
        "dataset": dataset,
        "protocol": _protocol(dataset),
        "prep_version": PREP_VERSION,
        "params": dataclasses.asdict(params),
        "raw_kind": raw.kind,
        "raw_sha256": {role: raw.sha256.get(role) or sha256_file(p) for role, p in sorted(raw.paths.items())},
    }
    key = hashlib.sha256(json.dumps(desc, sort_keys=True).encode()).hexdigest()[:16]
    return key, desc


def canonical_arrays(splits: dict[str, LazySplit], item_table: np.ndarray,
                     vocabs: dict[str, np.ndarray]) -> dict[str, CanonicalArray | np.ndarray]:
    """Every array of a prepared dataset in its canonical form (the arrays the cache held up to
    ``PREP_VERSION`` 1: ``<split>.<field>`` for the seven fields of :data:`BATCH_FIELDS`, histories
    [N, T, F_i] int32 left-padded, masks bool, ``user_index`` int64; ``item_table`` int32;
    ``vocab.<group>.<field>``), by name in the fixed order the fingerprint uses. The split arrays
    are :class:`bench.data.store.CanonicalArray` streams, never materialised whole."""
    named: dict[str, CanonicalArray | np.ndarray] = {
        f"{s}.{f}": splits[s].canonical(f) for s in samples.SPLITS for f in BATCH_FIELDS}
    named["item_table"] = np.asarray(item_table, dtype=np.int32)
    named.update({f"vocab.{k}": np.asarray(v) for k, v in sorted(vocabs.items())})
    return named


def fingerprint(schema: FeatureSchema, arrays: dict[str, np.ndarray | CanonicalArray]) -> str:
    """sha256 of the schema JSON and every array (``name|dtype|shape|`` then its C-order bytes), in
    the given order. An array may be a :class:`bench.data.store.CanonicalArray`, hashed chunk by
    chunk (the same digest as the whole array: sha256 is a stream), so the fingerprint of a
    dataset is that of its canonical content, whatever its storage (:func:`canonical_arrays`)."""
    h = hashlib.sha256(schema.to_json().encode())
    for name, a in arrays.items():
        if isinstance(a, CanonicalArray):
            h.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
            for chunk in a.chunks():
                h.update(np.ascontiguousarray(chunk, dtype=a.dtype))
            continue
        a = np.ascontiguousarray(a)
        h.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def cache_fingerprint(path: Path) -> str:
    """The canonical fingerprint recomputed from the files of the cache at ``path`` (streamed;
    what ``meta.json`` records when the cache is intact). Raises :class:`DataError` as
    :func:`load_cache`."""
    ds = load_cache(path)
    table = _load_array(Path(path) / "item_table.npy")
    return fingerprint(ds.schema, canonical_arrays({s: ds.split(s) for s in samples.SPLITS}, table, ds.vocabs))


def prepare(dataset: str, data_dir: Path | None = None, raw_dir: Path | None = None,
            force: bool = False, params: samples.ProtocolParams | None = None) -> PreparedInfo:
    """Build (or find in the cache) the prepared splits of ``dataset``.

    Raw files come from ``raw_dir``, else ``<data_dir>/raw/<raw_name(dataset)>/``, else a download.
    With the same raw content and parameters a second call is a cache hit (logged, no work);
    ``force`` rebuilds and atomically replaces the cache. ``params``: the protocol parameters
    (default :data:`PARAMS`; another ``max_len`` is another cache key, so its own folder and
    fingerprint). Raises :class:`DataError` (unknown
    dataset, missing/corrupt/wrong-checksum file, bad split; a damaged cache found for reuse)
    leaving earlier caches intact.
    """
    return _prepare(dataset, data_dir, raw_dir, force, params)[0]


def _prepare(dataset: str, data_dir: Path | None, raw_dir: Path | None, force: bool,
             params: samples.ProtocolParams | None) -> tuple[PreparedInfo, PreparedDataset | None]:
    """:func:`prepare`, also returning the cache it checked by loading it on a hit (None after a
    build), so :func:`load_prepared` does not load and check it a second time."""
    protocol = _protocol(dataset)
    params = params if params is not None else PARAMS
    data_dir = Path(data_dir) if data_dir is not None else default_data_dir()
    family = _FAMILY[dataset]
    t0 = time.perf_counter()
    raw = family.acquire(dataset, Path(raw_dir) if raw_dir is not None else None,
                         data_dir / "raw" / raw_name(dataset))
    try:
        key, desc = _cache_id(dataset, raw, params)
        root = data_dir / dataset
        final = root / f"{protocol}-{key}"
        if not force and (final / META).is_file():
            meta = _read_meta(final)
            loaded = load_cache(final)  # every loader's checks (sha256 of each file, offsets, ids): a damaged
            # cache is one DataError naming the file and --force, never reported as a cache hit
            _set_latest(root, final.name, params)
            log.info("%s: cache hit, %s (fingerprint %s)", dataset, final, meta["fingerprint"][:12])
            return _info(meta, final, cache_hit=True), loaded
        table = family.sample_table(dataset, raw, params, protocol=protocol)
        totals = (stats.dataset_totals(table.item_attrs, table.event_user, table.user_key)
                  if table.history_key is None else  # per-sample pools (TaobaoAd_x1): event_user is no user
                  stats.dataset_totals(table.item_attrs, table.user_key[:0], table.user_key)
                  | {"events": len(table.event_user)})
        built = samples.build(table, params)
        del table  # the raw samples are no longer needed: free them before hashing and writing
        check_disjoint(dataset, protocol, built.splits)
    except DataError:
        if raw.downloaded:  # a download that does not load is not kept
            for p in raw.paths.values():
                p.unlink(missing_ok=True)
        raise
    meta = {
        **desc,
        "name": dataset,
        "cache_key": key,
        "schema": built.schema.to_dict(),
        "fingerprint": fingerprint(built.schema, canonical_arrays(built.splits, built.item_table, built.vocabs)),
        "counts": {s: int(len(a["label"])) for s, a in built.splits.items()},
        "stats": {
            "dataset": totals,
            "splits": {s: stats.split_stats(built.splits[s], built.item_attrs[built.cand_rows[s]],
                                            train_users=built.splits["train"]["user_index"])
                       for s in samples.SPLITS},
        },
        "raw_files": {role: p.name for role, p in raw.paths.items()},
        "vocabs": sorted(built.vocabs),
    }
    _write_cache(root, final, built, meta)
    _set_latest(root, final.name, params)
    log.info("%s: prepared %s in %.1f s (fingerprint %s)", dataset, final,
             time.perf_counter() - t0, meta["fingerprint"][:12])
    return _info(meta, final, cache_hit=False), None


def check_disjoint(dataset: str, protocol: str, splits: dict[str, dict[str, np.ndarray]]) -> dict[str, int]:
    """Count the samples that are exact copies of a sample of another split
    (:func:`bench.data.samples.cross_split_duplicates`) and return the counts.

    Under a protocol of :data:`DISJOINT_PROTOCOLS` any copy is a :class:`DataError`; under the
    others (v1 protocols, kept so that their run records stay valid) one warning gives the counts.
    """
    counts = samples.cross_split_duplicates(splits)
    if any(counts.values()):
        text = ", ".join(f"{n} {pair}" for pair, n in counts.items() if n)
        what = (f"{dataset} ({protocol}): samples of one split are exact copies of samples of another "
                f"(label, candidate, history, user and context equal): {text}")
        if protocol in DISJOINT_PROTOCOLS:
            raise DataError(f"{what}; expected disjoint splits under {protocol}.")
        log.warning("%s; kept as they are under %s (docs/DATA.md).", what, protocol)
    return counts


def load_prepared(dataset: str, data_dir: Path | None = None, raw_dir: Path | None = None,
                  params: samples.ProtocolParams | None = None) -> PreparedDataset:
    """The prepared ``dataset`` (memory-mapped, :func:`load_cache`), preparing it first if nothing is cached.

    Without ``raw_dir`` the cache named by ``LATEST`` (``LATEST.max_len<T>`` for other ``params``)
    is loaded when it was built with the current protocol, these parameters (default
    :data:`PARAMS`) and code version; otherwise (or with ``raw_dir``) :func:`prepare` runs first.
    Raises :class:`DataError`.
    """
    protocol = _protocol(dataset)
    params = params if params is not None else PARAMS
    data_dir = Path(data_dir) if data_dir is not None else default_data_dir()
    if raw_dir is None:
        latest = _latest(data_dir / dataset, params)
        if latest is not None:
            meta = _read_meta(latest)
            if (meta.get("protocol"), meta.get("prep_version"), meta.get("params")) == (
                    protocol, PREP_VERSION, dataclasses.asdict(params)):
                return load_cache(latest)
    info, loaded = _prepare(dataset, data_dir, raw_dir, False, params)
    return loaded if loaded is not None else load_cache(info.path)


def check_ids(schema: FeatureSchema, data: Batch, where: str,
              item_table: torch.Tensor | None = None) -> None:
    """Refuse ids outside their own field's vocabulary, once per split (or batch object).

    Every group embeds all its fields through one concatenated table (``bench.nn.embedding``), so an
    id >= its field's ``vocab_size`` would silently read the next field's rows; this check makes
    that an error. Checks, per field: the number of columns of ``item``, ``hist`` [.., F_i],
    ``user`` [.., J], ``context`` [.., K] (and ``item_table`` [V_item_id, F_i] when given), and
    0 <= min, max < vocab_size. ``data``: a :class:`Batch` / in-memory ``Split``, or a
    :class:`bench.data.store.LazySplit`, whose event array [E, F_i] is checked for ``hist`` (every
    history value is an event's, or padding 0). Vectorised: one min/max reduction per array (no
    per-step cost when called once per split).

    Raises :class:`DataError` naming ``where`` (e.g. "movielens-100k train"),
    the group, the field, the bad value and the vocabulary size.
    """
    groups = (("item", "item", schema.item_fields), ("hist", "item", schema.item_fields),
              ("user", "user", schema.user_fields), ("context", "context", schema.context_fields))
    if isinstance(data, LazySplit):  # numpy (memory-mapped); the event array stands for hist
        tensors = data.id_arrays()
    else:
        tensors = {name: getattr(data, name) for name, _, _ in groups}
    if item_table is not None:
        groups += (("item_table", "item", schema.item_fields),)
        tensors["item_table"] = item_table
    for name, group, fields in groups:
        t = tensors[name]
        if t.shape[-1] != len(fields):
            raise DataError(f"{where}: {name} has {t.shape[-1]} columns; the schema's {group} group has "
                            f"{len(fields)} fields ({', '.join(f.name for f in fields)}).")
        n = t.numel() if isinstance(t, torch.Tensor) else t.size
        if n == 0:
            continue
        flat = t.reshape(-1, len(fields))
        if isinstance(flat, torch.Tensor):
            lo, hi = (x.tolist() for x in torch.aminmax(flat, dim=0))
        else:
            lo, hi = flat.min(0).tolist(), flat.max(0).tolist()
        for k, f in enumerate(fields):
            size = f.vocab_size
            if hi[k] >= size:
                raise DataError(f"{where}: {name} field {group}.{f.name} has max index {int(hi[k])} >= its "
                                f"vocabulary size {size}; expected every index in [0, {size}) (a larger one "
                                "would read the next field's rows of the group's shared embedding table).")
            if lo[k] < 0:
                raise DataError(f"{where}: {name} field {group}.{f.name} has min index {int(lo[k])} < 0; "
                                f"expected every index in [0, {size}).")


def _load_array(file: Path, sha256: str | None = None) -> np.ndarray:
    """One ``.npy`` file of a cache, memory-mapped read-only (pages are read when used); with
    ``sha256`` its bytes are checked first. :class:`DataError` naming the file when it is
    missing, unreadable or differs."""
    try:
        array = np.load(file, mmap_mode="r", allow_pickle=False)
        digest = sha256_file(file) if sha256 is not None else None
    except DataError as e:  # sha256_file: unreadable
        raise DataError(f"{file}: damaged cache file ({e.__cause__ or e}); rerun prepare with --force.") from e
    except (OSError, ValueError, EOFError) as e:
        raise DataError(f"{file}: damaged cache file ({e}); rerun prepare with --force.") from e
    if digest is not None and digest != sha256:
        raise DataError(f"{file}: damaged cache file (its sha256 differs from the one meta.json recorded when the "
                        "cache was written); rerun prepare with --force.")
    return array


def load_cache(path: Path) -> PreparedDataset:
    """Load one cache folder (module docstring; docs/DATA.md, "The cache").

    Every array is memory-mapped read-only (``np.load(mmap_mode="r")``): training gathers its
    batches from the pages it needs (:class:`bench.data.store.LazySplit`), nothing [N, T, F_i]
    is held. Each file is first checked against the sha256 ``meta.json`` recorded when the cache
    was written, so a damaged or modified file is one :class:`DataError` naming it; then the
    sample counts, the history offsets and every id's bound (:func:`check_ids`). A cache written
    by another ``PREP_VERSION`` (another storage form) is refused with a :class:`DataError`
    (:func:`load_prepared` and :func:`prepare` rebuild it under a new key), never misread.
    """
    path = Path(path)
    meta = _read_meta(path)
    if meta.get("prep_version") != PREP_VERSION or not isinstance(meta.get("files"), dict):
        raise DataError(f"{path}: a cache of PREP_VERSION {meta.get('prep_version')}, this code reads version "
                        f"{PREP_VERSION} (another storage form); rerun prepare (it builds the current form beside it).")
    files = meta["files"]

    def array(name: str) -> np.ndarray:
        file = path / f"{name}.npy"
        if file.name not in files:
            raise DataError(f"{path / META}: lists no sha256 for {file.name}; rerun prepare with --force.")
        return _load_array(file, files[file.name])

    schema = FeatureSchema.from_dict(meta["schema"])
    events = array("events")
    splits = {s: LazySplit({k: array(f"{s}.{k}") for k in STORED}, events, schema.max_len) for s in samples.SPLITS}
    table = array("item_table")
    item_table = torch.from_numpy(np.array(table, dtype=np.int64))
    vocabs = {k: array(f"vocab.{k}") for k in meta["vocabs"]}
    for s, sp in splits.items():
        for k in STORED:
            if len(sp.arrays[k]) != meta["counts"][s]:
                raise DataError(f"{path / f'{s}.{k}.npy'}: {len(sp.arrays[k])} samples, meta.json says "
                                f"{meta['counts'][s]}; rerun prepare with --force.")
        bad = sp.offset_error()
        if bad is not None:
            raise DataError(f"{path / f'{s}.hist_start.npy'}, {path / f'{s}.hist_end.npy'}: {bad}; "
                            "rerun prepare with --force.")
        # every id below its own field's vocabulary size (once per split; see check_ids)
        check_ids(schema, sp, f"{meta['name']} {s} split ({path})", item_table=item_table if s == "train" else None)
    return PreparedDataset(
        name=meta["name"], protocol=meta["protocol"], fingerprint=meta["fingerprint"],
        schema=schema, **splits,
        item_table=item_table, path=path, stats=meta["stats"],
        vocabs=vocabs,
        params=dict(meta.get("params") or dataclasses.asdict(PARAMS)),
    )


def prepared_metas(data_dir: Path | None = None) -> list[dict]:
    """``meta.json`` of the latest cache of every prepared dataset under ``data_dir`` (name order).

    Raises DataError when ``data_dir`` (or ``$MIAN_DATA_DIR``) exists but is not a folder."""
    source = f"--data-dir {data_dir}" if data_dir is not None else (
        f"MIAN_DATA_DIR={os.environ['MIAN_DATA_DIR']}" if os.environ.get("MIAN_DATA_DIR") else "the default ./data")
    data_dir = Path(data_dir) if data_dir is not None else default_data_dir()
    if data_dir.exists() and not data_dir.is_dir():
        raise DataError(f"{data_dir} (from {source}) is a file, not a folder; choose a folder with --data-dir or "
                        "MIAN_DATA_DIR.")
    metas = []
    for name in DATASETS:
        latest = _latest(data_dir / name)
        if latest is not None:
            metas.append(_read_meta(latest) | {"path": str(latest)})
    return metas


# --------------------------------------------------------------------------- cache internals

def _info(meta: dict, path: Path, cache_hit: bool) -> PreparedInfo:
    return PreparedInfo(meta["name"], path, meta["protocol"], meta["fingerprint"], cache_hit,
                        {s: meta["counts"][s] for s in samples.SPLITS},
                        {s: meta["stats"]["splits"][s] for s in samples.SPLITS})


def _read_meta(path: Path) -> dict:
    file = Path(path) / META
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise DataError(f"{file}: missing or damaged cache metadata ({e}); rerun prepare with --force.") from e


def latest_name(params: samples.ProtocolParams | None = None) -> str:
    """``LATEST`` for the default parameters, else ``LATEST.<key><value>`` for each that differs
    (``LATEST.max_len5``): a study with another max_len never moves what the default loads."""
    params = params if params is not None else PARAMS
    default = dataclasses.asdict(PARAMS)
    changed = [f"{k}{v}" for k, v in dataclasses.asdict(params).items() if v != default[k]]
    return ".".join([LATEST, *changed])


def _latest(root: Path, params: samples.ProtocolParams | None = None) -> Path | None:
    try:
        name = (root / latest_name(params)).read_text(encoding="utf-8").strip()
    except OSError:
        return None
    path = root / name
    return path if name and (path / META).is_file() else None


def _set_latest(root: Path, name: str, params: samples.ProtocolParams | None = None) -> None:
    atomic_write_text(root / latest_name(params), name + "\n")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale(root: Path) -> None:
    """Remove temporary folders left by prepares whose process is gone (killed mid-write)."""
    for d in root.glob(".tmp-*"):
        parts = d.name.split("~")
        pid = int(parts[1]) if len(parts) > 2 and parts[1].isdigit() else None
        if d.is_dir() and (pid is None or not _pid_alive(pid)):
            log.info("removing the unfinished cache %s", d)
            shutil.rmtree(d, ignore_errors=True)


def stored_arrays(built: samples.Built) -> dict[str, np.ndarray]:
    """The files of a cache (``<stem>.npy``) by stem: per split the :data:`bench.data.store.STORED`
    arrays, ``events``, ``item_table``, ``vocab.<group>.<field>``."""
    named = {f"{s}.{k}": built.splits[s].arrays[k] for s in samples.SPLITS for k in STORED}
    named["events"] = built.events
    named["item_table"] = built.item_table
    named.update({f"vocab.{k}": v for k, v in sorted(built.vocabs.items())})
    return named


def _write_arrays(folder: Path, built: samples.Built) -> dict[str, str]:
    """Write the arrays of :func:`stored_arrays` into ``folder``; returns file name -> sha256."""
    sums = {}
    for name, a in stored_arrays(built).items():
        file = folder / f"{name}.npy"
        np.save(file, a, allow_pickle=False)
        sums[file.name] = sha256_file(file)
    return sums


def _write_cache(root: Path, final: Path, built: samples.Built, meta: dict) -> None:
    """Write arrays and meta into a temporary folder, then rename it to ``final`` atomically."""
    root.mkdir(parents=True, exist_ok=True)
    _remove_stale(root)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}~{os.getpid()}~", dir=root))
    tmp.chmod(0o755)  # mkdtemp makes it private; the cache is an ordinary folder
    try:
        meta = {**meta, "files": _write_arrays(tmp, built)}
        (tmp / META).write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n", encoding="utf-8")
        if final.exists():  # --force: swap in the new cache, then drop the old one
            old = Path(tempfile.mkdtemp(prefix=f".tmp-old-{final.name}~{os.getpid()}~", dir=root))
            os.replace(final, old / final.name)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            try:
                os.replace(tmp, final)
            except OSError:
                if not (final / META).is_file():
                    raise
                log.info("%s was completed by a concurrent prepare; keeping it", final)
                shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
