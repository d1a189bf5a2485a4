"""Command line of ``trajlab run NOTEBOOK [-p NAME VALUE ...]``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import notebook_run
from .notebook_params import notebook_parameters, parse_value, validate_parameters

__all__ = ["cli_run"]


def _parser():
    p = argparse.ArgumentParser(
        prog="trajlab run",
        description="Execute a notebook headlessly with papermill into "
                    "runs/<UTC time>_<notebook>_<git sha>/ with a run.json record. "
                    "The kernel's working directory is the repository root (the parent "
                    "of notebooks/), or the notebook's folder elsewhere.")
    p.add_argument("notebook", help="path to the .ipynb to run")
    p.add_argument("-p", "--parameter", nargs=2, action="append", default=[],
                   metavar=("NAME", "VALUE"),
                   help="override a parameter (repeatable); VALUE is parsed like papermill's "
                        "-p (int, float, True/False, None, JSON lists/dicts, else a string)")
    p.add_argument("--runs-dir", default="runs",
                   help="folder for run folders; relative to the notebook's root "
                        "(default: runs)")
    p.add_argument("--kernel", default="python3", help="Jupyter kernel name (default: python3)")
    p.add_argument("--autosave", type=float, default=30.0, metavar="SECONDS",
                   help="save the output notebook this often while running (default: 30)")
    p.add_argument("-q", "--quiet", action="store_true",
                   help="do not stream the notebook's output")
    p.add_argument("--list-parameters", action="store_true",
                   help="print the notebook's parameters and exit")
    return p


def cli_run(argv=None):
    """Command line of ``trajlab run``; returns the process exit status.

    Parameters
    ----------
    argv : list of str, optional
        Arguments after ``run`` (default ``sys.argv[1:]``).

    Returns
    -------
    int
        0 when the notebook ran to the end; 1 when it failed (its run
        folder and ``run.json`` say why); 2 for bad arguments or
        parameters (nothing was run).
    """
    args = _parser().parse_args(sys.argv[1:] if argv is None else list(argv))
    nb = Path(args.notebook)
    try:
        if nb.suffix != ".ipynb" or not nb.is_file():
            raise FileNotFoundError(f"notebook {args.notebook!r} not found (expected an "
                                    f"existing .ipynb file)")
        declared = notebook_parameters(nb)
        if args.list_parameters:
            for name, info in declared.items():
                typ = info["type"] or "any"
                print(f"{name}: {typ} = {info['default_source']}"
                      + (f"  # {info['help']}" if info["help"] else ""))
            return 0
        overrides = {}
        for name, raw in args.parameter:
            typ = declared.get(name, {}).get("type")
            # a str parameter keeps the text as typed ("007" stays "007")
            overrides[name] = raw if typ == "str" else parse_value(raw)
        validate_parameters(nb, overrides, declared)
        result = notebook_run.run_notebook(nb, overrides, runs_dir=args.runs_dir, kernel_name=args.kernel,
                              autosave_seconds=args.autosave, log_output=not args.quiet)
    except (ValueError, TypeError, FileNotFoundError) as exc:
        print(f"trajlab run: error: {exc}", file=sys.stderr)
        return 2
    return result.exit_code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(cli_run())
