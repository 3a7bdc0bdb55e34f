"""Streamed batch inference: parts per shard / chunk, atomic parts, resume, merge, CLI."""

from __future__ import annotations

import json
import os
import tracemalloc

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from lensml.data.fits_io import read_cutouts, write_catalog, write_image_fits
from lensml.data.runner import run_simulate
from lensml.data.store import Store, open_store
from lensml.infer import StreamError, merge_parts, model_fingerprint, predict_stream
from lensml.infer import sources as sources_mod
from lensml.train import Normalisation, build_network, load_model, predict, save_model

NAMES = ["amplitude", "width"]


@pytest.fixture(autouse=True)
def _one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _save_model(path, seed):
    net = build_network("toy-cnn", {"in_channels": 1, "out_features": 2, "width": 4}, seed=seed)
    norm = Normalisation(NAMES, [5.5, 0.4], [2.5, 0.12])
    return save_model(
        path,
        net.state_dict(),
        "toy-cnn",
        net.config,
        norm,
        train_config={"input_key": "image"},
        input_shape=[1, 16, 16],
    )


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A 4-shard toy store (64, 64, 64, 8 items; zarr chunks of 16) and two toy models."""
    root = tmp_path_factory.mktemp("infer")
    store = root / "store"
    run_simulate("toy", 200, store, seed=3, shard_size=64, chunk_items=16, progress=False)
    model_a = _save_model(root / "model_a", seed=0)
    model_b = _save_model(root / "model_b", seed=1)
    reference = predict(
        load_model(model_a), open_store(store).dataset(keys=["image"]), batch_size=32
    ).numpy()
    return {"root": root, "store": store, "a": model_a, "b": model_b, "ref": reference}


def _table(path):
    from astropy.table import Table

    return Table.read(path)


def _stat(path):
    st = os.stat(path)
    return st.st_ino, st.st_mtime_ns


def test_store_stream_equals_whole_store_predict(setup, tmp_path):
    out = tmp_path / "run"
    m = predict_stream(setup["a"], setup["store"], out, batch_size=32, columns=["labels"])
    tab = _table(out / "predictions.fits")
    assert tab.colnames == ["index", "amplitude", "width", "labels"]
    np.testing.assert_array_equal(np.asarray(tab["index"]), np.arange(200))
    pred = np.stack([np.asarray(tab[n]) for n in NAMES], axis=1)
    # same batches as lensml.train.predict (shard size 64 = 2 batches): identical numbers
    np.testing.assert_array_equal(pred, setup["ref"])
    truth = open_store(setup["store"]).read_all(keys=["labels"])["labels"]
    np.testing.assert_array_equal(np.asarray(tab["labels"]), truth)
    assert m["complete"] and m["n_parts"] == 4 and m["parts_done"] == [[0, 4]]
    assert m["n_items_done"] == 200 and m["lensml_version"]
    assert m["model"]["fingerprint"] == model_fingerprint(*load_model(setup["a"]))
    assert m["inputs"]["kind"] == "store" and m["inputs"]["seed"] == 3
    assert json.loads((out / "manifest.json").read_text()) == m
    parts = sorted(p.name for p in (out / "parts").iterdir())
    assert parts == [f"part-{k:06d}.fits" for k in range(4)]  # no temporaries left
    assert [len(_table(out / "parts" / p)) for p in parts] == [64, 64, 64, 8]


def test_store_is_read_in_chunk_windows_with_bounded_memory(setup, tmp_path, monkeypatch):
    reads = []
    real = sources_mod._read_window

    def counting(array, start, stop):
        reads.append(stop - start)
        return real(array, start, stop)

    def forbidden(*args, **kwargs):
        raise AssertionError("the whole store or a whole shard was loaded")

    monkeypatch.setattr(sources_mod, "_read_window", counting)
    monkeypatch.setattr(Store, "read_all", forbidden)
    monkeypatch.setattr(Store, "read_shard", forbidden)
    predict_stream(setup["a"], setup["store"], tmp_path / "r1", batch_size=20)
    # windows of whole 16-item chunks >= batch_size: 32 items, never a 64-item shard
    assert max(reads) == 32 and sum(reads) == 200

    # tracemalloc (numpy / zarr buffers): bounded by a window, not by a shard or the store
    big = tmp_path / "big"
    config = {"size": 64}  # 16 KiB per item: 2 shards of 2 MiB, windows of 8 items (128 KiB)
    run_simulate("toy", 256, big, 1, config, shard_size=128, chunk_items=8, progress=False)
    net, info = load_model(setup["a"])
    info.input_shape = None  # toy-cnn pools globally: any stamp size
    predict_stream((net, info), setup["store"], tmp_path / "warm", batch_size=8)  # imports
    tracemalloc.start()
    try:
        predict_stream((net, info), big, tmp_path / "r2", batch_size=8)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    shard_bytes = 128 * 64 * 64 * 4
    assert peak < shard_bytes / 2, peak  # ~4 window copies (compressed, decoded, output)


def test_kill_mid_run_then_resume_skips_done_parts(setup, tmp_path):
    full = tmp_path / "full"
    predict_stream(setup["a"], setup["store"], full, batch_size=32, columns=["flux"])
    out = tmp_path / "run"

    def kill_after_part_1(k, n):
        if k == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        predict_stream(
            setup["a"],
            setup["store"],
            out,
            batch_size=32,
            columns=["flux"],
            on_part=kill_after_part_1,
        )
    m = json.loads((out / "manifest.json").read_text())
    assert m["parts_done"] == [[0, 2]] and not m["complete"] and m["n_items_done"] == 128
    assert not (out / "predictions.fits").exists() and not (out / "parts/part-000002.fits").exists()
    before = {k: _stat(out / f"parts/part-{k:06d}.fits") for k in (0, 1)}
    (out / "parts/.part-000002.fits.tmp-0123abcd").write_bytes(b"half a part")
    with pytest.raises(StreamError, match="already holds a prediction run"):
        predict_stream(setup["a"], setup["store"], out, resume=False, columns=["flux"])

    calls = []
    m = predict_stream(
        setup["a"],
        setup["store"],
        out,
        batch_size=64,
        columns=["flux"],
        on_part=lambda k, n: calls.append((k, n)),
    )
    assert calls == [(2, 64), (3, 8)]  # parts 0 and 1 were not recomputed
    assert {k: _stat(out / f"parts/part-{k:06d}.fits") for k in (0, 1)} == before
    assert not any(".tmp-" in p.name for p in (out / "parts").iterdir())
    assert m["complete"] and m["parts_done"] == [[0, 4]] and m["n_items_done"] == 200
    a, b = _table(out / "predictions.fits"), _table(full / "predictions.fits")
    assert a.colnames == b.colnames
    for c in a.colnames:
        np.testing.assert_allclose(np.asarray(a[c]), np.asarray(b[c]), rtol=1e-6, atol=1e-6)

    # a failure inside a part: no part file for it, the message says how to continue
    calls.clear()
    out2 = tmp_path / "run2"
    real = sources_mod._read_window
    state = {"n": 0}

    def flaky(array, start, stop):
        state["n"] += 1
        if state["n"] == 6:
            raise OSError("disk went away")
        return real(array, start, stop)

    sources_mod._read_window = flaky
    try:
        with pytest.raises(StreamError, match=r"shard-000002.*disk went away.*resume=True"):
            predict_stream(setup["a"], setup["store"], out2, batch_size=32)
    finally:
        sources_mod._read_window = real
    assert sorted(p.name for p in (out2 / "parts").iterdir()) == [
        "part-000000.fits",
        "part-000001.fits",
    ]
    predict_stream(
        setup["a"], setup["store"], out2, batch_size=32, on_part=lambda k, n: calls.append(k)
    )
    assert calls == [2, 3]
    np.testing.assert_array_equal(
        np.asarray(_table(out2 / "predictions.fits")["width"]), setup["ref"][:, 1]
    )


def test_resume_refuses_another_model_inputs_or_options(setup, tmp_path):
    out = tmp_path / "run"
    predict_stream(setup["a"], setup["store"], out, batch_size=64)
    with pytest.raises(StreamError, match=r"different run \(model: .*model_a"):
        predict_stream(setup["b"], setup["store"], out)
    with pytest.raises(StreamError, match=r"different run.*options"):
        predict_stream(setup["a"], setup["store"], out, columns=["flux"])
    other = tmp_path / "other"
    run_simulate("toy", 200, other, seed=4, shard_size=64, chunk_items=16, progress=False)
    with pytest.raises(StreamError, match=r"different run.*inputs.*'seed': 3"):
        predict_stream(setup["a"], other, out)
    # the same run again: nothing recomputed, same manifest
    calls = []
    m = predict_stream(setup["a"], setup["store"], out, on_part=lambda k, n: calls.append(k))
    assert calls == [] and m["complete"]
    # the same model in memory has the same fingerprint
    predict_stream(load_model(setup["a"]), setup["store"], out)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(StreamError, match="not empty"):
        predict_stream(setup["a"], setup["store"], foreign)


@pytest.fixture(scope="module")
def cutouts(setup):
    """The store's first 9 images as FITS files whose names have different lengths."""
    d = setup["root"] / "cutouts"
    d.mkdir()
    images = open_store(setup["store"]).read_shard(0, keys=["image"])["image"][:9, 0]
    paths = []
    for i, img in enumerate(images):
        p = d / f"{'x' * (9 - i)}cut{i}.fits"
        write_image_fits(p, img, pixel_scale=0.2)
        paths.append(p)
    return paths


