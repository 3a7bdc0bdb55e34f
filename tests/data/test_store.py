"""Sharded store: atomic shards, manifest validation, exact statistics, datasets."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from lensml.data.datasets import ChunkShuffleSampler, StoreDataset, StoreIterableDataset
from lensml.data.runner import run_simulate
from lensml.data.store import (
    StoreError,
    array_stats,
    clean_tmp_dirs,
    load_manifest,
    merge_stats,
    open_store,
    scan_shards,
    shard_dir,
    write_shard,
)
from lensml.sims.base import ConfigError, get_generator, shard_rng, shard_seed, validate_config


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("store") / "set"
    run_simulate("toy", 1000, root, seed=1, shard_size=300, progress=False, chunk_items=64)
    return root


# ------------------------------------------------------------------ generator interface


def test_shard_seed_is_pure_and_distinct():
    assert shard_seed(1, 2) == shard_seed(1, 2)
    seeds = {shard_seed(s, i) for s in range(5) for i in range(50)}
    assert len(seeds) == 250 and all(0 <= s < 2**63 for s in seeds)
    a = torch.rand(3, generator=shard_rng(7, 0))
    assert torch.equal(a, torch.rand(3, generator=shard_rng(7, 0)))
    assert not torch.equal(a, torch.rand(3, generator=shard_rng(7, 1)))
    with pytest.raises(ValueError):
        shard_seed(-1, 0)


def test_toy_generator_and_config_validation(tmp_path):
    gen = get_generator("toy")
    cfg = validate_config(gen, {"size": 8})
    out = gen.generate(5, shard_rng(0, 0), cfg)
    assert out["image"].shape == (5, 1, 8, 8) and out["image"].dtype == torch.float32
    assert out["labels"].shape == (5, 2) and gen.label_names(cfg) == ["amplitude", "width"]
    with pytest.raises(ConfigError, match=r"config: size: .*got 'big'"):
        validate_config(gen, {"size": "big"})
    with pytest.raises(ConfigError, match=r"unknown config field.*sise"):
        validate_config(gen, {"sise": 3})
    with pytest.raises(ConfigError, match=r"width_max"):
        validate_config(gen, {"width_min": 1.0, "width_max": 0.5})
    bad = tmp_path / "bad.yaml"
    bad.write_text("size: [1, 2\n")
    with pytest.raises(ConfigError, match=r"bad.yaml"):
        validate_config(gen, bad)
    good = tmp_path / "good.yaml"
    good.write_text("size: 12\nnoise_sigma: 0.0\n")
    assert validate_config(gen, good).size == 12
    with pytest.raises(ValueError, match=r"known: .*toy"):
        get_generator("nope")


# ------------------------------------------------------------------ statistics


def test_merged_stats_are_exact_and_order_independent():
    rng = np.random.default_rng(0)
    x = rng.normal(3.0, 2.0, size=(1000, 3))
    parts = [array_stats(x[s : s + 170]) for s in range(0, 1000, 170)]
    m = merge_stats(parts)
    assert np.allclose(m["mean"], x.mean(0), rtol=1e-13)
    assert np.allclose(m["std"], x.std(0), rtol=1e-12)
    assert m["min"] == x.min(0).tolist() and m["max"] == x.max(0).tolist() and m["count"] == 1000


def test_manifest_stats_match_data(store_dir):
    store = open_store(store_dir, require_complete=True)
    labels = store.read_all(["labels"])["labels"].astype(np.float64)
    stats = store.label_stats
    assert list(stats) == ["amplitude", "width"] and len(store) == 1000
    for j, name in enumerate(stats):
        assert stats[name]["mean"] == pytest.approx(labels[:, j].mean(), rel=1e-12)
        assert stats[name]["std"] == pytest.approx(labels[:, j].std(), rel=1e-12)
        assert stats[name]["min"] == labels[:, j].min() and stats[name]["count"] == 1000
    m = store.manifest
    assert m["arrays"]["image"] == {"shape": [1, 16, 16], "dtype": "<f4", "role": "input"}
    assert m["arrays"]["labels"]["role"] == "target" and m["arrays"]["flux"]["role"] == "meta"
    assert m["n_shards"] == 4 and m["complete"] and m["config"]["size"] == 16


# ------------------------------------------------------------------ atomic shards


def test_write_shard_is_atomic_and_idempotent(tmp_path, monkeypatch):
    arrays = {"x": np.ones((10, 2), np.float32), "y": np.arange(10.0)[:, None]}
    rec = write_shard(tmp_path, 3, arrays, roles={"y": "target"}, chunk_items=4)
    assert rec["n"] == 10 and rec["stats"]["y"]["mean"] == [4.5]
    again = write_shard(tmp_path, 3, {"x": np.zeros((10, 2), np.float32)})
    assert again == rec  # an existing complete shard is kept
    with pytest.raises(StoreError, match=r"NaN"):
        write_shard(tmp_path, 4, {"y": np.array([[np.nan]])}, roles={"y": "target"})
    with pytest.raises(StoreError, match=r"different lengths"):
        write_shard(tmp_path, 4, {"a": np.ones(3), "b": np.ones(4)})

    # a writer that dies mid-shard leaves only a tmp directory, never shard-000005
    import zarr

    def boom(*a, **k):
        raise RuntimeError("killed")

    monkeypatch.setattr(zarr.Group, "create_array", boom)
    monkeypatch.setattr("lensml.data.store.shutil.rmtree", lambda *a, **k: None)  # as if SIGKILLed
    with pytest.raises(RuntimeError):
        write_shard(tmp_path, 5, arrays)
    monkeypatch.undo()
    assert not shard_dir(tmp_path, 5).exists()
    assert len(list((tmp_path / "shards").glob("shard-000005.tmp-*"))) == 1
    assert sorted(scan_shards(tmp_path)) == [3]
    assert len(clean_tmp_dirs(tmp_path)) == 1
    assert not list((tmp_path / "shards").glob("*.tmp-*"))


# ------------------------------------------------------------------ manifest validation


def _copy_store(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_manifest_errors_name_file_and_field(store_dir, tmp_path):
    with pytest.raises(StoreError, match=r"does not exist"):
        open_store(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(StoreError, match=r"manifest.json is missing"):
        open_store(tmp_path / "empty")
    root = _copy_store(store_dir, tmp_path / "copy")
    mpath = root / "manifest.json"
    good = json.loads(mpath.read_text())
    mpath.write_text("{not json")
    with pytest.raises(StoreError, match=r"manifest.json is not valid JSON"):
        open_store(root)
    for field, value, msg in [
        ("n", "many", "field 'n' must be int"),
        ("format", "other", "field 'format'"),
        ("format_version", 99, "format_version"),
        ("n_shards", 7, "n_shards"),
        ("shards", {"shard-000009": {"n": 3}}, "shards.shard-000009"),
    ]:
        bad = dict(good, **{field: value})
        mpath.write_text(json.dumps(bad))
        with pytest.raises(StoreError, match=msg):
            open_store(root)
    bad = dict(good)
    del bad["seed"]
    mpath.write_text(json.dumps(bad))
    with pytest.raises(StoreError, match=r"field 'seed' is missing"):
        load_manifest(root)
    mpath.write_text(json.dumps(good))
    import shutil

    shutil.rmtree(shard_dir(root, 2))
    with pytest.raises(StoreError, match=r"shard-000002"):
        open_store(root)


# ------------------------------------------------------------------ datasets


def test_map_dataset_matches_shards_and_pickles(store_dir):
    ds = StoreDataset(store_dir, keys=["image", "labels"])
    full = open_store(store_dir).read_all(["image", "labels"])
    assert len(ds) == 1000
    for i in (0, 63, 64, 299, 300, 999, -1):
        item = ds[i]
        assert torch.equal(item["labels"], torch.from_numpy(full["labels"][i]))
        assert torch.equal(item["image"], torch.from_numpy(full["image"][i]))
    with pytest.raises(IndexError):
        ds[1000]
    assert ds._reader._groups  # zarr groups are open here ...
    clone = pickle.loads(pickle.dumps(ds))
    assert not clone._reader._groups  # ... but not pickled: reopened lazily in each worker
    assert torch.equal(clone[5]["image"], ds[5]["image"])


def test_dataloader_with_workers_reads_everything_once(store_dir):
    ds = StoreDataset(store_dir, keys=["labels"])
    sampler = ChunkShuffleSampler(ds, seed=3)
    order = list(sampler)
    assert sorted(order) == list(range(1000)) and order != list(range(1000))
    loader = DataLoader(ds, batch_size=100, sampler=sampler, num_workers=2)
    got = torch.cat([b["labels"] for b in loader])
    full = torch.from_numpy(open_store(store_dir).read_all(["labels"])["labels"])
    assert torch.equal(got, full[order])


def test_iterable_dataset_worker_and_rank_sharding(store_dir):
    full = torch.from_numpy(open_store(store_dir).read_all(["labels"])["labels"])
    ds = StoreIterableDataset(store_dir, keys=["labels"], batch_size=50)
    loader = DataLoader(ds, batch_size=None, num_workers=2)
    got = torch.cat([b["labels"] for b in loader])
    assert got.shape == full.shape
    # every item exactly once, whatever the worker interleaving
    assert torch.equal(got[torch.argsort(got[:, 0])], full[torch.argsort(full[:, 0])])
    # two ranks split the set without overlap
    ranks = [
        StoreIterableDataset(store_dir, keys=["labels"], batch_size=64, rank=r, world_size=2)
        for r in range(2)
    ]
    parts = [torch.cat([b["labels"] for b in ds]) for ds in ranks]
    both = torch.cat(parts)
    assert both.shape == full.shape and len(set(both[:, 0].tolist())) == 1000
    # seeded shuffle: same seed and epoch -> same order; new epoch -> new order
    a = StoreIterableDataset(store_dir, keys=["labels"], shuffle=True, seed=1)
    first = torch.stack([x["labels"] for x in a])
    second = torch.stack([x["labels"] for x in a])
    a.set_epoch(1)
    third = torch.stack([x["labels"] for x in a])
    assert torch.equal(first, second) and not torch.equal(first, third)
    assert torch.equal(first[torch.argsort(first[:, 0])], full[torch.argsort(full[:, 0])])


def test_dataset_transform_is_seeded_per_item(store_dir):
    def jitter(sample, gen):
        out = dict(sample)
        out["labels"] = sample["labels"] + torch.rand(2, generator=gen)
        return out

    ds = StoreDataset(store_dir, keys=["labels"], transform=jitter, seed=4)
    it = StoreIterableDataset(store_dir, keys=["labels"], transform=jitter, seed=4, batch_size=1000)
    batch = next(iter(it))["labels"]
    assert torch.equal(batch[10], ds[10]["labels"])  # same draw whichever dataset / worker
    assert not torch.equal(ds[10]["labels"], StoreDataset(store_dir, keys=["labels"])[10]["labels"])


def test_memory_budget_keeps_every_decoded_chunk(store_dir, monkeypatch):
    """With a budget >= the store's decoded size, a shuffled second epoch decodes nothing."""
    full = open_store(store_dir).read_all(["image", "labels"])
    ds = StoreDataset(store_dir, keys=["image", "labels"], cache_mb=64)
    small = StoreDataset(store_dir, keys=["image", "labels"])  # 4 chunks only
    expect = sum(full[k].nbytes for k in ("image", "labels")) / 2**20
    assert ds.decoded_mb == pytest.approx(expect, rel=1e-12) and expect < 64
    reads = {"big": 0, "small": 0}
    for name, d in (("big", ds), ("small", small)):
        real = d._reader.read

        def counting(*a, _real=real, _name=name):
            reads[_name] += 1
            return _real(*a)

        monkeypatch.setattr(d._reader, "read", counting)
    order = np.random.default_rng(0).permutation(1000)
    for _epoch in range(2):
        for i in order:
            item = ds[int(i)]
            assert torch.equal(item["image"], torch.from_numpy(full["image"][i]))
            small[int(i)]
        n_chunks = sum(-(-n // ds.chunk_items) for n in ds._reader.counts)
        assert reads["big"] == n_chunks  # each chunk decoded once, in the first epoch only
    assert len(ds._cache) == n_chunks and len(small._cache) == 4
    assert reads["small"] > 10 * n_chunks  # the 4-chunk LRU re-decodes under random access
    assert ds._cached_bytes == sum(v.nbytes for c in ds._cache.values() for v in c.values())
    monkeypatch.undo()
    # the copy sent to a DataLoader worker starts with an empty cache
    clone = pickle.loads(pickle.dumps(ds))
    assert clone._cached_bytes == 0 and not clone._cache
    # a budget below one chunk still keeps cache_chunks
    tiny = StoreDataset(store_dir, keys=["labels"], cache_mb=1e-6, cache_chunks=3)
    for i in order[:200]:
        tiny[int(i)]
    assert len(tiny._cache) == 3
    with pytest.raises(ValueError, match="cache_mb"):
        StoreDataset(store_dir, cache_mb=-1)


def test_pooled_stores_size_an_automatic_cache_to_hold_every_store(store_dir, monkeypatch):
    import lensml.data.pooled as pooled

    keys = ["image", "labels"]
    auto = pooled.PooledStores._open_stores([store_dir, store_dir], keys, None)
    for d in auto:  # each store whole, so a shuffled epoch decodes every chunk once
        assert d.cache_bytes >= d.decoded_mb * 2**20
    fixed = pooled.PooledStores._open_stores([store_dir, store_dir], keys, 10.0)
    assert [d.cache_bytes for d in fixed] == [5 * 2**20] * 2  # an explicit budget, shared
    # a machine too small for the stores: the budgets shrink to the allowed share of memory
    need = sum(1.05 * d.decoded_mb + 1.0 for d in auto)
    monkeypatch.setattr(pooled, "_memory_mb", lambda: need / (2 * pooled.AUTO_CACHE_FRACTION))
    small = pooled.PooledStores._open_stores([store_dir, store_dir], keys, None)
    total = sum(d.cache_bytes for d in small) / 2**20
    assert total == pytest.approx(need / 2, rel=1e-6)
