"""open_dataset: annotations verification, pickling, split indices."""

import pickle

import numpy as np
import pytest

from trajlab import DatasetSpec, RunDirError, generate, make_trajectories, open_dataset


@pytest.fixture()
def run(tmp_path):
    spec = DatasetSpec(n_samples=40, n_frames=8, image_size=16, seed=5)
    generate(spec, tmp_path / "run", n_jobs=1, shard_size=10, progress="none")
    return tmp_path / "run", spec


def test_annotations_match_generator_and_are_verified(run):
    rd, spec = run
    _, _, ann = make_trajectories(40, spec=spec, return_annotations=True)
    ds = open_dataset(rd)
    assert list(ds.annotations()) == ann["records"]
    path = rd / "annotations" / "00002.jsonl"
    text = path.read_text()
    path.write_text(text.replace('"split": "train"', '"split": "test"', 1))
    ds = open_dataset(rd)
    assert ds.annotation(5)["index"] == 5                  # other shards still readable
    with pytest.raises(RunDirError, match="annotations are corrupted"):
        ds.annotation(25)
    assert open_dataset(rd, verify="none").annotation(25)["index"] == 25


def test_pickle_does_not_copy_arrays(run):
    rd, _ = run
    ds = open_dataset(rd)
    blob = pickle.dumps(ds)
    assert len(blob) < 1000
    back = pickle.loads(blob)
    np.testing.assert_array_equal(back.videos, ds.videos)
    assert back.annotation(3) == ds.annotation(3)


def test_split_indices_partition_the_dataset(run):
    rd, spec = run
    ds = open_dataset(rd)
    parts = [ds.indices(s) for s in ("train", "val", "test")]
    assert sorted(np.concatenate(parts).tolist()) == list(range(40))
    assert len(parts[0]) == 32
    with pytest.raises(ValueError, match="'split' parameter of TrajectoryData.indices must be one of"):
        ds.indices("dev")


def test_bad_verify_mode_and_missing_dir(tmp_path, run):
    rd, _ = run
    with pytest.raises(ValueError, match="'verify' parameter of open_dataset must be one of"):
        open_dataset(rd, verify="sometimes")
    with pytest.raises(RunDirError, match="does not exist"):
        open_dataset(tmp_path / "nothing")


def test_annotation_index_out_of_range(run):
    rd, _ = run
    ds = open_dataset(rd)
    assert ds.annotation(-1)["index"] == 39
    with pytest.raises(IndexError, match="sample index 40 out of range for 40 samples"):
        ds.annotation(40)
