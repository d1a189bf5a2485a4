"""Format-2 run dirs keep the text ground truth as a parameter matrix in the
zarr store (``layout.annotations: "params"``) and make the records on read;
run dirs that keep JSON lines (format 1, earlier format-2 run dirs) read,
verify and resume as they were written."""

import json
import os
import shutil

import numpy as np
import pytest

from trajlab import DatasetSpec, RunDirError, generate, make_trajectories, open_dataset, verify_run
from trajlab import storage
from trajlab.generator import generate_block, n_param_columns, param_columns
from trajlab.trajectories import REGISTRY
from trajlab.storage import load_layout

from _util import tree_digest

SPEC = DatasetSpec(n_samples=48, n_frames=6, image_size=16, seed=21)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """(params run dir, JSON-lines run dir) of SPEC, format 2."""
    root = tmp_path_factory.mktemp("params")
    new, old = root / "new", root / "old"
    generate(SPEC, new, n_jobs=1, shard_size=16, progress="none")
    mp = pytest.MonkeyPatch()
    mp.setattr(storage, "ANNOTATIONS", "jsonl")       # what format 2 wrote before
    try:
        generate(SPEC, old, n_jobs=1, shard_size=16, progress="none")
    finally:
        mp.undo()
    return new, old


def test_records_made_from_parameters_are_the_generated_records(pair):
    new, old = pair
    _v, _l, ann = make_trajectories(SPEC.n_samples, spec=SPEC, return_annotations=True)
    for rd in (new, old):
        assert list(open_dataset(rd).annotations()) == ann["records"]
        assert list(open_dataset(rd, verify="none").annotations()) == ann["records"]
    # the same JSON text, float for float (shortest repr of the same doubles)
    ds = open_dataset(new)
    assert [json.dumps(ds.annotation(i), sort_keys=True) for i in (0, 17, 47)] == \
        [json.dumps(ann["records"][i], sort_keys=True) for i in (0, 17, 47)]


def test_the_layout_says_where_the_parameters_are(pair):
    new, old = pair
    lay_new = json.loads((new / "spec.json").read_text())["layout"]
    lay_old = json.loads((old / "spec.json").read_text())["layout"]
    assert "annotations" not in lay_old and "param_columns" not in lay_old
    assert lay_new["annotations"] == "params"
    cols = lay_new["param_columns"]
    assert cols["linear"] == [["p0", 0, [3]], ["v", 3, [3]]]
    assert cols["circular"][1] == ["radius", 3, []]
    assert lay_new["arrays"]["params"]["shape"] == [48, n_param_columns(SPEC)]
    assert not (new / "annotations").exists() and (old / "annotations").is_dir()
    assert "params" not in lay_old["arrays"] and not (old / "data" / "params").exists()
    rec = json.loads((new / "shards" / "00001.json").read_text())
    assert "annotations" not in rec["xxh3_128"] and "params" in rec["stored_bytes"]


def test_the_column_table_is_immutable_where_it_is_shared():
    """param_columns is cached: what a caller gets cannot change what the
    next run dir writes."""
    cols = param_columns(SPEC)
    assert cols["linear"][0] == ("p0", 0, (3,)) and cols["circular"][1] == ("radius", 3, ())
    with pytest.raises(TypeError):
        cols["linear"][0][2][0] = 7                 # noqa: B018  (a tuple refuses)
    cols["linear"] = ()                             # the dict is the caller's own
    assert param_columns(SPEC)["linear"][0] == ("p0", 0, (3,))


def test_any_zarr_reader_gets_the_parameters(pair):
    zarr = pytest.importorskip("zarr")
    new, _old = pair
    z = zarr.open_group(str(new / "data"), mode="r")
    params, labels = z["params"][:], z["labels"][:]
    cols = z["params"].attrs["columns"]
    assert z["params"].attrs["classes"] == list(SPEC.classes)
    block = generate_block(SPEC, 0, SPEC.n_samples)
    for i in range(SPEC.n_samples):
        name = SPEC.classes[labels[i]]
        used = np.zeros(params.shape[1], dtype=bool)
        for col in cols[name]:
            k = col["shape"][0] if col["shape"] else 1
            value = params[i, col["column"]:col["column"] + k]
            want = np.atleast_1d(block.params[i][col["name"]])
            np.testing.assert_array_equal(value, want)
            used[col["column"]:col["column"] + k] = True
        assert np.isnan(params[i, ~used]).all()


def test_a_redone_shard_keeps_the_run_dirs_own_annotations(pair, tmp_path):
    for rd_src, victim in ((pair[0], "data/params/c.1.0"), (pair[1], "annotations/00001.jsonl.zst")):
        rd = tmp_path / rd_src.name
        shutil.copytree(rd_src, rd)
        before = tree_digest(rd)
        os.remove(rd / "manifest.json")
        os.remove(rd / "shards" / "00001.json")
        os.remove(rd / victim)
        assert generate(SPEC, rd, n_jobs=1, progress="none").shards_generated == 1
        assert (rd / victim).exists()
        assert {k: v for k, v in tree_digest(rd).items() if k != "manifest.json"} == \
            {k: v for k, v in before.items() if k != "manifest.json"}
        assert verify_run(str(rd))["ok"]


