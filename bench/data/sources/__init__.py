"""Raw-data readers, one module per dataset family (PROTOCOL section 2).

Each family turns its raw files into a :class:`bench.data.samples.SampleTable` (raw ids, labels,
split, context) that :mod:`bench.data.samples` turns into histories and vocabularies:

- :mod:`bench.data.sources.movielens`: MovieLens 100K / 1M (protocols ``ml100k-ctr-v1``, ``ml1m-ctr-v1``);
- :mod:`bench.data.sources.amazon`: Amazon Beauty, Sports, Toys (S3-Rec copies), Books, Electronics (``amazon-ctr-v1``, ``amazon-ctr-v2``);
- :mod:`bench.data.sources.taobao`: Taobao ad display, Tianchi raw files or TaobaoAd_x1 (``taobao-ad-v1``);
- :mod:`bench.data.sources.common`: :class:`DataError`, checksums, downloads, fast text parsing.

The registry of dataset names lives in :mod:`bench.data`; importing this package does no work.
"""
