"""A format-2 dataset read straight from an S3 bucket (moto's server on
127.0.0.1): open_dataset, verify_run, trajlab info/verify and the torch
datasets take an ``s3://bucket/prefix`` run dir and read it with ranged
GETs, with every check they make on a local one.

Generating into a bucket is not supported yet (see docs/STORAGE_V2.md):
these tests upload a dataset generated locally.
"""

from __future__ import annotations

import os
import re

import numpy as np
import pytest

import trajlab
from trajlab import RunDirError, open_dataset, verify_run
from trajlab.objstore import open_store

from _s3 import s3  # noqa: F401
from _util import damage_sample, run_cli, small_run

N, T, S, SHARD = 24, 6, 16, 8


@pytest.fixture(scope="module")
def local(tmp_path_factory):
    return small_run(tmp_path_factory, "s3data", seed=8, n=N, frames=T, size=S, shard=SHARD)


def _upload(local_dir, url):
    store = open_store(url)
    for root, _dirs, files in os.walk(local_dir):
        for f in files:
            if f.startswith(".") or f in ("progress.json", "PROGRESS.txt"):
                continue
            path = os.path.join(root, f)
            with open(path, "rb") as fh:
                store.put(os.path.relpath(path, local_dir), fh.read())
    return url


@pytest.fixture()
def bucket_run(s3, local):  # noqa: F811
    return _upload(local["dir"], s3.new_url("run"))


def test_a_dataset_in_a_bucket_reads_as_the_local_one(bucket_run, local):
    ds = open_dataset(bucket_run, verify="full")
    ref = open_dataset(local["dir"])
    assert ds.manifest == ref.manifest
    for name in ref.arrays:
        np.testing.assert_array_equal(np.asarray(ds.arrays[name]), np.asarray(ref.arrays[name]))
    assert [ds.annotation(i) for i in (0, 9, N - 1)] == \
        [local["ann"]["records"][i] for i in (0, 9, N - 1)]
    np.testing.assert_array_equal(ds.video(13), local["videos"][13])
    assert verify_run(bucket_run + "/")["ok"]


def test_torch_datasets_read_from_the_bucket(bucket_run, local):
    torch = pytest.importorskip("torch")
    from torch.utils.data import DataLoader

    from trajlab.torchdata import TrajectoryVideoDataset

    ds = TrajectoryVideoDataset(bucket_run, split=None, item="video", value_range="uint8")
    assert ds.root == bucket_run
    got = torch.cat(list(DataLoader(ds, batch_size=5, num_workers=2)))
    np.testing.assert_array_equal(got.numpy(), local["videos"])


def test_cli_info_and_verify_on_a_bucket(bucket_run):
    out = run_cli("info", bucket_run, check=True).stdout
    assert f"Run dir:      {bucket_run}" in out and "On disk:" in out
    proc = run_cli("verify", bucket_run)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_a_corrupted_object_in_the_bucket_is_found(s3, local, tmp_path):  # noqa: F811
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(local["dir"], bad)
    damage_sample(bad, "videos", 17)            # shard 2: decodes, other bytes
    url = _upload(bad, s3.new_url("bad"))
    rep = verify_run(url)
    assert not rep["ok"] and [s for s, *_ in rep["bad"]] == [2]
    ds = open_dataset(url)
    ds.video(0)
    with pytest.raises(RunDirError, match=r"Shard 2 of .* corrupted"):
        ds.video(17)


def test_a_missing_object_in_the_bucket_is_a_damaged_shard(bucket_run):
    layout = trajlab.storage.load_layout(bucket_run)[1]
    store = open_store(bucket_run)
    store.delete("data/pixels/c.1.0.0")
    rep = verify_run(bucket_run)
    assert any(s == 1 and re.search(r"data/pixels/c\.1\.0\.0 is missing", r)
               for s, _, r in rep["bad"]), rep["bad"]
    with pytest.raises(RunDirError, match="is missing"):
        open_dataset(bucket_run, verify="none").pixels[SHARD]
    assert layout.n_shards == 3


def test_an_incomplete_dataset_in_the_bucket_is_refused(bucket_run):
    open_store(bucket_run).delete("manifest.json")
    with pytest.raises(RunDirError, match="incomplete"):
        open_dataset(bucket_run)
    with pytest.raises(RunDirError, match="not a trajlab run directory"):
        open_dataset(bucket_run + "-nothing-here")


def test_export_reads_a_bucket_as_a_local_run_dir(bucket_run, local, tmp_path):
    from trajlab.export import export

    a = export(bucket_run, tmp_path / "bucket.npz", split="train")
    b = export(local["dir"], tmp_path / "local.npz", split="train")
    with np.load(a, allow_pickle=False) as za, np.load(b, allow_pickle=False) as zb:
        assert sorted(za.files) == sorted(zb.files) and "videos" in za.files
        for k in zb.files:
            np.testing.assert_array_equal(za[k], zb[k])


def test_an_oversized_object_in_the_bucket_is_refused_unread(bucket_run):
    from trajlab import zstore

    layout = trajlab.storage.load_layout(bucket_run)[1]
    limit = zstore.max_object_bytes(layout, "videos")
    open_store(bucket_run).put("data/videos/c.1.0.0.0.0", b"\0" * (limit + 1))
    ds = open_dataset(bucket_run, verify="none")
    ds.videos[0]
    with pytest.raises(RunDirError, match=rf"c\.1\.0\.0\.0\.0 is larger \({limit + 1} bytes\) "
                                          "than trajlab writes"):
        ds.videos[SHARD]
    assert any(s == 1 for s, *_ in verify_run(bucket_run)["bad"])
