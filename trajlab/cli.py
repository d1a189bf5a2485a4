"""Command line: ``trajlab generate|status|verify|info|export|run``.

Also available as ``python -m trajlab``. Exit codes: 0 success; 1 a check
failed (verify found damage, a notebook failed, status is stalled/failed);
2 bad arguments.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from ._validation import fail

__all__ = ["main", "build_parser"]


def _flagged(params):
    return [p for p in params.values() if p.flag]


def _parse_with(param):
    """argparse ``type`` for a table entry: plain ``int``/``float`` keep
    argparse's own message; other forms raise the project template."""
    if param.text is None:
        return param.cli

    def parse(text):
        try:
            return param.cli(text)
        except (ValueError, TypeError):
            try:
                fail(param.name, "generate", param.text, text)
            except ValueError as exc:
                raise argparse.ArgumentTypeError(str(exc)) from None
    parse.__name__ = param.name
    return parse


def _add_params(parser, params):
    """One flag per parameter of an owner's table (``spec.PARAMS``,
    ``engine.GENERATE_PARAMS``); every default is None (= not given), so
    the owner's own default applies."""
    for p in _flagged(params):
        names = [p.short, p.flag] if p.short else [p.flag]
        if p.cli is bool:
            parser.add_argument(*names, dest=p.name, action="store_const", const=True,
                                default=None, help=p.help)
        else:
            parser.add_argument(*names, dest=p.name, type=_parse_with(p), default=None,
                                help=p.help)


def _given(args, params):
    """The parameters of a table given on the command line."""
    return {p.name: getattr(args, p.name) for p in _flagged(params)
            if getattr(args, p.name) is not None}


def _read_spec_file(path):
    """The object in a user's --spec file: a regular JSON file of at most
    1 MiB (``/dev/zero`` or a FIFO must not be read forever)."""
    from ._validation import MAX_JSON_BYTES
    from .storage import RunDirError, TooLargeError, parse_json, read_bytes

    expected = f"a JSON file of DatasetSpec fields (a regular file of at most " \
               f"{MAX_JSON_BYTES // 2**20} MiB)"
    try:
        raw = read_bytes(path, MAX_JSON_BYTES)
    except FileNotFoundError:
        raise ValueError(f"The 'spec' parameter of generate must be {expected}. Got {path!r} "
                         "instead, which does not exist.") from None
    except TooLargeError as exc:
        raise ValueError(f"The 'spec' parameter of generate must be {expected}. Got {path!r} "
                         f"instead ({exc.size} bytes).") from None
    except (OSError, RunDirError) as exc:
        what = "not a regular file" if "not a regular file" in str(exc) else str(exc)
        raise ValueError(f"The 'spec' parameter of generate must be {expected}. Got {path!r} "
                         f"instead ({what}).") from None
    base, reason = parse_json(raw)
    if reason:
        raise ValueError(f"The 'spec' parameter of generate must be {expected}. Got {path!r} "
                         f"instead ({reason}).")
    return base


def _spec_from_args(args):
    from .spec import PARAMS, DatasetSpec

    base = {}
    if args.spec is not None:
        base = _read_spec_file(args.spec)
        if isinstance(base, dict) and isinstance(base.get("spec"), dict):
            base = base["spec"]   # accept a run dir's spec.json too
        if not isinstance(base, dict):
            raise ValueError(f"The 'spec' parameter of generate must be a JSON file holding an "
                             f"object of DatasetSpec fields. Got {args.spec!r} instead, which "
                             f"holds a {type(base).__name__}.")
    base.update(_given(args, PARAMS))
    return DatasetSpec.from_dict(base)


def _add_generate(sub):
    from .engine import GENERATE_PARAMS
    from .spec import PARAMS

    p = sub.add_parser("generate", help="generate (or resume) a dataset into RUN_DIR",
                       description="Generate a dataset into RUN_DIR, or resume it. Re-running "
                       "the same command resumes; a finished run is a no-op.")
    p.add_argument("run_dir")
    p.add_argument("--spec", help="JSON file with DatasetSpec fields (or a run dir's spec.json)")
    _add_params(p, PARAMS)
    _add_params(p, GENERATE_PARAMS)
    p.add_argument("--new", action="store_true",
                   help="start a new dataset with the default spec (without spec arguments, "
                        "RUN_DIR must already hold a spec.json: a plain resume never starts "
                        "a dataset)")


def _interrupt_on(*signals):
    """Turn termination signals (``kill``, a closed SSH session, a spot
    instance notice) into KeyboardInterrupt, so the run ends as
    'interrupted' in progress.json instead of looking stalled."""
    import signal

    def handler(signum, _frame):
        raise KeyboardInterrupt(signal.Signals(signum).name)

    for sig in signals:
        signal.signal(sig, handler)


