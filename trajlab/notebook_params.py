"""Parameters cell of a notebook: parsing and checking.

A notebook's cell tagged ``parameters`` declares its parameters (names,
annotated types, literal defaults, a trailing ``#`` comment as help).
:func:`notebook_parameters` reads it with :mod:`ast`;
:func:`validate_parameters` checks overrides against it before anything
runs: unknown names, wrong types, and (with the owners' tables,
:data:`trajlab.spec.PARAMS` and :data:`trajlab.engine.GENERATE_PARAMS`)
the ranges of parameters named like DatasetSpec fields or generate's
arguments, in the project's template naming the notebook.
"""

from __future__ import annotations

import ast
import io
import json
import re
import tokenize
from pathlib import Path

from ._validation import fail

__all__ = ["notebook_parameters", "validate_parameters", "parse_value"]



def parse_value(text):
    """Parse a command-line value like papermill's ``-p``, plus JSON.

    ``True``/``true``, ``False``/``false``, ``None``/``null``, ints and
    floats become Python values; ``[...]``/``{...}``/``(...)`` are parsed
    as JSON or Python literals; anything else stays a string.

    Parameters
    ----------
    text : str

    Returns
    -------
    bool, None, int, float, list, dict, tuple or str
    """
    s = text.strip()
    consts = {"True": True, "true": True, "False": False, "false": False,
              "None": None, "null": None}
    if s in consts:
        return consts[s]
    for conv in (int, float):
        try:
            return conv(s)
        except ValueError:
            pass
    if s[:1] in "[{(" and s[-1:] in "]})":
        try:
            return json.loads(s)
        except ValueError:
            pass
        try:
            return ast.literal_eval(s)
        except (ValueError, SyntaxError):
            pass
    return text


_TYPES = {
    "int": ("an int", lambda v: isinstance(v, int) and not isinstance(v, bool)),
    "float": ("a float", lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)),
    "bool": ("a bool", lambda v: isinstance(v, bool)),
    "str": ("a str", lambda v: isinstance(v, str)),
    "list": ("a list", lambda v: isinstance(v, (list, tuple))),
    "tuple": ("a tuple", lambda v: isinstance(v, (list, tuple))),
    "dict": ("a dict", lambda v: isinstance(v, dict)),
}


def _type_of(annotation, default):
    """Normalised expected type (e.g. ``"int"``, ``"Optional[int]"`` -> ``("int",
    True)``) or None when unknown."""
    name = (annotation or "None").strip()
    optional = False
    m = (re.fullmatch(r"(?:typing\.)?Optional\[\s*(\w+)\s*\]", name)
         or re.fullmatch(r"(\w+)\s*\|\s*None", name) or re.fullmatch(r"None\s*\|\s*(\w+)", name))
    if m:
        name, optional = m.group(1), True
    name = name.split("[", 1)[0].strip()
    name = {"List": "list", "Tuple": "tuple", "Dict": "dict"}.get(name, name)
    if name in _TYPES:
        return name, optional
    if name in ("None", "NoneType", "") and default is not _UNKNOWN and default is not None:
        # no annotation: infer from a literal default
        for key in ("bool", "int", "float", "str", "list", "tuple", "dict"):
            if type(default).__name__ == key:
                return key, False
    return None, False


class _Unknown:
    def __repr__(self):
        return "<not a literal>"


_UNKNOWN = _Unknown()


def _parse_parameters_cell(source):
    """Parameters of a ``parameters`` cell source with :mod:`ast`.

    Returns a list of ``(name, annotation, default_source, help)``, or None
    when the cell is not plain Python (then papermill's parser is used).
    """
    lines = source.splitlines()
    # IPython magics / shell escapes are not Python; blank them out
    clean = "\n".join("" if ln.lstrip().startswith(("%", "!")) else ln for ln in lines)
    try:
        tree = ast.parse(clean)
    except SyntaxError:
        return None
    out = []
    for node in tree.body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            targets, annotation = [node.target.id], ast.unparse(node.annotation)
        elif isinstance(node, ast.Assign) and all(isinstance(t, ast.Name) for t in node.targets):
            targets, annotation = [t.id for t in node.targets], None
        else:
            continue
        if node.value is None:
            continue
        value = ast.get_source_segment(clean, node.value) or ast.unparse(node.value)
        last = lines[node.end_lineno - 1]
        help_ = ""
        try:
            for tok in tokenize.generate_tokens(io.StringIO(last + "\n").readline):
                if tok.type == tokenize.COMMENT:
                    help_ = tok.string.lstrip("#").strip()
        except (tokenize.TokenError, IndentationError, SyntaxError):
            pass
        for name in targets:
            out.append((name, annotation, value, help_))
    return out


