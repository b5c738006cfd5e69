"""Fail-fast checks of a notebook's parameters, in the cell right after its ``parameters`` cell.

::

    from reft import params
    params.check(globals(), config="reft.config:RunConfig", ranges={"central_epochs": "[1, inf)"},
                 choices={"model": "reft.models:MODEL_NAMES"})

Papermill injects the values it is given (``-p name value``, a profile) as a cell of its own right after the
``parameters`` cell; a misspelled name there becomes a global the notebook never reads, and a value of the
wrong type fails only when it is first used. :func:`check` reads both cells from the kernel's input
history (IPython's ``In``: the cells in the order they ran) and raises one :class:`ParameterError` listing
every problem before any work is done:

* an injected name the ``parameters`` cell does not declare (with the closest declared name);
* an injected value whose type differs from its default's (an int where the default is a float is fine;
  None where the default is None, the parameter's comment mentions None or ``config`` makes the field
  optional; ``types`` overrides);
* a value outside its range (``ranges``: interval notation, e.g. ``"[1, inf)"``, ``"(0, 1]"``) or not
  among its choices (``choices``, with the closest valid one); for a list, every element is checked;
* a parameter named like a field of ``config`` (e.g. :class:`reft.config.RunConfig`: ``rounds``, ``model``,
  ``tier_mix``...) whose value that config refuses (only where it accepts the default, i.e. where the
  notebook means the same thing by the name).

Without papermill (a Jupyter session, ``pytest --nbmake``) there is no injected cell and only the ranges
and choices of the current values are checked.
"""

from __future__ import annotations

import ast
import difflib
import importlib
import io
import math
import numbers
import tokenize
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

INJECTED_MARK = "# Parameters"  # the first line of papermill's injected-parameters cell


class ParameterError(ValueError):
    """A notebook was given a parameter it does not declare, or a value of the wrong type or range."""


@dataclass(frozen=True)
class Declared:
    """A parameter of the ``parameters`` cell: its default and its comment."""

    default: Any
    comment: str


def declared(source: str) -> dict[str, Declared]:
    """The parameters a ``parameters`` cell assigns (name -> default and comment), in order."""
    tree = ast.parse(source)
    comments: dict[int, str] = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = tok.string.lstrip("# ")
    out = {}
    for node in tree.body:
        if isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            try:
                default = ast.literal_eval(node.value) if node.value is not None else None
            except ValueError:
                default = ...  # not a literal: any type is accepted
            note = " ".join(
                comments[i] for i in range(node.lineno, (node.end_lineno or node.lineno) + 1) if i in comments
            )
            for t in targets:
                if isinstance(t, ast.Name):
                    out[t.id] = Declared(default, note)
    return out


def _only_assignments(source: str) -> bool:
    try:
        body = ast.parse(source).body
    except SyntaxError:
        return False
    return bool(body) and all(isinstance(n, ast.Assign | ast.AnnAssign) for n in body)


def cells(history: Sequence[str]) -> tuple[str | None, str | None]:
    """The ``parameters`` cell and papermill's injected cell (or None) among the cells that ran before the
    current one (the last entry of ``history``): the injected cell is the latest one starting with
    ``# Parameters``; the parameters cell, the latest cell of plain assignments before it."""
    earlier = list(history[:-1])
    injected = None
    for i in range(len(earlier) - 1, -1, -1):
        if earlier[i].lstrip().startswith(INJECTED_MARK):
            injected, earlier = earlier[i], earlier[:i]
            break
    params = next((s for s in reversed(earlier) if _only_assignments(s)), None)
    return params, injected


def closest(name: str, valid: Collection[str]) -> str:
    """`` (did you mean 'x'?)`` for the valid name closest to ``name``, or ``""`` when none is close."""
    match = difflib.get_close_matches(str(name), [str(v) for v in valid], n=1)
    return f" (did you mean {match[0]!r}?)" if match else ""


def _kind(value: Any) -> str:
    if value is None:
        return "None"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, numbers.Integral):
        return "int"
    if isinstance(value, numbers.Real):
        return "float"
    if isinstance(value, str):
        return "str"
    if isinstance(value, Mapping):
        return "dict"
    if isinstance(value, Sequence):
        return "list"
    return type(value).__name__


def _accepts(kinds: Collection[str], value: Any) -> bool:
    k = _kind(value)
    return k in kinds or (k == "int" and "float" in kinds)


def _range_error(name: str, value: Any, interval: str) -> str | None:
    """``None`` if ``value`` (a number) lies in ``interval`` (``"[lo, hi)"``, ``"(0, inf)"``...), else why not."""
    lo_s, hi_s = (p.strip() for p in interval.strip()[1:-1].split(","))
    lo, hi = float(lo_s), float(hi_s)
    closed_lo, closed_hi = interval.strip()[0] == "[", interval.strip()[-1] == "]"
    if not (isinstance(value, numbers.Real) and not isinstance(value, bool)):
        return f"{name} must be a number in {interval}; got {value!r}"
    v = float(value)
    ok = not math.isnan(v) and (v >= lo if closed_lo else v > lo) and (v <= hi if closed_hi else v < hi)
    return None if ok else f"{name} must be in {interval}; got {value!r}"


def _elements(value: Any) -> list[Any]:
    if isinstance(value, Mapping):
        return list(value)
    if isinstance(value, Sequence) and not isinstance(value, str):
        return list(value)
    return [value]


