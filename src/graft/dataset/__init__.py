"""The dataset on disk: the one place that knows its file names, member names and schemas.

A dataset folder (``graft build`` output, docs/formats.md) holds a Parquet
manifest, per-partition part folders, and WebDataset tar shards of tiles and
photos; ``graft embed`` adds cached ground embeddings to the tile shards. The
pipeline writes it through this package, and training, evaluation and
``graft embed`` read it through this package: no other module opens a shard or
spells a member name (``tests/test_dataset_format.py`` checks that).

- :mod:`graft.dataset.layout`: the folder layout (shard, part and manifest paths).
- :mod:`graft.dataset.members`: sample keys and member names, their safety checks, byte encodings.
- :mod:`graft.dataset.manifest`: the manifest and tile-table schemas, part folders, manifest reads.
- :mod:`graft.dataset.shards`: writing and reading tile and photo shards.
- :mod:`graft.dataset.embeddings`: the ground-embedding cache (reading with the row/photo-id check,
  writing, a shard's cache state) and the one comparison of CLIP spec records.
- :mod:`graft.dataset.band_stats`: per-band statistics of the tiles (``band_stats.json``), for
  multispectral encoders.
"""
