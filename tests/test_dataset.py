"""open_dataset: annotations verification, pickling, split indices."""

import pickle

import numpy as np
import pytest

from trajlab import DatasetSpec, RunDirError, generate, make_trajectories, open_dataset

from _util import (FORMATS, damage_sample, layout_of, read_annotation_text, rewrite_params,
                   write_annotation_text)


@pytest.fixture(params=FORMATS, ids=lambda f: f"format{f}")
def run(tmp_path, request):
    spec = DatasetSpec(n_samples=40, n_frames=8, image_size=16, seed=5)
    generate(spec, tmp_path / "run", n_jobs=1, shard_size=10, progress="none",
             format_version=request.param)
    return tmp_path / "run", spec


def test_annotations_match_generator_and_are_verified(run):
    rd, spec = run
    _, _, ann = make_trajectories(40, spec=spec, return_annotations=True)
    ds = open_dataset(rd)
    assert list(ds.annotations()) == ann["records"]
    if layout_of(rd).annotations == "jsonl":
        text = read_annotation_text(rd, 2)
        write_annotation_text(rd, 2, text.replace('"split": "train"', '"split": "test"', 1))
    else:       # the records are made from the parameters: one of them changed
        damage_sample(rd, "params", 25, byte=0)
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
    with pytest.raises(IndexError, match=r"The .i. parameter of TrajectoryData.annotation must be "
                                         r"an int in the range \[-40, 39\]\. Got 40 instead"):
        ds.annotation(40)


# ------------------------------------------------------------------
# verify succeeds exactly when loading every sample and annotation would
# succeed and return the recorded bytes.
import json  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402

from trajlab import verify_run  # noqa: E402

from _util import damage_sample, layout_of, run_cli, tree_digest  # noqa: E402

PSPEC = DatasetSpec(n_samples=24, n_frames=4, image_size=16, seed=9)


@pytest.fixture(scope="module", params=FORMATS, ids=lambda f: f"format{f}")
def pristine(tmp_path_factory, request):
    rd = tmp_path_factory.mktemp("pristine") / "run"
    generate(PSPEC, rd, n_jobs=1, shard_size=8, progress="none", format_version=request.param)
    videos, labels, ann = make_trajectories(PSPEC.n_samples, spec=PSPEC, return_annotations=True)
    manifest = json.loads((rd / "manifest.json").read_text())
    return {"dir": rd, "videos": videos, "labels": labels, "ann": ann, "manifest": manifest,
            "digest": tree_digest(rd)}


@pytest.fixture()
def copy(tmp_path, pristine):
    rd = tmp_path / "run"
    shutil.copytree(pristine["dir"], rd, symlinks=True)
    return rd


