"""Compatibility module: the notebook tools under their former name.

The parameters cell is parsed and checked in :mod:`trajlab.notebook_params`,
a run and its ``runs/`` record are made in :mod:`trajlab.notebook_run`, and
``trajlab run`` is :mod:`trajlab.notebook_cli`. This module re-exports their
public names.
"""

from .notebook_cli import cli_run
from .notebook_params import notebook_parameters, parse_value, validate_parameters
from .notebook_run import (RUN_JSON, SUCCESS_FILE, RunResult, git_state, notebook_root,
                           notebook_setup, read_run_status, run_notebook)

__all__ = ["RunResult", "run_notebook", "cli_run", "notebook_parameters",
           "validate_parameters", "parse_value", "notebook_root", "notebook_setup",
           "git_state", "read_run_status", "RUN_JSON", "SUCCESS_FILE"]