def problems(
    namespace: Mapping[str, Any],
    params_source: str | None,
    injected_source: str | None = None,
    types: Mapping[str, Collection[str]] | None = None,
    ranges: Mapping[str, str] | None = None,
    choices: Mapping[str, Collection[Any]] | None = None,
    config: Callable[..., Any] | None = None,
    aliases: Mapping[str, str] | None = None,
    none_ok: Collection[str] | None = (),
) -> list[str]:
    """Every problem with the parameters (see the module docstring); ``[]`` when there is none. ``none_ok``:
    parameters that may be None whatever their default (None: all of them); those ``config`` makes optional
    are added."""
    decl = declared(params_source) if params_source else {}
    if config is not None and none_ok is not None:
        optional = {f.name for f in fields(config) if "None" in str(f.type)}  # type: ignore[arg-type]
        none_ok = {*none_ok, *(n for n in decl if (aliases or {}).get(n, n) in optional)}
    errors = []
    injected = list(declared(injected_source)) if injected_source else []
    mistyped: set[str] = set()  # their ranges and choices are not checked: one message per mistake
    for name in injected:
        if decl and name not in decl:
            errors.append(f"unknown parameter {name!r}{closest(name, decl)}; this notebook's parameters: "
                          f"{', '.join(decl)}")  # fmt: skip
            continue
        d = decl.get(name)
        if d is None or d.default is ...:
            continue
        if namespace.get(name) is None and none_ok is None:
            continue  # decided once the config's optional fields are known
        kinds = set(types[name]) if types and name in types else {_kind(d.default)}
        if d.default is None or "None" in d.comment or name in (none_ok or ()):
            kinds.add("None")
        if d.default is not None and not _accepts(kinds, namespace.get(name)):
            value = namespace.get(name)
            want = " or ".join(sorted(kinds))
            errors.append(f"parameter {name} must be {want} (default {d.default!r}); got {value!r} ({_kind(value)})")
            mistyped.add(name)
    if config is not None:
        errors += _config_errors({k: v for k, v in namespace.items() if k not in mistyped}, decl, config, aliases or {})
    for name, interval in (ranges or {}).items():
        value = namespace.get(name)
        if value is None or name in mistyped:
            continue
        for v in _elements(value):
            if (why := _range_error(name, v, interval)) is not None:
                errors.append(why)
                break
    for name, valid in (choices or {}).items():
        value = namespace.get(name)
        if value is None or name in mistyped:
            continue
        for v in _elements(value):
            if not isinstance(v, str | numbers.Number) or v not in valid:
                errors.append(
                    f"parameter {name}: unknown {v!r}{closest(v, valid)}; valid: {', '.join(map(str, valid))}"
                )
    return errors


def _config_errors(
    namespace: Mapping[str, Any], decl: Mapping[str, Declared], config: Callable[..., Any], aliases: Mapping[str, str]
) -> list[str]:
    """What ``config`` (a validating dataclass) says about each declared parameter named like one of its fields
    (or its field ``aliases[name]``)."""
    names = {f.name for f in fields(config)}  # type: ignore[arg-type]
    errors = []
    for name, d in decl.items():
        value, field = namespace.get(name), aliases.get(name, name)
        if field not in names or value is None or d.default is ...:
            continue
        try:
            config(**{field: d.default})
        except ValueError:
            continue  # the notebook means something else by this name
        try:
            config(**{field: value})
        except ValueError as e:
            errors.append(f"parameter {name}={value!r}: {str(e).removeprefix('Invalid RunConfig: ').rstrip('.')}")
    return errors


def check(
    namespace: Mapping[str, Any],
    types: Mapping[str, Collection[str]] | None = None,
    ranges: Mapping[str, str] | None = None,
    choices: Mapping[str, Collection[Any]] | None = None,
    config: Callable[..., Any] | None = None,
    aliases: Mapping[str, str] | None = None,
) -> None:
    """Check a notebook's parameters (call it as ``params.check(globals(), ...)`` in the cell after the
    ``parameters`` cell); raise one :class:`ParameterError` listing every problem.

    ``types``: kinds a parameter may take besides its default's (``"int"``, ``"float"``, ``"str"``, ``"bool"``,
    ``"list"``, ``"dict"``, ``"None"``), e.g. ``{"partition": ["float", "str"]}`` for a Dirichlet alpha or
    ``"iid"``. ``ranges``: name -> interval. ``choices``: name -> the valid values. ``config``: a validating
    dataclass (:class:`reft.config.RunConfig`) that checks the parameters named like its fields, or like the
    field ``aliases`` gives for a name (e.g. ``{"tiers_file": "tiers_path"}``). ``choices`` and ``config`` may be
    ``"module:attribute"`` references (``"reft.config:RunConfig"``), imported only after the names and types
    passed, so that a misspelled name fails before the package's heavy imports.
    """
    history = namespace.get("In") or namespace.get("_ih") or []
    params_source, injected_source = cells(list(history)) if history else (None, None)
    # names and types first, before the references are imported (torch takes seconds): fail fast
    errors = problems(namespace, params_source, injected_source, types, none_ok=None)
    if not errors:
        choices = {k: resolve(v) for k, v in (choices or {}).items()}
        config = resolve(config) if config is not None else None
        errors = problems(namespace, params_source, injected_source, types, ranges, choices, config, aliases)
    if errors:
        raise ParameterError("Bad notebook parameters: " + "; ".join(errors) + ".")


def resolve(ref: Any) -> Any:
    """``"module:attribute"`` imported (e.g. ``"reft.models:MODEL_NAMES"``); anything else as it is."""
    if not isinstance(ref, str):
        return ref
    module, _, attr = ref.partition(":")
    if not attr:
        raise ValueError(f"A reference must read 'module:attribute'; got {ref!r}.")
    return getattr(importlib.import_module(module), attr)