def test_fits_files_in_chunks(setup, cutouts, tmp_path):
    out = tmp_path / "run"
    m = predict_stream(setup["a"], cutouts, out, chunk=4, batch_size=4)
    assert m["n_parts"] == 3 and m["pixel_scale"] == pytest.approx(0.2)
    assert [len(_table(out / f"parts/part-{k:06d}.fits")) for k in range(3)] == [4, 4, 1]
    tab = _table(out / "predictions.fits")
    assert tab.colnames == ["index", "source", "amplitude", "width"]
    assert list(tab["source"]) == [f"{p}[PRIMARY]" for p in cutouts]  # widths merged
    ref = predict(load_model(setup["a"]), read_cutouts(cutouts).images, batch_size=4).numpy()
    pred = np.stack([np.asarray(tab[n]) for n in NAMES], axis=1)
    np.testing.assert_allclose(pred, ref, rtol=1e-6, atol=1e-6)
    # the same images from the store give the same predictions
    np.testing.assert_allclose(pred, setup["ref"][:9], rtol=1e-5, atol=1e-5)
    # a glob pattern gives the same run (sorted matches: reorder the expectation)
    out2 = tmp_path / "glob"
    predict_stream(setup["a"], str(cutouts[0].parent / "*cut*.fits"), out2, chunk=4)
    g = _table(out2 / "predictions.fits")
    by_source = dict(zip(tab["source"], tab["width"], strict=True))
    np.testing.assert_allclose(
        np.asarray(g["width"]), [by_source[s] for s in g["source"]], rtol=1e-6
    )