@pytest.mark.parametrize("options", [{}, {"radius_mode": "constant", "gravity": 3.7},
                                     {"classes": ("helical", "parabolic"), "n_frames": 20}],
                         ids=str)
def test_the_stored_parameters_reproduce_the_stored_positions(pair, tmp_path, options):
    # the ground truth the matrix holds is exact: each class's positions()
    # of the parameters read back from the store give positions, bit for bit
    options = dict(options)
    spec = DatasetSpec(n_samples=64, n_frames=options.pop("n_frames", 8), image_size=32,
                       seed=4, **options)
    rd = tmp_path / "rd"
    generate(spec, rd, n_jobs=1, shard_size=16, progress="none")
    ds = open_dataset(rd)
    params, labels, positions = (np.asarray(ds.params), np.asarray(ds.labels),
                                 np.asarray(ds.positions))
    for c, (name, cols) in enumerate(param_columns(spec).items()):
        rows = np.flatnonzero(labels == c)
        batch = {key: (params[rows, off:off + shape[0]] if shape else params[rows, off])
                 for key, off, shape in cols}
        np.testing.assert_array_equal(REGISTRY[name].positions(batch, spec.times),
                                      positions[rows], err_msg=name)
    # and the records' params are those numbers, as Python floats
    for i in (0, 9, 63):
        rec = ds.annotation(i)
        cols = param_columns(spec)[rec["class"]]
        flat = [x for key, _o, _s in cols for x in np.atleast_1d(rec["params"][key])]
        np.testing.assert_array_equal(flat, params[i][~np.isnan(params[i])])


def test_block_params_are_the_matrix_as_dicts():
    block = generate_block(SPEC, 0, 12)
    for p, row, label in zip(block.params, block.param_matrix, block.labels):
        for key, off, shape in param_columns(SPEC)[SPEC.classes[label]]:
            if shape:
                assert isinstance(p[key], np.ndarray) and p[key].dtype == np.float64
                np.testing.assert_array_equal(p[key], row[off:off + shape[0]])
            else:
                assert type(p[key]) is float and p[key] == row[off]


@pytest.mark.parametrize("edit,match", [
    (lambda lay: lay.__setitem__("annotations", "csv"),
     r"'layout.annotations' parameter .* must be one of \['jsonl', 'params'\].*Got 'csv'"),
    (lambda lay: lay["param_columns"]["linear"][1].__setitem__(1, 4),
     r"layout.param_columns.linear"),
])
def test_a_damaged_annotations_layout_is_refused_untouched(pair, tmp_path, edit, match):
    rd = tmp_path / "rd"
    shutil.copytree(pair[0], rd)
    doc = json.loads((rd / "spec.json").read_text())
    edit(doc["layout"])
    text = json.dumps(doc)
    (rd / "spec.json").write_text(text)
    with pytest.raises(RunDirError, match=match):
        load_layout(str(rd))
    with pytest.raises(RunDirError, match=match):
        generate(SPEC, rd, n_jobs=1, progress="none")
    assert (rd / "spec.json").read_text() == text


def test_format1_keeps_json_lines(tmp_path):
    generate(SPEC, tmp_path / "f1", n_jobs=1, shard_size=16, progress="none", format_version=1)
    layout = load_layout(str(tmp_path / "f1"))[1]
    assert layout.annotations == "jsonl" and "params" not in layout.arrays()
    assert sorted(os.listdir(tmp_path / "f1" / "annotations")) == \
        ["00000.jsonl", "00001.jsonl", "00002.jsonl"]
    with pytest.raises(ValueError, match="annotations 'params' is not available in format 1"):
        storage.RunLayout(SPEC, 16, 1, annotations="params")


def test_a_users_annotations_entry_in_a_params_run_dir_is_not_trajlabs(pair, tmp_path):
    # params run dirs have no annotations/ folder: a file or a link of that
    # name is the user's, not a trajlab folder replaced by a link
    rd = tmp_path / "rd"
    shutil.copytree(pair[0], rd)
    (rd / "annotations").write_text("my notes\n")
    assert verify_run(str(rd))["ok"]
    os.remove(rd / "annotations")
    os.symlink(tmp_path, rd / "annotations")
    assert open_dataset(rd).annotation(3)["index"] == 3
    assert verify_run(str(rd))["ok"]
    # where the layout keeps JSON lines, the same link is refused
    old = tmp_path / "old"
    shutil.copytree(pair[1], old)
    shutil.rmtree(old / "annotations")
    os.symlink(tmp_path, old / "annotations")
    with pytest.raises(RunDirError, match="symbolic links"):
        open_dataset(old)


def test_the_parameter_array_fills_with_nan(pair):
    zarr = pytest.importorskip("zarr")
    doc = json.loads((pair[0] / "data" / "params" / "zarr.json").read_text())
    assert doc["fill_value"] == "NaN"
    assert np.isnan(zarr.open_array(str(pair[0] / "data" / "params"), mode="r").fill_value)