def notebook_parameters(notebook):
    """Parameters declared in a notebook's cell tagged ``parameters``.

    The cell is parsed with :mod:`ast` (papermill's regular expression
    skips any line with a second ``=``, e.g. in a comment); cells that are
    not plain Python fall back to :func:`papermill.inspect_notebook`.

    Parameters
    ----------
    notebook : path-like

    Returns
    -------
    dict of str to dict
        For each name (in cell order): ``type`` (``"int"``, ``"float"``,
        ``"bool"``, ``"str"``, ``"list"``, ``"tuple"``, ``"dict"`` or None
        when unknown), ``optional`` (None allowed), ``default`` (the
        evaluated literal; the source text if it is not a literal),
        ``default_source``, ``literal`` (whether the default is a literal)
        and ``help`` (the trailing comment).
    """
    import nbformat

    nb = nbformat.read(str(notebook), as_version=4)
    cells = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    if not cells:
        return {}
    found = _parse_parameters_cell(cells[0].source)
    if found is None:
        import papermill

        found = [(name, p["inferred_type_name"], p["default"], p["help"])
                 for name, p in papermill.inspect_notebook(str(notebook)).items()]
    out = {}
    for name, annotation, src, help_ in found:
        try:
            default = ast.literal_eval(src)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            default = _UNKNOWN
        typ, optional = _type_of(annotation, default)
        out[name] = {"type": typ, "optional": optional,
                     "default": src if default is _UNKNOWN else default,
                     "default_source": src, "literal": default is not _UNKNOWN,
                     "help": help_}
    return out


def validate_parameters(notebook, parameters, declared=None):
    """Check overrides against the notebook's ``parameters`` cell.

    Parameters
    ----------
    notebook : path-like
    parameters : dict of str to object
        Overrides.
    declared : dict, optional
        Output of :func:`notebook_parameters` (computed when omitted).

    Returns
    -------
    dict
        All parameters: defaults merged with the overrides.

    Raises
    ------
    ValueError
        Unknown parameter name (the message lists the valid ones).
    TypeError
        A value of the wrong type, e.g. *"The 'n_samples' parameter of
        notebook 02_generate_dataset must be an int. Got 'abc' instead."*
    ValueError
        A :class:`~trajlab.spec.DatasetSpec` field out of range, e.g. *"The
        'n_frames' parameter of notebook 01_explore_trajectories must be an
        int in the range [2, inf). Got 1 instead."*
    """
    stem = Path(notebook).stem
    owner = f"notebook {stem}"
    declared = notebook_parameters(notebook) if declared is None else declared
    parameters = dict(parameters or {})
    if parameters and not declared:
        raise ValueError(f"The notebook {stem} has no cell tagged 'parameters' (or it declares "
                         f"nothing), so it takes no parameters. Got {sorted(parameters)}.")
    unknown = [k for k in parameters if k not in declared]
    if unknown:
        raise ValueError(
            f"Unknown parameter{'s' if len(unknown) > 1 else ''} "
            f"{', '.join(repr(k) for k in unknown)} for {owner}; valid parameters are: "
            f"{', '.join(declared)}.")
    for name, value in parameters.items():
        info = declared[name]
        if info["type"] is None or (value is None and info["optional"]):
            continue
        expected, ok = _TYPES[info["type"]]
        if not ok(value):
            fail(name, owner, expected + (" or None" if info["optional"] else ""), value,
                 TypeError)
    merged = {k: info["default"] for k, info in declared.items()}
    merged.update(parameters)
    _check_spec_fields(merged, parameters, declared, owner)
    _check_generate_args(merged, parameters, owner)
    return merged


def _check_generate_args(merged, overrides, owner):
    """Range-check parameters that trajlab notebooks pass to
    :func:`trajlab.generate` (named like its :data:`~trajlab.engine.GENERATE_PARAMS`)
    with generate's own checks, naming the notebook, before a kernel starts."""
    from .engine import GENERATE_PARAMS, check_generate_args

    if not set(GENERATE_PARAMS) & set(overrides):
        return
    check_generate_args({k: merged[k] for k in GENERATE_PARAMS if k in merged}, owner)


def _check_spec_fields(merged, overrides, declared, owner):
    """Range-check parameters named like :class:`DatasetSpec` fields.

    trajlab notebooks pass such parameters straight to ``DatasetSpec``, so
    checking them here reports a bad value (e.g. ``n_frames=1``) before a
    kernel starts, in the same template, naming the notebook.
    """
    from .spec import PARAMS, check_fields

    if not set(PARAMS) & set(overrides):
        return
    check_fields({k: v for k, v in merged.items()
                  if k in PARAMS and (k in overrides or declared[k]["literal"])}, owner)
