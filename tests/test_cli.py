"""``python -m reft run``: one run from the shell, every RunConfig field an option."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pandas as pd
import pytest

from reft import cli
from reft.config import RunConfig

ROOT = Path(__file__).parents[1]


def _reft(*args: str, output: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "REFT_OUTPUT": str(output), "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "reft", *args], capture_output=True, text=True, env=env, timeout=300)


def test_every_field_is_an_option_with_its_default() -> None:
    ap = cli.parser()
    run = ap._subparsers._group_actions[0].choices["run"]  # the "run" subcommand's parser
    dests = {a.dest for a in run._actions}
    assert {f.name for f in fields(RunConfig)} <= dests
    args = ap.parse_args(["run", "--tier-mix", "laptop:1,phone:2", "--widths", "8,16,32,32", "--alpha", "none"])
    assert args.tier_mix == {"laptop": 1.0, "phone": 2.0} and args.widths == [8, 16, 32, 32] and args.alpha is None
    assert ap.parse_args(["run", "--tier-mix", "laptop,phone", "--no-amp"]).tier_mix == ["laptop", "phone"]
    defaults = ap.parse_args(["run"])
    assert all(getattr(defaults, f.name) == f.default for f in fields(RunConfig))


def test_help_and_a_bad_option(tmp_path: Path) -> None:
    shown = _reft("run", "--help", output=tmp_path)
    assert shown.returncode == 0 and "--local-epochs" in shown.stdout and "--momentum" in shown.stdout
    bad = _reft("run", "--tier-mix", "mixd", output=tmp_path)
    assert bad.returncode == 2 and "tier_mix: Unknown tier 'mixd'" in bad.stderr and "Traceback" not in bad.stderr


def test_a_two_round_run_from_the_shell(tmp_path: Path) -> None:
    done = _reft(
        "run", "--algorithm", "fedavg", "--partition", "dirichlet", "--alpha", "0.5", "--rounds", "2",
        "--n-clients", "2", "--private-size", "200", "--public-size", "0", "--test-size", "100", "--no-final-test",
        "--no-eval-clients", "--save-as", "shell", output=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "fedavg rounds" in done.stderr  # the progress bar
    assert "final_acc" in done.stdout and "mb_total" in done.stdout  # the summary
    history = pd.read_csv(tmp_path / "results" / "interactive" / "shell.csv")
    clients = pd.read_csv(tmp_path / "results" / "interactive" / "shell_clients.csv")
    assert history["round"].tolist() == [1, 2] and len(clients) == 2


@pytest.mark.parametrize(
    "module,main",
    [("reft", "reft.cli:main"), ("reft.data", "reft.data:main"), ("reft.reproduce", "reft.reproduce:main"),
     ("reft.bench", "reft.bench.profiler:main"), ("reft.flower", "reft.flower.launch:main")],
)  # fmt: skip
def test_every_entry_point_has_help(module: str, main: str, capsys: pytest.CaptureFixture) -> None:
    """``python -m <module> --help`` prints a usage line and exits 0 (called in-process: no torch start-up)."""
    from reft import params

    with pytest.raises(SystemExit) as done:
        params.resolve(main)(["--help"])
    assert done.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: python -m {module}")
