"""Fail-fast notebook parameters (reft.params): unknown injected names, wrong types, ranges, choices."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from reft import params
from reft.config import RunConfig

PARAMS = """profile = "interactive"  # outputs go to results/<profile>/
seeds = [0]
central_epochs = 1
central_lr = 0.05
subsample = 5000  # private samples (None: all of them)
partition = 0.5  # a Dirichlet alpha, or "iid"
model = "cnn"
rounds = 3
"""
INJECTED = "# Parameters\ncentral_epoch = 3\ncentral_lr = 1\nsubsample = None\nrounds = 0\n"


def test_unknown_name_names_the_closest_and_types_follow_the_defaults() -> None:
    ns = {"central_epochs": 1, "central_epoch": 3, "central_lr": 1, "subsample": None, "rounds": 0}
    errors = params.problems(ns, PARAMS, INJECTED)
    assert errors == ["unknown parameter 'central_epoch' (did you mean 'central_epochs'?); this notebook's parameters: "
                      "profile, seeds, central_epochs, central_lr, subsample, partition, model, rounds"]  # fmt: skip
    bad = params.problems({"central_epochs": "abc"}, PARAMS, "# Parameters\ncentral_epochs = 'abc'\n")
    assert bad == ["parameter central_epochs must be int (default 1); got 'abc' (str)"]
    alpha_or_iid = "# Parameters\npartition = 'iid'\n"
    assert params.problems({"partition": "iid"}, PARAMS, alpha_or_iid, types={"partition": ["float", "str"]}) == []
    assert "must be float" in params.problems({"partition": "iid"}, PARAMS, alpha_or_iid)[0]


def test_ranges_choices_and_config_fields() -> None:
    ns = {"central_epochs": 0, "central_lr": 0.05, "seeds": [0, -1], "model": "cnnn", "rounds": 0}
    errors = params.problems(
        ns, PARAMS, None, ranges={"central_epochs": "[1, inf)", "seeds": "[0, inf)", "central_lr": "(0, 1]"},
        choices={"model": ["cnn", "vgg11"]}, config=RunConfig,
    )  # fmt: skip
    assert "central_epochs must be in [1, inf); got 0" in errors
    assert "seeds must be in [0, inf); got -1" in errors
    assert "parameter model: unknown 'cnnn' (did you mean 'cnn'?); valid: cnn, vgg11" in errors
    # model and rounds are RunConfig fields: RunConfig's own rules apply (partition is not: 0.5 is no scheme)
    assert any(e.startswith("parameter rounds=0: rounds must be >= 1") for e in errors)
    assert any(e.startswith("parameter model='cnnn': unknown model 'cnnn'") for e in errors)
    assert len(errors) == 5


def test_history_finds_the_parameters_and_the_injected_cell() -> None:
    other = "import torch\nx = torch.zeros(1)"
    assert params.cells(["", PARAMS, INJECTED, "params.check(globals())"]) == (PARAMS, INJECTED)
    assert params.cells(["", other, PARAMS, "params.check(globals())"]) == (PARAMS, None)
    with pytest.raises(params.ParameterError, match="did you mean 'central_epochs'"):
        params.check({"In": ["", PARAMS, INJECTED, "check"], "central_epoch": 3}, config="reft.config:RunConfig")


def test_a_misspelled_notebook_parameter_fails_in_seconds(tmp_path: Path) -> None:
    """Papermill on notebook 00 with ``-p central_epoch 3 -p n_clients abc``: the check cell fails at once."""
    papermill = pytest.importorskip("papermill")
    notebook = Path(__file__).parents[1] / "notebooks" / "00_quickstart.ipynb"
    out = tmp_path / "out.ipynb"
    t0 = time.perf_counter()
    with pytest.raises(papermill.PapermillExecutionError) as err:
        papermill.execute_notebook(str(notebook), str(out), parameters={"central_epoch": 3, "central_lr": "abc"},
                                   cwd=str(tmp_path), progress_bar=False, kernel_name="python3")  # fmt: skip
    wall = time.perf_counter() - t0
    assert "unknown parameter 'central_epoch' (did you mean 'central_epochs'?)" in str(err.value)
    assert "parameter central_lr must be float (default 0.05); got 'abc' (str)" in str(err.value)
    cells = [c for c in json.loads(out.read_text())["cells"] if c["cell_type"] == "code"]
    ran = [c for c in cells if c["metadata"]["papermill"]["duration"] is not None]
    assert "params.check(" in "".join(ran[-1]["source"])  # it failed in the check cell, before any work
    assert sum(c["metadata"]["papermill"]["duration"] for c in ran) < 5.0, ran
    assert wall < 60, wall  # kernel start included


def test_every_notebook_accepts_its_defaults_and_every_profile() -> None:
    """Each notebook's check cell, run on its parameters cell with every profile's values injected as papermill
    does (the profile's common parameters the notebook declares, then its own)."""
    nbformat = pytest.importorskip("nbformat")
    from reft import reproduce

    profiles = reproduce.load_profiles()
    for notebook in reproduce.numbered_notebooks():
        nb = nbformat.read(notebook, as_version=4)
        i = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
        source, check = nb.cells[i].source, nb.cells[i + 1].source
        assert "params.check(" in check, notebook.name
        names = params.declared(source)
        for name, spec in profiles.items():
            values = {k: v for k, v in (spec.get("common") or {}).items() if k in names}
            values |= (spec.get("notebooks") or {}).get(notebook.stem) or {}
            injected = "# Parameters\n" + "".join(f"{k} = {v!r}\n" for k, v in {**values, "profile": name}.items())
            ns: dict = {}
            exec(source, ns)
            exec(injected, ns)
            ns["In"] = ["", source, injected, check]
            exec(check, ns)  # raises ParameterError on any problem
