"""What new run dirs write differently from earlier ones, and the earlier
ones still read, verify and resume as they were written: the completion
records' checksums (xxh3_128 now, sha256 where spec.json has no
``layout.checksum``) and format 2's zstd level (-1 now, 1 before)."""

import hashlib
import json
import os
import re
import shutil

import numpy as np
import pytest
import xxhash

import trajlab
from trajlab import DatasetSpec, RunDirError, generate, open_dataset, verify_run
from trajlab import storage, zstore
from trajlab.storage import check_record, load_layout, open_array

from _util import damage_sample, tree_digest

SPEC = DatasetSpec(n_samples=40, n_frames=4, image_size=16, seed=5)


def _decoded(rd):
    """sha256 of every decoded array and of the annotation text."""
    layout = load_layout(str(rd))[1]
    out = {name: hashlib.sha256(np.ascontiguousarray(open_array(str(rd), layout, name)[:])
                                .tobytes()).hexdigest() for name in layout.arrays()
           if name != "params"}
    # the annotation records, whether stored as text or made from parameters
    out["annotations"] = hashlib.sha256(json.dumps(
        list(open_dataset(rd).annotations()), sort_keys=True).encode()).hexdigest()
    return out


def _records(rd):
    return [json.loads((rd / "shards" / f).read_text())
            for f in sorted(os.listdir(rd / "shards"))]


@pytest.fixture(scope="module", params=[1, 2], ids=["format1", "format2"])
def pair(request, tmp_path_factory):
    """(new run dir, old-style sha256 run dir) of the same spec and format."""
    root = tmp_path_factory.mktemp(f"sums{request.param}")
    new, old = root / "new", root / "old"
    generate(SPEC, new, n_jobs=1, shard_size=8, progress="none",
             format_version=request.param)
    mp = pytest.MonkeyPatch()
    mp.setattr(storage, "CHECKSUM", "sha256")     # what trajlab wrote before xxh3_128
    mp.setattr(zstore, "CODEC", "zstd-1")          # and before zstd level -1
    mp.setattr(storage, "ANNOTATIONS", "jsonl")    # and before the parameter matrix
    try:
        generate(SPEC, old, n_jobs=1, shard_size=8, progress="none",
                 format_version=request.param)
    finally:
        mp.undo()
    return new, old


#: The manifest digest of SPEC (shard_size 8) that trajlab wrote before
#: xxh3_128 (commit 0e3c5e4, both formats): with sha256 records, today's
#: code must give it again, so no byte of any array or annotation changed.
DIGEST_BEFORE = "681a1a11aa17827e9a3ca95fac5a085d44a604eaeba57e430f7b23a70e609f7d"


def test_the_old_checksum_reproduces_the_old_manifest_digest(pair):
    _new, old = pair
    assert json.loads((old / "manifest.json").read_text())["digest"] == DIGEST_BEFORE


def test_new_run_dirs_record_the_xxh3_128_of_the_decoded_bytes(pair):
    new, _old = pair
    layout = load_layout(str(new))[1]
    assert layout.checksum == "xxh3_128"
    assert json.loads((new / "spec.json").read_text())["layout"]["checksum"] == "xxh3_128"
    ds = open_dataset(new)
    for rec in _records(new):
        assert "sha256" not in rec
        a, b = rec["start"], rec["stop"]
        sums = rec["xxh3_128"]
        # the checksum is of the decoded content, computed here by the library itself
        assert sums["videos"] == xxhash.xxh3_128_hexdigest(
            np.ascontiguousarray(ds.videos[a:b]).tobytes())
        assert sums["positions"] == xxhash.xxh3_128_hexdigest(
            np.ascontiguousarray(ds.positions[a:b]).tobytes())
        assert all(len(x) == 32 for x in sums.values())


def test_old_sha256_run_dirs_keep_their_spec_json_and_verify(pair):
    new, old = pair
    doc = json.loads((old / "spec.json").read_text())
    assert "checksum" not in doc["layout"]           # byte for byte the old layout
    assert load_layout(str(old))[1].checksum == "sha256"
    ds = open_dataset(old)
    for rec in _records(old):
        assert "xxh3_128" not in rec
        a, b = rec["start"], rec["stop"]
        assert rec["sha256"]["videos"] == hashlib.sha256(
            np.ascontiguousarray(ds.videos[a:b]).tobytes()).hexdigest()
    assert verify_run(str(old))["ok"]
    # the data itself does not depend on the checksum (nor on the zstd level)
    assert _decoded(old) == _decoded(new)
    np.testing.assert_array_equal(open_dataset(new).video(17), ds.video(17))


