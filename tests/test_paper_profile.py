"""The `paper` profile's CIFAR-10 path, end to end through the profile runner, on self-made CIFAR data.

CIFAR-10 cannot be downloaded here, so the test writes a small CIFAR-format folder (random images, the
real file layout that torchvision's reader parses) and bypasses only the MD5 check of the published
archive, inside the notebook kernel too (an IPython startup file). The profile's own choices (dataset
cifar10, model resnet18, its parameter names) are kept; only the sizes shrink so it runs in CI.
"""

from __future__ import annotations

import pandas as pd
import pytest

from reft import report, reproduce

# one seed and no codec study: the CIFAR path is the same for every seed and codec
SHRINK = dict(
    n_clients=4, private_size=160, public_size=64, test_size=64, rounds=1, local_epochs=1, distill_epochs=1,
    partitions=["iid"], seeds=[0], codecs_up=[],
)  # fmt: skip

PATCH = """\
import os
import torchvision.datasets.cifar

# self-made CIFAR-format files for a test: they cannot match the published archive's MD5
torchvision.datasets.cifar.check_integrity = lambda path, md5=None: os.path.isfile(path)
"""


def test_paper_profile_runs_its_cifar_path(tmp_path, monkeypatch: pytest.MonkeyPatch, write_tiny_cifar) -> None:
    data_root = tmp_path / "data"
    write_tiny_cifar(data_root, n_train_per_batch=2040, n_test=64)  # > 10k: the notebooks' public split
    startup = tmp_path / "ipython" / "profile_default" / "startup"
    startup.mkdir(parents=True)
    (startup / "00-tiny-cifar.py").write_text(PATCH)
    monkeypatch.setenv("REFT_DATA", str(data_root))
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    monkeypatch.setenv("REFT_OUTPUT", str(tmp_path / "out"))

    (job,) = reproduce.plan("paper", reproduce.load_profiles(), only=["03"])
    assert job.parameters["dataset"] == "cifar10" and job.parameters["model"] == "resnet18"
    assert set(SHRINK) <= set(reproduce.declared_parameters(job.notebook))
    job.parameters.update(SHRINK)
    assert reproduce.run("paper", [job]) == 0

    table = pd.read_csv(report.results_dir("paper") / "03_comparison.csv")
    assert set(table["method"]) == {"reft", "fedavg", "fedavg-weakest", "feddf", "heterofl"}
    assert table["final_acc"].between(0, 1).all() and (table["mb_up"] > 0).all()
    clients = pd.read_csv(report.results_dir("paper") / "03_clients.csv")
    dense = clients.loc[clients["method"] == "fedavg", "params"].max()
    assert 10_000_000 < dense < 12_000_000  # a CIFAR ResNet-18 (3 input channels, 10 classes): 11.2M
    assert (report.figures_dir("paper") / "03_accuracy_vs_mb.png").is_file()