def test_fits_pixel_scale_must_agree_between_parts(setup, cutouts, tmp_path):
    odd = tmp_path / "odd.fits"
    write_image_fits(odd, np.zeros((16, 16), np.float32), pixel_scale=0.3)
    with pytest.raises(StreamError, match=r"pixel scale 0\.3 .*differs from 0\.2"):
        predict_stream(setup["a"], [*cutouts[:4], odd], tmp_path / "run", chunk=4)


def test_fits_catalogue_of_paths(setup, cutouts, tmp_path):
    cat = cutouts[0].parent / "catalog.fits"
    ids = np.arange(100, 109)
    names = np.array([p.name for p in cutouts])
    write_catalog(cat, {"id": ids, "path": names, "width": np.ones(9)})
    out = tmp_path / "run"
    m = predict_stream(setup["a"], cat, out, chunk=4, columns=["id"])
    assert m["inputs"]["kind"] == "fits-catalog" and m["n_parts"] == 3
    tab = _table(out / "predictions.fits")
    assert tab.colnames == ["index", "source", "amplitude", "width", "id"]
    np.testing.assert_array_equal(np.asarray(tab["id"]), ids)
    ref = predict(load_model(setup["a"]), read_cutouts(cutouts).images).numpy()
    np.testing.assert_allclose(np.asarray(tab["amplitude"]), ref[:, 0], rtol=1e-6, atol=1e-6)
    with pytest.raises(StreamError, match=r"\['width'\] would appear twice"):
        predict_stream(setup["a"], cat, tmp_path / "clash", columns=["width"])
    bad = tmp_path / "nopaths.fits"
    write_catalog(bad, {"id": ids})
    with pytest.raises(StreamError, match=r"no column of cutout paths.*\['id'\]"):
        predict_stream(setup["a"], bad, tmp_path / "bad")


