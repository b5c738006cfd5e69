"""reft.export: pruned models as ONNX files, equal to PyTorch in ONNX Runtime on real Fashion-MNIST images."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from reft import export, models, pruning, tiers

pytestmark = pytest.mark.skipif(not export.available(), reason="needs the export extra: pip install -e '.[export]'")


def test_a_pruned_cnn_runs_in_onnx_runtime_with_pytorchs_outputs(tmp_path, fmnist, one_thread):
    images = fmnist.test.x[:512]
    torch.manual_seed(0)
    dense = export._calibrate(models.build("cnn"), fmnist.public.x[:256])
    pruned = pruning.prune(dense, 0.5, images[:1]).model.eval()
    path = export.to_onnx(pruned, images[:2], tmp_path / "cnn.onnx")
    sess = export.session(path)
    got = export.check(pruned, sess, images)
    assert got["n_images"] == 512 and got["within_tolerance"] and got["max_abs_diff"] <= export.TOLERANCE
    assert got["argmax_agree"] == 1.0
    # The check can fail: the file of another pruned model gives other logits.
    other = pruning.prune(dense, 0.3, images[:1]).model.eval()
    wrong = export.check(pruned, export.session(export.to_onnx(other, images[:2], tmp_path / "o.onnx")), images[:64])
    assert not wrong["within_tolerance"] and wrong["max_abs_diff"] > 100 * export.TOLERANCE
    # One self-contained file (no external weights), batch size free.
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("cnn")] == ["cnn.onnx"]
    assert sess.run(None, {"images": images[:7].numpy()})[0].shape == (7, 10)
    lat = export.latency(pruned, sess, images, rounds=1, repeats=2, warmup=1)
    assert set(lat) == {"torch_ms_b1", "ort_ms_b1", "torch_ms_b32", "ort_ms_b32"} and min(lat.values()) > 0


def test_static_pools_equal_adaptive_pools_or_refuse():
    net = nn.Sequential(nn.AdaptiveMaxPool2d(2))
    x = torch.randn(3, 4, 7, 7)
    fixed = export.static_pools(net, x)
    assert isinstance(fixed[0], nn.MaxPool2d) and torch.equal(fixed(x), net(x))  # 7 -> 2: kernel 4, stride 3
    assert export._same_windows(5, 3) is None  # windows [0,2) [1,4) [3,5): no plain pool computes them
    with pytest.raises(ValueError, match="windows of different sizes"):
        export.static_pools(nn.Sequential(nn.AdaptiveMaxPool2d(3)), torch.randn(1, 1, 5, 5))


def test_export_table_bytes_are_the_files_sizes(tmp_path, one_thread):
    table = tiers.load_tiers().loc[["laptop", "raspberry_pi_4"]]
    out = export.export_tiers(["cnn"], tmp_path, n_images=64, rounds=1, repeats=1, tier_table=table)
    assert list(out["tier"]) == ["laptop", "raspberry_pi_4"] and out["within_tolerance"].all()
    assert out["ratio"].iloc[0] < out["ratio"].iloc[1]  # the weaker tier trains a smaller model
    for _, row in out.iterrows():
        assert row["onnx_bytes"] == (tmp_path / f"cnn_{row['tier']}.onnx").stat().st_size
    assert out["onnx_bytes"].iloc[1] < out["onnx_bytes"].iloc[0]
    with pytest.raises(ValueError, match="Unknown model"):
        export.export_tiers(["nope"], tmp_path)


def test_command_line_writes_the_table_as_csv(tmp_path, capsys, one_thread):
    import pandas as pd

    tiers.load_tiers().loc[["laptop", "raspberry_pi_4"]].reset_index().to_csv(tmp_path / "t.csv", index=False)
    out = tmp_path / "export.csv"
    argv = ["--models", "cnn", "--tiers", str(tmp_path / "t.csv"), "--images", "32", "--rounds", "1",
            "--repeats", "1", "--onnx-dir", str(tmp_path / "onnx"), "--out", str(out)]  # fmt: skip
    assert export.main(argv) == 0
    table = pd.read_csv(out)
    assert list(table["tier"]) == ["laptop", "raspberry_pi_4"] and "ort_ms_b32" in table
    assert "table written to" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        export.main(["--models", "nope", "--out", str(tmp_path / "x.csv")])
    assert e.value.code == 2 and "Unknown model" in capsys.readouterr().err
