"""The phase profiler: phases add up to the run, FLOPs match the cost model, and nothing is recorded outside."""

from __future__ import annotations

import pytest

from reft import bench, data, measure, models
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