def _cmd_generate(args):
    import signal

    from .engine import GENERATE_PARAMS, generate
    from .spec import PARAMS

    _interrupt_on(signal.SIGTERM, signal.SIGHUP)

    spec_given = args.spec is not None or bool(_given(args, PARAMS))
    from .storage import path_lexists

    if not spec_given and path_lexists(os.path.join(args.run_dir, "spec.json")):
        from .storage import load_layout

        spec = load_layout(args.run_dir)[1].spec          # plain resume
    elif not spec_given and not args.new:
        raise ValueError(
            f"{args.run_dir!r} has no spec.json, so there is no dataset to resume (a typo in "
            "the path, or a run killed before it wrote spec.json?). To start a new dataset, "
            "give its spec arguments (e.g. `-n 30000 --n-frames 16 --image-size 64`, or "
            "--spec FILE), or --new for the default spec.")
    else:
        spec = _spec_from_args(args)
    kwargs = _given(args, GENERATE_PARAMS)
    # No joblib.parallel_config can be active around a command line, so None
    # (the Python default) would always mean one worker: the command uses
    # every CPU unless -j says otherwise.
    kwargs.setdefault("n_jobs", -1)
    if args.scheduler and not args.backend:
        kwargs["backend"] = "dask"
    res = generate(spec, args.run_dir, **kwargs)
    print(res.summary())
    return 0


def _cmd_status(args):
    from .progress import format_status, read_status

    if (os.path.isfile(os.path.join(args.run_dir, "run.json"))
            and not os.path.isfile(os.path.join(args.run_dir, "progress.json"))):
        from .notebook_run import read_run_status     # a `trajlab run` folder under runs/

        st = read_run_status(args.run_dir)
        text = (f"{args.run_dir}: {st['verdict'].upper()} ({st['reason']})\n"
                f"  notebook {st.get('notebook')}, output {st.get('output')}")
    else:
        st = read_status(args.run_dir)
        text = format_status(args.run_dir, st)
    if args.json:
        print(json.dumps(st, indent=2, sort_keys=True))
    else:
        print(text)
    return {"running": 0, "finished": 0}.get(st["verdict"], 1)


def _cmd_verify(args):
    from .dataset import verify_run

    rep = verify_run(args.run_dir)
    if rep["ok"]:
        print(f"{args.run_dir}: OK - {rep['n_shards']} shards, spec, manifest, headers, "
              "records, checksums and annotations all match.")
        return 0
    bad = rep["bad"]
    if not rep["complete"] and rep["layout"] is not None:
        print(f"{args.run_dir}: INCOMPLETE - no manifest (generation unfinished).")
    general = [b for b in bad if b[0] is None]
    shards = [b for b in bad if b[0] is not None]
    for _, what, reason in general:
        print(f"{args.run_dir}: BAD - {reason}")
    if shards:
        first = shards[0]
        print(f"{args.run_dir}: {len({b[0] for b in shards})} bad shard(s) of {rep['n_shards']}; "
              f"first bad shard {first[0]}: {first[2]}")
        for shard, what, reason in shards[1:20]:
            print(f"  shard {shard}: {reason}")
    if not args.repair or rep["layout"] is None:
        if args.repair:
            print("Nothing was repaired: trajlab cannot use this run directory until the "
                  "problem above is fixed (spec.json defines the dataset; links are never "
                  "followed).")
        return 1
    from .engine import repair

    fixed = repair(args.run_dir)
    for line in fixed["rebuilt"][:50]:
        print(f"Repaired: {line}")
    if fixed["dropped"]:
        print(f"{len(fixed['dropped'])} shard(s) must be regenerated: run "
              f"`trajlab generate {args.run_dir}`.")
        return 1
    after = verify_run(args.run_dir)
    print(f"{args.run_dir}: {'OK' if after['ok'] else 'STILL BAD'} after repair.")
    return 0 if after["ok"] else 1


def _manifest_problem(run_dir, layout, manifest, problem):
    """Why the manifest cannot be trusted (None if it can)."""
    from .storage import build_manifest, compare_manifest, read_record

    if problem or manifest is None:
        return problem
    records = {s: read_record(run_dir, layout, s) for s in range(layout.n_shards)}
    if any(r is None for r in records.values()):
        return "some shard records are missing or damaged"
    try:
        return compare_manifest(manifest, build_manifest(run_dir, layout, records), run_dir)
    except RuntimeError as exc:
        return str(exc)


