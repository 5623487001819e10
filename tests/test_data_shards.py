"""How training reads shards: every tile once per epoch whatever the ranks x workers, shards interleaved."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

import pytest
from helpers_data import make_dataset, tiny_clip_spec

from graft.training.data import StreamSpec, TileStream, split_shards

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    return make_dataset(root / "ds", tiny_clip_spec(root / "clip"), n_tiles=30, n_shards=3, tile_size=16,
                        embed=False)


def _spec(shards: list[str], **kw) -> StreamSpec:
    return StreamSpec(shards=shards, split="train", batch_size=1, crop_size=16, patch_size=8,
                      mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), seed=3, **kw)


def _read(monkeypatch, spec: StreamSpec, epoch: int, worker: int, workers: int) -> list[tuple[str, str]]:
    """(tile id, shard) of what one loader worker of one rank reads in an epoch, in order (no shuffle buffer)."""
    stream = TileStream(replace(spec, shuffle_buffer=0), epoch)
    return [(item["meta"]["tile_id"], item["meta"]["tile_id"][:7]) for item in stream.items(worker, workers)]


@pytest.mark.parametrize(("ranks", "workers"), [(4, 2), (1, 2), (2, 1)])
def test_every_tile_is_seen_exactly_once_per_epoch(dataset, monkeypatch, ranks, workers):
    shards = split_shards(dataset, "train")
    assert len(shards) == 3
    for epoch in (0, 1):
        seen: Counter[str] = Counter()
        shards_read = []
        for rank in range(ranks):
            spec = _spec(shards, rank=rank, world_size=ranks)
            for w in range(workers):
                got = _read(monkeypatch, spec, epoch, w, workers)
                seen.update(t for t, _ in got)
                shards_read.append({s for _, s in got})
        assert sorted(seen) == [f"t-{t // 10:05d}-{t:05d}" for t in range(30)]
        assert set(seen.values()) == {1}, "a tile was read twice in one epoch"
        if ranks * workers > len(shards):  # 8 readers, 3 shards: each reader reads one shard, not all
            assert all(len(s) == 1 for s in shards_read)


def test_shard_order_changes_every_epoch_and_an_epoch_replays_exactly(dataset, monkeypatch):
    spec = _spec(split_shards(dataset, "train"), interleave=1)
    firsts = {tuple(s for _, s in _read(monkeypatch, spec, e, 0, 1))[::10] for e in range(6)}
    assert len(firsts) > 1, "the shard order is the same every epoch"
    assert _read(monkeypatch, spec, 4, 0, 1) == _read(monkeypatch, spec, 4, 0, 1)  # resume replays it


def test_a_worker_interleaves_its_shards(dataset, monkeypatch):
    spec = _spec(split_shards(dataset, "train"))
    one_at_a_time = [s for _, s in _read(monkeypatch, _spec(spec.shards, interleave=1), 0, 0, 1)]
    mixed = [s for _, s in _read(monkeypatch, spec, 0, 0, 1)]
    assert len({*one_at_a_time[:10]}) == 1  # sequential: the first 10 tiles are one shard
    assert len({*mixed[:10]}) == 3  # interleaved: they come from all three
    assert sorted(mixed) == sorted(one_at_a_time)
