"""One federated run from a shell: ``python -m reft run --algorithm reft --partition dirichlet --alpha 0.5 ...``.

Every :class:`~reft.config.RunConfig` field is an option (``--local-epochs``; generated from the dataclass,
with its default and its comment as help), validated by RunConfig itself. The run shows a progress bar
per round, prints a summary at the end and saves its history (after every round) and its client table as
CSVs under ``results/<profile>/`` (``results/interactive/`` by default), named by ``--save-as``.
"""

from __future__ import annotations

import argparse
import ast
import inspect
import io
import sys
import tokenize
from collections.abc import Callable, Sequence
from dataclasses import MISSING, fields
from typing import Any

from reft.config import RunConfig

NONE = ("none", "null")
TRUE, FALSE = ("true", "yes", "1", "on"), ("false", "no", "0", "off")


def field_help() -> dict[str, str]:
    """The comment after each RunConfig field in its source, by field name."""
    source = inspect.getsource(RunConfig)
    comments = {
        tok.start[0]: tok.string.lstrip("# ")
        for tok in tokenize.generate_tokens(io.StringIO(source).readline)
        if tok.type == tokenize.COMMENT
    }
    cls = ast.parse(source).body[0]
    assert isinstance(cls, ast.ClassDef)
    return {
        node.target.id: comments.get(node.lineno, "")
        for node in cls.body
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
    }


def _boolean(text: str) -> bool:
    if text.lower() in TRUE:
        return True
    if text.lower() in FALSE:
        return False
    raise argparse.ArgumentTypeError(f"expected true or false; got {text!r}")


def _tier_mix(text: str) -> dict[str, float] | list[str]:
    """``laptop:1,phone:2`` (weights) or ``laptop,phone`` (one tier per client, cycled)."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if parts and all(":" in p for p in parts):
        try:
            return {p.split(":")[0]: float(p.split(":")[1]) for p in parts}
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected tier:weight,...; got {text!r}") from None
    return parts


def _ints(text: str) -> list[int]:
    try:
        return [int(w) for w in text.split(",") if w.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated ints; got {text!r}") from None


def _parser_of(annotation: str) -> Callable[[str], Any]:
    """A string -> value converter for a RunConfig annotation (``int | None`` accepts ``none`` too)."""
    base = annotation.split(" | ")[0]
    convert: Callable[[str], Any] = {
        "int": int, "float": float, "str": str, "bool": _boolean, "Sequence[int]": _ints,
        "Mapping[str, float]": _tier_mix,
    }[base]  # fmt: skip
    if not annotation.endswith("| None"):
        return convert

    def optional(text: str) -> Any:
        return None if text.lower() in NONE else convert(text)

    optional.__name__ = f"{base} or none"
    return optional


def choices() -> dict[str, list[str]]:
    """The valid names of the fields that name something registered (shown in the help)."""
    from reft import codecs, config, data, distill, models, pruning, strategies

    return {
        "algorithm": list(strategies.ALGORITHMS), "dataset": list(data.DATASETS), "partition": list(data.SCHEMES),
        "model": list(models.MODEL_NAMES), "policy": list(config.POLICIES), "importance": list(pruning.IMPORTANCES),
        "codec_up": list(codecs.CODECS), "codec_down": list(codecs.CODECS), "ensemble": list(distill.MODES),
        "weighting": list(config.WEIGHTINGS),
    }  # fmt: skip


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m reft", description="The REFT companion's command line.")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND")
    run = sub.add_parser(
        "run", help="one federated run", description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )  # fmt: skip
    helps, valid = field_help(), choices()
    for f in fields(RunConfig):
        default = f.default if f.default is not MISSING else None
        name = f"--{f.name.replace('_', '-')}"
        text = helps.get(f.name) or f.name.replace("_", " ")
        if f.name in valid:
            text += f" [{', '.join(valid[f.name])}]"
        if str(f.type) == "bool":  # --amp / --no-amp
            run.add_argument(name, action=argparse.BooleanOptionalAction, default=default, help=text)
        else:
            kind = {"Sequence[int]": "W1,W2,...", "Mapping[str, float]": "TIER:WEIGHT,..|TIER,.."}.get(
                str(f.type).split(" | ")[0], str(f.type).split(" | ")[0].upper()
            )
            run.add_argument(name, type=_parser_of(str(f.type)), default=default, metavar=kind, help=text)
    run.add_argument("--target-acc", type=float, default=None, help="summary: simulated time to this accuracy")
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    ap = parser()
    args = ap.parse_args(argv)
    if args.command != "run":
        ap.print_help()
        return 0 if args.command is None else 2
    options = vars(args)
    options.pop("command")
    target = options.pop("target_acc")
    if options["save_as"] is None:
        options["save_as"] = "_".join(
            str(v) for v in (options["algorithm"], options["partition"], options["alpha"], f"seed{options['seed']}")
            if v is not None
        )  # fmt: skip
    try:
        cfg = RunConfig(**options)
    except ValueError as e:
        ap.error(str(e))
    from reft import engine, experiments, report  # after the options are known to be good: torch takes seconds

    try:
        res = engine.run(cfg)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    clients = report.save_table(res.clients, f"{cfg.save_as}_clients", cfg.profile)
    history = report.results_dir(cfg.profile) / f"{cfg.save_as}.csv"
    summary = experiments.summary(res, target)
    width = max(map(len, summary))
    print(
        "\n".join(
            f"{k:<{width}}  {v:.4g}" if isinstance(v, float) else f"{k:<{width}}  {v}" for k, v in summary.items()
        )
    )
    print(f"history: {history}\nclients: {clients}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