def _flip(path, where):
    data = bytearray(path.read_bytes())
    k = {"first": 0, "middle": len(data) // 2, "last": len(data) - 1}[where]
    data[k] ^= 0x5A
    path.write_bytes(bytes(data))


def _npy_header(path, edit):
    data = path.read_bytes()
    hlen = data.index(b"\n") + 1
    head = data[:hlen].decode("latin1")
    new = edit(head).encode("latin1")
    new = new[:-1].ljust(hlen - 1) + b"\n" if len(new) <= hlen else new
    path.write_bytes(new + data[hlen:])


def _json_number(path, replace):
    text = path.read_text()
    m = re.search(r'(?<=": )\d+(?=[,\n])', text)
    if m is None:
        return False
    path.write_text(text[:m.start()] + replace(m.group()) + text[m.end():])
    return True


def _symlink_copy(path, tmp):
    target = tmp / ("outside-" + path.name)
    if path.is_dir():
        shutil.copytree(path, target)
        shutil.rmtree(path)
    else:
        shutil.copy2(path, target)
        path.unlink()
    os.symlink(target, path)


CORRUPTIONS = {
    "flip first byte": lambda p, t: _flip(p, "first"),
    "flip middle byte": lambda p, t: _flip(p, "middle"),
    "flip last byte": lambda p, t: _flip(p, "last"),
    "truncate one byte": lambda p, t: os.truncate(p, p.stat().st_size - 1),
    "empty": lambda p, t: os.truncate(p, 0),
    "append a byte": lambda p, t: p.write_bytes(p.read_bytes() + b"\x00"),
    "delete": lambda p, t: p.unlink(),
    "symlink to an identical copy": _symlink_copy,
    "fortran_order": lambda p, t: _npy_header(p, lambda h: h.replace("False", "True")),
    "npy version 2.0": lambda p, t: p.write_bytes(p.read_bytes()[:6] + b"\x02\x00"
                                                   + p.read_bytes()[8:]),
    "big-endian dtype": lambda p, t: _npy_header(p, lambda h: h.replace("'<", "'>")),
    "shape + 1": lambda p, t: _npy_header(p, lambda h: re.sub(r"\((\d+)", lambda m: "(" + str(
        int(m.group(1)) + 1), h, count=1)),
    "invalid JSON": lambda p, t: p.write_text("{" + p.read_text()),
    "number + 1": lambda p, t: _json_number(p, lambda s: str(int(s) + 1)),
    "number as true": lambda p, t: _json_number(p, lambda s: "true"),
    "number as float": lambda p, t: _json_number(p, lambda s: s + ".5"),
}
DIR_CORRUPTIONS = {"delete": lambda p, t: shutil.rmtree(p),
                   "symlink to an identical copy": _symlink_copy}


def _cases(rd):
    for path in sorted(rd.rglob("*")):
        rel = path.relative_to(rd).as_posix()
        if path.is_dir():
            for kind in DIR_CORRUPTIONS:
                yield rel, kind
            continue
        for kind in CORRUPTIONS:
            if kind in ("fortran_order", "npy version 2.0", "big-endian dtype", "shape + 1") \
                    and not rel.endswith(".npy"):
                continue
            if kind.startswith(("invalid JSON", "number")) and not rel.endswith(".json"):
                continue
            yield rel, kind


def _load_everything(rd, pristine, verify="lazy"):
    """True if loading every sample and annotation succeeds and returns the
    recorded data; False if it raises RunDirError; a string if it returns
    anything else."""
    try:
        ds = open_dataset(rd, verify=verify)
        recs = pristine["ann"]["records"]
        for i in range(len(ds)):
            s = ds.sample(i)
            if not np.array_equal(ds.video(i), pristine["videos"][i]) \
                    or not np.array_equal(s["videos"], pristine["videos"][i]) \
                    or ds.label(i) != pristine["labels"][i] \
                    or not np.array_equal(s["pixels"], pristine["ann"]["pixels"][i]):
                return f"sample {i} differs"
            if ds.annotation(i) != recs[i]:
                return f"annotation {i} differs"
        if list(ds.annotations()) != recs:
            return "annotations differ"
        got = {k: v for k, v in ds.manifest.items() if k != "finished_at"}
        if got != {k: v for k, v in pristine["manifest"].items() if k != "finished_at"}:
            return "manifest differs"
        return True
    except RunDirError:
        return False


def _corrupt(rd, rel, kind, tmp):
    path = rd / rel
    table = DIR_CORRUPTIONS if path.is_dir() else CORRUPTIONS
    return table[kind](path, tmp) is not False


def test_verify_agrees_with_loading_for_every_corruption_of_every_file(pristine, tmp_path):
    cases = list(_cases(pristine["dir"]))
    assert len(cases) > 150
    disagree, wrong, tried = [], [], 0
    for k, (rel, kind) in enumerate(cases):
        work = tmp_path / f"c{k}"
        rd = work / "run"
        shutil.copytree(pristine["dir"], rd, symlinks=True)
        if not _corrupt(rd, rel, kind, work):
            continue
        tried += 1
        ok = verify_run(rd)["ok"]
        loaded = _load_everything(rd, pristine)
        full = _load_everything(rd, pristine, verify="full")
        if loaded not in (True, False) or full not in (True, False):
            wrong.append((rel, kind, loaded, full))
        elif not ok == loaded == full:
            disagree.append((rel, kind, f"verify ok={ok}, load ok={loaded}, full ok={full}"))
        shutil.rmtree(work)
    assert wrong == [], "loading returned data that is not the recorded data"
    assert disagree == []
    assert tried > 150


@pytest.mark.slow
def test_generate_verify_repairs_every_repairable_corruption(pristine, tmp_path):
    """generate(verify=True) rebuilds whatever is derivable and says so;
    spec.json (the definition of the dataset) and symlinks are refused,
    leaving every file as it was."""
    from _util import snapshot

    not_repaired = []
    for k, (rel, kind) in enumerate(_cases(pristine["dir"])):
        work = tmp_path / f"c{k}"
        rd = work / "run"
        shutil.copytree(pristine["dir"], rd, symlinks=True)
        if not _corrupt(rd, rel, kind, work):
            continue
        was_ok = verify_run(rd)["ok"]
        refused = rel == "spec.json" and not was_ok or kind == "symlink to an identical copy"
        before = snapshot(work)
        try:
            res = generate(PSPEC, rd, n_jobs=1, progress="none", verify=True)
        except (RunDirError, ValueError):        # not a (usable) run dir: refused
            if not refused:
                not_repaired.append((rel, kind, "refused"))
            elif snapshot(work) != before:
                not_repaired.append((rel, kind, "refused but changed files"))
            shutil.rmtree(work)
            continue
        if refused:
            not_repaired.append((rel, kind, "not refused"))
        elif not verify_run(rd)["ok"] or _load_everything(rd, pristine) is not True:
            not_repaired.append((rel, kind, "still broken"))
        elif {k: v for k, v in tree_digest(rd).items()} != pristine["digest"]:
            not_repaired.append((rel, kind, "bytes differ"))
        elif not was_ok and not res.repaired and res.shards_generated == 0:
            not_repaired.append((rel, kind, "repaired silently"))
        shutil.rmtree(work)
    assert not_repaired == [], "\n".join(map(str, not_repaired))


def test_negative_shard_size_is_not_ok(copy):
    """'layout.shard_size: -1' gave "OK - -4000 shards" even with a flipped byte."""
    damage_sample(copy, "videos", 12, how="raw")
    doc = json.loads((copy / "spec.json").read_text())
    doc["layout"]["shard_size"] = -1
    (copy / "spec.json").write_text(json.dumps(doc))
    proc = run_cli("verify", copy)
    assert proc.returncode == 1 and "OK" not in proc.stdout
    assert "The 'layout.shard_size' parameter of spec.json" in proc.stdout
    assert not verify_run(copy)["ok"]


def _reorder_videos(copy):
    """Format 1: a Fortran-order header; format 2: a zarr.json whose clips
    are stored transposed (a valid zarr v3 codec list, not trajlab's)."""
    if layout_of(copy).format_version == 1:
        _npy_header(copy / "videos.npy", lambda h: h.replace("False", "True"))
        return r"videos.npy.*header.*fortran_order", "videos.npy: header rewritten"
    path = copy / "data" / "videos" / "zarr.json"
    doc = json.loads(path.read_text())
    inner = doc["codecs"][0]["configuration"]["codecs"]
    inner.insert(0, {"name": "transpose", "configuration": {"order": [0, 1, 2, 4, 3]}})
    path.write_text(json.dumps(doc))
    return (r"data/videos/zarr.json.*metadata trajlab writes.*differs at codecs",
            "data/videos/zarr.json: rewritten")


@pytest.mark.parametrize("mode", ["lazy", "full", "none"])
def test_fortran_order_header_is_refused_in_every_mode(copy, pristine, mode):
    refused, repaired = _reorder_videos(copy)
    assert not verify_run(copy)["ok"]
    with pytest.raises(RunDirError, match=refused):
        open_dataset(copy, verify=mode)
    proc = run_cli("generate", copy, "--verify")
    assert proc.returncode == 0 and repaired in proc.stdout, proc.stdout
    assert _load_everything(copy, pristine) is True


@pytest.mark.parametrize("damage", ["fingerprint", "invalid JSON", "class_counts"])
def test_damaged_manifest_fails_verify_and_is_rebuilt_by_repair(copy, pristine, damage):
    path = copy / "manifest.json"
    if damage == "invalid JSON":
        path.write_text(path.read_text()[:-5])
    else:
        m = json.loads(path.read_text())
        if damage == "fingerprint":
            m["fingerprint"] = "0123456789abcdef"
        else:
            m["class_counts"]["linear"] += 1
        path.write_text(json.dumps(m))
    proc = run_cli("verify", copy)
    assert proc.returncode == 1 and "manifest.json" in proc.stdout
    with pytest.raises(RunDirError, match="manifest.json"):
        _load_everything(copy, pristine) or open_dataset(copy, verify="full")
    proc = run_cli("verify", copy, "--repair")
    assert proc.returncode == 0 and "Repaired: manifest.json: rebuilt" in proc.stdout, proc.stdout
    assert run_cli("verify", copy).returncode == 0
    assert _load_everything(copy, pristine) is True


def test_full_verification_checks_annotations(copy):
    if layout_of(copy).annotations == "jsonl":
        text = read_annotation_text(copy, 1)
        write_annotation_text(copy, 1, text.replace('"split": "train"', '"split": "test"', 1))
        where = "annotations"
    else:
        damage_sample(copy, "params", 9, byte=3)
        where = "checksum mismatch in data/params"
    with pytest.raises(RunDirError, match=where):
        open_dataset(copy, verify="full")


def test_malformed_annotations_raise_run_dir_error_even_unverified(copy):
    if layout_of(copy).annotations == "jsonl":
        lines = read_annotation_text(copy, 1).splitlines(keepends=True)
        write_annotation_text(copy, 1, "".join(lines[:1] + ["{oops\n"] + lines[2:]))
        where = r"annotations/00001.jsonl.*line 2"
    else:     # a used parameter that is not finite: not what trajlab writes
        rewrite_params(copy, 1, lambda rows: rows.__setitem__((1, 0), np.nan))
        where = r"parameters of shard 1 .*sample 9 has parameters that are not finite"
    ds = open_dataset(copy, verify="none")
    with pytest.raises(RunDirError, match=where):
        ds.annotation(9)
    assert ds.annotation(17)["index"] == 17          # other shards still readable


def test_params_in_a_column_their_class_does_not_use_are_refused(copy):
    if layout_of(copy).annotations == "jsonl":
        pytest.skip("the run dir keeps JSON lines")
    ds = open_dataset(copy, verify="none")
    k = next(i for i in range(8, 16) if ds.annotation(i)["class"] == "linear")
    for value in (0.25, np.inf):       # linear uses columns 0..5; the rest are NaN
        rewrite_params(copy, 1, lambda rows: rows.__setitem__((k - 8, 6), value))
        ds = open_dataset(copy, verify="none")
        with pytest.raises(RunDirError, match=f"sample {k} has parameters .* other than NaN "
                                              "in columns its class does not use"):
            ds.annotation(k)


# ------------------------------------------------------------ bad arguments
@pytest.mark.parametrize("i,exc", [(1.7, TypeError), ("3", TypeError), (True, TypeError),
                                   (np.float64(2.0), TypeError), (24, IndexError)])
def test_sample_index_must_be_an_int(pristine, i, exc):
    ds = open_dataset(pristine["dir"])
    for method in (ds.video, ds.label, ds.sample, ds.annotation):
        with pytest.raises(exc, match=r"The 'i' parameter of TrajectoryData\.\w+ must be an int "
                                      r"in the range \[-24, 23\]\. Got .* instead"):
            method(i)
    assert ds.label(np.int64(3)) == pristine["labels"][3]


@pytest.mark.parametrize("arg", [123, None, b"x"])
def test_run_dir_argument_type(arg):
    with pytest.raises(TypeError, match=r"The 'run_dir' parameter of open_dataset must be a path "
                                        r"\(str or os.PathLike\)\. Got .* instead"):
        open_dataset(arg)
    with pytest.raises(TypeError, match=r"The 'run_dir' parameter of verify_run must be a path"):
        verify_run(arg)


def test_crafted_npy_header_gives_the_template(copy):
    if layout_of(copy).format_version == 1:
        _npy_header(copy / "labels.npy", lambda h: h.replace("'descr'", "'evil'"))
        with pytest.raises(RunDirError, match=r"The 'labels.npy' file of run directory .* must "
                                              r"have the header .*Got .* instead"):
            open_dataset(copy)
        return
    path = copy / "data" / "labels" / "zarr.json"
    doc = json.loads(path.read_text())
    doc["shape"] = [10**15]                  # a reader that trusted it would allocate 8 PB
    doc["data_type"] = {"name": "evil"}
    path.write_text(json.dumps(doc))
    with pytest.raises(RunDirError, match=r"The 'data/labels/zarr.json' document of run "
                                          r"directory .* must be the zarr v3 metadata trajlab "
                                          r"writes .*differs at data_type, shape.0: got "):
        open_dataset(copy)


def test_data_not_made_from_this_spec_json_is_refused(copy, pristine):
    """spec.json records a hash of the first samples as generated; stored
    samples that hash otherwise were not made from it."""
    doc = json.loads((copy / "spec.json").read_text())
    doc["probe_sha256"] = "ab" * 32
    (copy / "spec.json").write_text(json.dumps(doc))
    rep = verify_run(copy)
    assert not rep["ok"] and any("probe_sha256" in r for _, _, r in rep["bad"])
    assert _load_everything(copy, pristine) is False
    ds = open_dataset(copy)
    assert np.array_equal(ds.video(20), pristine["videos"][20])    # shard 2 is fine ...
    with pytest.raises(RunDirError, match="probe_sha256"):
        ds.video(3)                                                # ... shard 0 is not


@pytest.mark.parametrize("name,value", [("labels", 9), ("labels", -1), ("labels", 2 ** 40),
                                        ("splits", 7)])
def test_a_label_or_split_out_of_range_is_refused_even_unverified(copy, name, value):
    """A shard whose labels (or splits) hold a value that names no class (or
    split), stored well-formed: unchecked reads (verify='none') must not
    index by it (an IndexError, or classes[-1] for -1) but name the sample,
    the value and the shard; checked reads catch it by the checksum."""
    from trajlab.storage import RunDirError as StorageError
    from trajlab.torchdata import TrajectoryVideoDataset

    layout = layout_of(copy)
    sample = 9                                           # shard 1 of 8-sample shards
    dtype = layout.arrays()[name][2]
    if np.iinfo(dtype).max < value:
        value = np.iinfo(dtype).max                      # as large as it can hold
    if layout.format_version == 1:
        arr = np.load(copy / layout.arrays()[name][0], mmap_mode="r+", allow_pickle=False)
        arr[sample] = value
        arr.flush()
        del arr
    else:
        from trajlab import zstore

        rows = zstore.read_shard(str(copy), layout, name, 1).copy()
        rows[sample - 8] = value
        with open(zstore.object_path(str(copy), layout, name, 1), "wb") as fh:
            fh.write(zstore.encode(layout, name, rows))
    ds = open_dataset(copy, verify="none")
    where = rf"Sample 9 of .* holds {name} {int(np.asarray(value, dtype))}, out of range " \
            r"\(0\.\.\d\): shard 1 is damaged"
    with pytest.raises(StorageError, match=where):
        ds.sample(sample)
    if name == "labels":
        with pytest.raises(StorageError, match=where):
            ds.label(sample)
        with pytest.raises(StorageError, match=where):
            TrajectoryVideoDataset(str(copy), split=None, verify="none")[sample]
    assert ds.sample(sample - 1)["index"] == sample - 1      # its neighbours still read
    with pytest.raises(RunDirError, match="shard 1|Shard 1"):
        open_dataset(copy).sample(sample)
