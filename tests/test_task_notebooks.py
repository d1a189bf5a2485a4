"""The task notebooks (04 classify, 05 forecast, 06 tokenize) as files.

nbval executes them with their CI-sized defaults (``make test``); these fast
tests check what nbval cannot: they are thin (one typed parameters cell, no
definitions or control flow), their defaults are CI-sized, their targets are
the stated ones, and the outputs nbval compares match the default dataset.
"""

import ast
from pathlib import Path

import nbformat
import pytest

from trajlab import DatasetSpec
from trajlab.notebooks import notebook_parameters

REPO = Path(__file__).resolve().parents[1]
NBS = {"04": REPO / "notebooks" / "04_classify.ipynb",
       "05": REPO / "notebooks" / "05_forecast.ipynb",
       "06": REPO / "notebooks" / "06_tokenize.ipynb"}
#: The targets stated for the three tasks; a notebook may not lower them.
TARGETS = {"04": {"min_accuracy": 0.99, "max_train_minutes": 6.0, "max_frame0": 0.35},
           "05": {"max_mlp_px": 1.0, "min_within_2px": 0.8},
           "06": {"min_within_1px": 0.95, "min_psnr_gain": 10.0, "min_utilisation": 0.25,
                  "min_code_accuracy": 0.95, "max_train_minutes": 15.0}}
FORBIDDEN = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda, ast.For,
             ast.While, ast.If, ast.IfExp, ast.Try, ast.With, ast.ListComp, ast.DictComp,
             ast.SetComp, ast.GeneratorExp)


def _code_cells(path):
    return [c for c in nbformat.read(str(path), as_version=4).cells if c.cell_type == "code"]


@pytest.mark.parametrize("key", sorted(NBS))
def test_notebook_is_thin_with_one_typed_parameters_cell(key):
    cells = _code_cells(NBS[key])
    assert sum("parameters" in c.metadata.get("tags", []) for c in cells) == 1
    params = notebook_parameters(NBS[key])
    assert all(p["type"] is not None and p["help"] for p in params.values())
    for cell in cells:
        # the one allowed branch: the working-directory fix of the imports cell
        src = "\n".join("" if ln.lstrip().startswith(("%", "!")) else ln
                        for ln in cell.source.splitlines())
        tree = ast.parse(src)
        bad = [n for n in ast.walk(tree) if isinstance(n, FORBIDDEN)]
        if "os.chdir" in src:
            assert len(bad) == 1 and isinstance(bad[0], ast.If)
        else:
            assert not bad, cell.source
        if cell.outputs:
            assert cell.source.startswith("# NBVAL_CHECK_OUTPUT")


@pytest.mark.parametrize("key", sorted(NBS))
def test_targets_are_the_stated_ones_and_not_enforced_by_default(key):
    params = {k: v["default"] for k, v in notebook_parameters(NBS[key]).items()}
    for name, value in TARGETS[key].items():
        assert params[name] == value, name
    assert params["enforce_targets"] is False


@pytest.mark.parametrize("key", sorted(NBS))
def test_defaults_are_ci_sized_and_checked_outputs_match_the_default_dataset(key):
    d = {k: v["default"] for k, v in notebook_parameters(NBS[key]).items()}
    assert d["n_samples"] <= 200 and d["image_size"] <= 32
    assert d["run_dir"].startswith("data/nb_")
    steps = [v for k, v in d.items() if k.endswith("steps")]
    assert steps and max(steps) <= 200
    spec = DatasetSpec(n_samples=d["n_samples"], n_frames=d["n_frames"],
                       image_size=d["image_size"], seed=d["seed"], **d["spec_options"])
    stored = ["".join(o.get("text", "") for o in c.outputs) for c in _code_cells(NBS[key])
              if c.outputs]
    assert len(stored) == 1
    assert stored[0].startswith(f"fingerprint: {spec.fingerprint}\n")


def test_the_tokenizer_notebook_uses_frames_magvit_trainers_take():
    d = {k: v["default"] for k, v in notebook_parameters(NBS["06"]).items()}
    assert d["n_frames"] == 17 and d["image_size"] == 32
    assert d["codebook_size"] & (d["codebook_size"] - 1) == 0