def _cmd_info(args):
    from .generator import SPLITS
    from .storage import check_managed_entries, load_layout, read_manifest

    doc, layout = load_layout(args.run_dir)
    check_managed_entries(args.run_dir, layout)
    manifest, problem = read_manifest(args.run_dir, layout)
    problem = _manifest_problem(args.run_dir, layout, manifest, problem)
    if args.json:
        print(json.dumps({"spec": doc, "manifest": None if problem else manifest,
                          "manifest_problem": problem}, indent=2, sort_keys=True))
        return 1 if problem else 0
    s = layout.spec
    print(f"Run dir:      {args.run_dir}")
    print(f"Fingerprint:  {s.fingerprint} (trajlab {doc['trajlab_version']}, "
          f"data v{doc['data_version']}, format v{doc['format_version']})")
    print(f"Samples:      {s.n_samples:,} x {s.n_frames} frames x 3 x {s.image_size} x "
          f"{s.image_size} uint8, style {s.style!r}, seed {s.seed}")
    print(f"Classes:      {', '.join(s.classes)}")
    print(f"Shards:       {layout.n_shards} of {layout.shard_size} samples")
    if problem:
        print(f"Status:       DAMAGED - {problem} Run `trajlab verify --repair {args.run_dir}`.")
    elif manifest is None:
        print("Status:       INCOMPLETE (no manifest)")
    else:
        print("Status:       complete, finished " + manifest["finished_at"])
        cc, rj = manifest["class_counts"], manifest["rejections"]
        print("Class counts: " + ", ".join(f"{k}={cc[k]}" for k in s.classes))
        for split in SPLITS:
            counts = manifest["split_counts"][split]
            print(f"  {split:<5}       " + ", ".join(f"{k}={counts[k]}" for k in s.classes)
                  + f"  (total {sum(counts.values())})")
        print("Rejections:   " + ", ".join(f"{k}={rj[k]}" for k in s.classes))
        print("On disk:      " + _disk_line(layout, manifest))
    print("Spec:")
    print("  " + s.to_json(indent=2).replace("\n", "\n  "))
    return 1 if problem else 0


def _megabytes(n):
    return f"{n / 1e6:,.1f} MB" if n >= 1e5 else f"{n / 1e3:,.1f} kB"


def _disk_line(layout, manifest):
    """Bytes on disk (from the manifest), against the decoded size."""
    if layout.format_version == 1:
        total = sum(f["bytes"] for f in manifest["files"].values())
        return f"{_megabytes(total)} of raw .npy arrays (format 1, uncompressed)"
    sb = manifest["stored_bytes"]
    # annotations: the JSON lines, or (layout.annotations 'params') the
    # parameter array they are made from
    ann = sb["annotations"] if layout.annotations == "jsonl" else sb["params"]
    return (f"{_megabytes(sb['total'])} ({manifest['codec']}, {manifest['store']}), "
            f"{_megabytes(manifest['raw_bytes'])} decoded: {manifest['compression_ratio']}x "
            f"smaller; videos {_megabytes(sb['videos'])}, annotations "
            f"{_megabytes(ann)}{'' if layout.annotations == 'jsonl' else ' (parameters)'}, "
            f"other arrays {_megabytes(sb['total'] - sb['videos'] - ann)}")


def _cmd_export(args):
    import signal

    from .export import export

    _interrupt_on(signal.SIGTERM, signal.SIGHUP)   # so that the temporary file is removed
    path = export(args.run_dir, args.output, format=args.format, split=args.split)
    print(f"Wrote {path}")
    return 0


def build_parser():
    p = argparse.ArgumentParser(prog="trajlab", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    _add_generate(sub)
    s = sub.add_parser("status", help="is a run running, stalled, finished or failed? "
                       "(a run dir, or a notebook run folder under runs/)")
    s.add_argument("run_dir")
    s.add_argument("--json", action="store_true")
    s = sub.add_parser("verify", help="recompute checksums; report the first bad shard")
    s.add_argument("run_dir")
    s.add_argument("--repair", action="store_true",
                   help="drop the records of bad shards so that resuming regenerates them")
    s = sub.add_parser("info", help="print the spec, counts and splits of a run dir")
    s.add_argument("run_dir")
    s.add_argument("--json", action="store_true")
    s = sub.add_parser("export", help="write the earlier system's dict as .npz or .pt")
    s.add_argument("run_dir")
    s.add_argument("output")
    s.add_argument("--format", choices=["npz", "pt"], default=None,
                   help="default: from the output's extension")
    s.add_argument("--split", choices=["train", "val", "test"], default=None)
    s = sub.add_parser("run", help="execute a notebook with papermill into runs/",
                       add_help=False)
    s.add_argument("rest", nargs=argparse.REMAINDER)
    return p


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "run":
        from .notebook_cli import cli_run

        return cli_run(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    handlers = {"generate": _cmd_generate, "status": _cmd_status, "verify": _cmd_verify,
                "info": _cmd_info, "export": _cmd_export}
    try:
        return handlers[args.command](args)
    except (ValueError, TypeError, PermissionError) as exc:
        print(f"trajlab {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except (RuntimeError, OSError, MemoryError) as exc:   # RunDirError, files, disk, memory
        print(f"trajlab {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        what = ("nothing was written (its temporary file was removed)" if args.command == "export"
                else "re-run the same command to resume")
        print(f"trajlab {args.command}: interrupted; {what}.", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