@pytest.mark.parametrize("which", ["new", "old"])
def test_a_flipped_decoded_byte_is_found_with_either_checksum(pair, which, tmp_path):
    rd = tmp_path / "rd"
    shutil.copytree(pair[0] if which == "new" else pair[1], rd)
    damage_sample(str(rd), "videos", 13, how="content")
    report = verify_run(str(rd))
    assert not report["ok"]
    assert "checksum mismatch" in str(report["bad"])
    with pytest.raises(RunDirError, match="(?i)checksum"):
        open_dataset(rd).video(13)


def test_an_old_run_dir_resumes_with_sha256(pair, tmp_path):
    rd = tmp_path / "rd"
    shutil.copytree(pair[1], rd)
    os.remove(rd / "manifest.json")
    os.remove(rd / "shards" / "00002.json")          # shard 2 to redo
    res = generate(SPEC, rd, n_jobs=1, progress="none")
    assert res.shards_generated == 1
    redone = json.loads((rd / "shards" / "00002.json").read_text())
    assert set(redone) & {"sha256", "xxh3_128"} == {"sha256"}
    assert tree_digest(rd) == tree_digest(pair[1])     # stored bytes too, level 1 kept
    assert verify_run(str(rd))["ok"]


@pytest.mark.parametrize("edit,match", [
    (lambda r: r.__setitem__("xxh3_128", {k: v[:31] for k, v in r["xxh3_128"].items()}),
     "not 32 hex digits"),
    (lambda r: r.__setitem__("sha256", r.pop("xxh3_128")), "xxh3_128 does not list"),
])
def test_a_damaged_record_checksum_is_refused(pair, tmp_path, edit, match):
    rd = tmp_path / "rd"
    shutil.copytree(pair[0], rd)
    path = rd / "shards" / "00001.json"
    rec = json.loads(path.read_text())
    layout = load_layout(str(rd))[1]
    assert check_record(rec, layout, 1) is None
    edit(rec)
    assert match in check_record(rec, layout, 1)
    path.write_text(json.dumps(rec))
    report = verify_run(str(rd))
    assert not report["ok"]
    assert [b[:2] for b in report["bad"]] == [(1, "record")]


def _chunk_codecs(rd):
    """The codec list of a chunk (a clip of videos, a shard of the others)
    that the zarr.json of every array names, as a set of JSON texts."""
    out = set()
    for name in os.listdir(rd / "data"):
        if (rd / "data" / name).is_dir():
            doc = json.loads((rd / "data" / name / "zarr.json").read_text())
            codecs = doc["codecs"]
            if codecs[0]["name"] == "sharding_indexed":
                codecs = codecs[0]["configuration"]["codecs"]
            out.add(json.dumps([c for c in codecs if c["name"] != "bytes"], sort_keys=True))
    return out


def _zstd(level, checksum):
    return {"name": "zstd", "configuration": {"level": level, "checksum": checksum}}


#: what each codec trajlab has written puts after ``bytes`` in a chunk
CHUNK_CODECS = {
    "zstd-fast1-crc32c": [_zstd(-1, False), {"name": "crc32c"}],   # today's
    "zstd-fast1": [_zstd(-1, True)],                              # before crc32c
    "zstd-1": [_zstd(1, True)],                                   # before level -1
}


def test_new_format2_run_dirs_use_the_crc32c_codec(pair):
    new, _old = pair
    if load_layout(str(new))[1].format_version != 2:
        pytest.skip("format 1 stores raw .npy")
    assert zstore.CODEC == "zstd-fast1-crc32c"
    assert json.loads((new / "spec.json").read_text())["layout"]["codec"] == zstore.CODEC
    assert json.loads((new / "manifest.json").read_text())["codec"] == zstore.CODEC
    assert _chunk_codecs(new) == {json.dumps(CHUNK_CODECS[zstore.CODEC], sort_keys=True)}
    # every stored clip is a zstd frame without zstd's checksum, then its crc32c
    import google_crc32c
    import zstandard

    layout = load_layout(str(new))[1]
    raw = (new / "data" / "videos" / "c.0.0.0.0.0").read_bytes()
    off, ln = zstore.parse_index(raw[-(layout.shard_size * 16 + 4):], layout, 0, len(raw), "v")
    for o, n in zip(off, ln):
        chunk = raw[o:o + n]
        assert int.from_bytes(chunk[-4:], "little") == google_crc32c.value(chunk[:-4])
        params = zstandard.get_frame_parameters(chunk[:-4])
        assert not params.has_checksum and params.content_size == layout.arrays()["videos"][4]


