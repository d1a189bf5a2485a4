"""trajlab.checks: the validation report passes on good data in every radius mode."""

import os

import numpy as np
import pytest

import trajlab
from trajlab.checks import validate_dataset


@pytest.fixture(scope="module", params=["perspective", "constant"])
def run(request, tmp_path_factory):
    spec = trajlab.DatasetSpec(n_samples=48, n_frames=9, image_size=24, seed=4,
                               radius_mode=request.param)
    run_dir = tmp_path_factory.mktemp(f"checks-{request.param}") / "run"
    trajlab.generate(spec, run_dir, n_jobs=1, progress="none")
    return str(run_dir), spec


def test_every_check_passes_on_generated_data(run):
    run_dir, spec = run
    report = validate_dataset(run_dir)
    assert report.passed, str(report)
    assert len(report.checks) >= 8
    radius = np.asarray(trajlab.open_dataset(run_dir).radius)
    if spec.radius_mode == "constant":
        assert (radius == radius[:, :1]).all()
    else:
        assert (radius.max(axis=1) > radius.min(axis=1)).all()

