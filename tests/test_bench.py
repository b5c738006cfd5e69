"""The phase profiler: phases add up to the run, FLOPs match the cost model, and nothing is recorded outside."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from reft import bench, data, measure, models, train
from reft.bench import profiler
from reft.config import RunConfig

TINY = dict(
    private_size=300, public_size=200, test_size=100, n_clients=3, rounds=2, widths=[8, 16, 32, 32],
    distill_epochs=2, patience=5, progress=False, final_test=False,
)  # fmt: skip


def test_profile_covers_the_round_and_counts_flops(small: data.Splits, one_thread: None) -> None:
    cfg = RunConfig(algorithm="reft", tier_mix=["laptop"], max_ratio=0.0, **TINY)
    df = profiler.profile(cfg, small, sustained_flops=1e9).set_index("phase")
    assert {"client training [laptop]", "server: teacher passes", "server: distillation", "server evaluation"} <= set(
        df.index
    )
    assert df["seconds"].sum() == pytest.approx(df.attrs["wall_s"], rel=1e-6)  # bookkeeping is the rest
    dense = measure.flops(models.build("cnn", 10, 1, [8, 16, 32, 32]), small.example_input)
    # 3 clients x 100 samples x 2 rounds x 3 (training) forward passes of the dense model
    assert df.loc["client training [laptop]", "gflop"] * 1e9 == pytest.approx(dense * 300 * 2 * 3)
    # 3 teachers on 200 public images, 2 rounds
    assert df.loc["server: teacher passes", "gflop"] * 1e9 == pytest.approx(dense * 3 * 200 * 2)
    assert (df["pct_of_sustained"].dropna() > 0).all()


def test_phases_record_only_inside_a_recording() -> None:
    with bench.phase("outside"):
        pass
    with bench.recording() as rec:
        with bench.phase("inside"):
            pass
        with pytest.raises(RuntimeError, match="already open"), bench.recording():
            pass
    assert list(rec.seconds) == ["inside"] and rec.calls["inside"] == 1


def test_cli_rejects_a_bad_config(capsys: pytest.CaptureFixture[str]) -> None:
    assert profiler.main(["--algorithm", "nope", "--rounds", "1"]) == 2
    assert "unknown algorithm" in capsys.readouterr().err


def test_bench_compares_fp32_and_bf16_at_two_thread_counts_in_one_process(small: data.Splits, tmp_path) -> None:
    out = tmp_path / "b.csv"
    args = ["--algorithm", "fedavg", "--rounds", "1", "--n-clients", "2", "--private-size", "200", "--public-size",
            "100", "--test-size", "100", "--threads", "1", "--threads", "2", "--out", str(out)]  # fmt: skip
    if not train.amp_device(torch.device("cpu")):
        assert profiler.main([*args, "--precision", "bf16"]) == 2  # said, not a traceback
        return
    assert profiler.main([*args, "--precision", "fp32", "--precision", "bf16"]) == 0
    df = pd.read_csv(out)
    assert set(zip(df["threads"], df["precision"], strict=True)) == {(t, p) for t in (1, 2) for p in ("fp32", "bf16")}
    cmp = pd.read_csv(tmp_path / "b_precision.csv")
    assert (cmp["speedup"] > 0).all() and set(cmp["threads"]) == {1, 2}


def test_device_check_dry_run_and_the_estimate_from_its_measurement(tmp_path) -> None:
    root = Path(__file__).resolve().parent.parent
    out = tmp_path / "gpu"
    run = subprocess.run(
        [str(root / "scripts" / "device_check.sh"), "--dry-run", "--out", str(out),
         "--pytest-args", "tests/test_device.py -k native_bf16"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    assert "passed" in (out / "device_tests.txt").read_text()
    rounds = pd.read_csv(out / "rounds.csv")
    expected = {("reft", p) for p in ("fp32", "bf16")} | {("fedavg", p) for p in ("fp32", "bf16")}
    if not train.amp_device(torch.device("cpu")):
        expected = {("reft", "fp32"), ("fedavg", "fp32")}
    assert set(zip(rounds["algorithm"], rounds["precision"], strict=True)) == expected
    assert (rounds["s_per_round"] > 0).all() and (rounds["tflop_per_s"] > 0).all()
    prof = pd.read_csv(out / "profile.csv")
    assert {"server: distillation", "client training [laptop]"} <= set(prof["phase"])
    est = subprocess.run(
        [sys.executable, str(root / "scripts" / "paper_estimate.py"), "--measured", str(out / "rounds.csv"),
         "--precision", rounds["precision"].iloc[-1], "--out", str(tmp_path / "est.csv")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert est.returncode == 0, est.stderr
    table = pd.read_csv(tmp_path / "est.csv")
    assert (table["tflops_source"] == "measured").all()
    used = rounds[rounds["precision"] == rounds["precision"].iloc[-1]]
    assert table["tflops"].iloc[0] == pytest.approx(used["gflop"].sum() / used["compute_s"].sum() / 1e3)
    assert table.set_index("method").loc[["reft", "fedavg"], "hours_all_runs_measured"].gt(0).all()


def test_device_check_help_and_no_gpu_are_clear() -> None:
    root = Path(__file__).resolve().parent.parent
    help_ = subprocess.run([str(root / "scripts" / "device_check.sh"), "--help"], capture_output=True, text=True)
    assert help_.returncode == 0 and "--dry-run" in help_.stdout
    if not torch.cuda.is_available():
        from reft.bench import device_check

        assert device_check.main(["--out", "/nonexistent/never-written"]) == 2