def test_merge_parts_needs_a_complete_run(setup, tmp_path):
    out = tmp_path / "run"

    def stop(k, n):
        raise RuntimeError("stop")

    with pytest.raises(RuntimeError):
        predict_stream(setup["a"], setup["store"], out, on_part=stop)
    with pytest.raises(StreamError, match="incomplete: 3 of 4 parts missing"):
        merge_parts(out)
    predict_stream(setup["a"], setup["store"], out, merge=False)
    assert not (out / "predictions.fits").exists()
    target = merge_parts(out, tmp_path / "elsewhere" / "all.fits")
    assert len(_table(target)) == 200
    assert json.loads((out / "manifest.json").read_text())["merged"] == str(target.resolve())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"batch_size": 0}, "batch_size must be an integer >= 1"),
        ({"chunk": 0}, "chunk must be an integer >= 1"),
        ({"columns": ["nope"]}, r"no array\(s\) \['nope'\]"),
        ({"columns": ["flux", "flux"]}, "would appear twice"),
        ({"inputs": "{tmp}"}, "not a store"),
        ({"inputs": "{tmp}/*.fits"}, "no file matches"),
        ({"inputs": "{tmp}/missing.fits"}, "does not exist"),
    ],
)
def test_bad_input_is_one_clear_error(setup, tmp_path, kwargs, message):
    kwargs = dict(kwargs)
    inputs = kwargs.pop("inputs", str(setup["store"])).replace("{tmp}", str(tmp_path))
    with pytest.raises(StreamError, match=message):
        predict_stream(setup["a"], inputs, tmp_path / "out", **kwargs)


def test_cli_predict_generic_stream(setup, tmp_path):
    from lensml.cli import app

    runner = CliRunner()
    out = tmp_path / "run"
    args = ["predict", "generic", str(setup["store"]), "--model", str(setup["a"])]
    res = runner.invoke(app, [*args, "--out", str(out), "--stream", "--batch-size", "32"])
    assert res.exit_code == 0, res.output
    assert "200 predictions in 4 parts" in res.output
    tab = _table(out / "predictions.fits")
    np.testing.assert_array_equal(np.asarray(tab["amplitude"]), setup["ref"][:, 0])
    res = runner.invoke(app, [*args, "--out", str(out), "--stream"])
    assert res.exit_code == 1 and "--resume" in res.output and "Traceback" not in res.output
    res = runner.invoke(app, [*args, "--out", str(out), "--stream", "--resume"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, [*args, "--out", str(tmp_path / "p.fits"), "--stream"])
    assert res.exit_code == 1 and "run directory" in res.output
    res = runner.invoke(app, [*args, "--out", str(tmp_path / "p.fits"), "--resume"])
    assert res.exit_code == 1 and "--stream" in res.output
    res = runner.invoke(app, [*args, "--stream", "--chunk", "7", "--dump-config"])
    assert res.exit_code == 0 and "chunk: 7" in res.output and "stream: true" in res.output