@pytest.mark.parametrize("codec", ["zstd-fast1", "zstd-1"])
def test_run_dirs_of_earlier_codecs_read_verify_and_resume_with_their_own(codec, tmp_path):
    """A run dir keeps the codec it was made with: zarr-python and trajlab
    read it as today's, and a redone shard is written in it, byte for byte."""
    import zarr

    today = tmp_path / "today"
    generate(SPEC, today, n_jobs=1, shard_size=8, progress="none")
    rd = tmp_path / codec
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(zstore, "CODEC", codec)
        generate(SPEC, rd, n_jobs=1, shard_size=8, progress="none")
    assert json.loads((rd / "spec.json").read_text())["layout"]["codec"] == codec
    assert json.loads((rd / "manifest.json").read_text())["codec"] == codec
    assert _chunk_codecs(rd) == {json.dumps(CHUNK_CODECS[codec], sort_keys=True)}
    assert (json.loads((rd / "manifest.json").read_text())["digest"]
            == json.loads((today / "manifest.json").read_text())["digest"])
    ds, ref = open_dataset(rd), open_dataset(today)
    for name in ("videos", "labels", "positions", "params"):
        np.testing.assert_array_equal(getattr(ds, name)[:], getattr(ref, name)[:])
        z = zarr.open_group(str(rd / "data"), mode="r")
        np.testing.assert_array_equal(z[name][:], getattr(ref, name)[:])
    assert np.array_equal(ds.videos[5], ref.videos[5])          # one clip, ranged
    victim = rd / "data" / "videos" / "c.1.0.0.0.0"
    before = victim.read_bytes()
    os.remove(rd / "manifest.json")
    os.remove(rd / "shards" / "00001.json")
    victim.unlink()
    generate(SPEC, rd, n_jobs=1, progress="none")
    assert victim.read_bytes() == before
    assert verify_run(str(rd))["ok"]
    # its checks still catch a flipped byte of a clip
    raw = bytearray(before)
    raw[10] ^= 0xFF
    victim.write_bytes(bytes(raw))
    report = verify_run(str(rd))
    assert not report["ok"] and [b[0] for b in report["bad"]] == [1]


@pytest.mark.parametrize("key,value,choices", [
    ("checksum", "md5", r"\['sha256', 'xxh3_128'\]"),
    ("checksum", ["xxh3_128"], r"\['sha256', 'xxh3_128'\]"),     # unhashable: no TypeError
    ("codec", "zstd-3", r"\['zstd-1', 'zstd-fast1', 'zstd-fast1-crc32c'\]"),
    ("codec", {"zstd-1": 1}, r"\['zstd-1', 'zstd-fast1', 'zstd-fast1-crc32c'\]"),
])
def test_an_unknown_checksum_or_codec_in_spec_json_is_refused_untouched(pair, tmp_path, key,
                                                                         value, choices):
    if key == "codec" and load_layout(str(pair[0]))[1].format_version != 2:
        pytest.skip("format 1 has no codec")
    rd = tmp_path / "rd"
    shutil.copytree(pair[0], rd)
    doc = json.loads((rd / "spec.json").read_text())
    doc["layout"][key] = value
    (rd / "spec.json").write_text(json.dumps(doc))
    with pytest.raises(RunDirError, match=rf"'layout.{key}' parameter .* must be one of "
                                          rf"{choices}.*Got {re.escape(repr(value))}"):
        load_layout(str(rd))
    with pytest.raises(RunDirError, match=f"layout.{key}"):
        generate(SPEC, rd, n_jobs=1, progress="none")
    assert json.loads((rd / "spec.json").read_text())["layout"][key] == value
