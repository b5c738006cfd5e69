"""The profile runner: validation before running, resume by fingerprint, visible failures."""

from __future__ import annotations

import json
import os
from pathlib import Path

import nbformat
import pandas as pd
import pytest

from reft import report, reproduce


def _notebook(path: Path, body: str) -> None:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    params = nbformat.v4.new_code_cell('profile = "interactive"\nn = 1')
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell(body)]
    nbformat.write(nb, path)


@pytest.fixture
def nbdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    d = tmp_path / "notebooks"
    d.mkdir()
    body = (
        "import pandas as pd\nfrom reft import report\nreport.save_table(pd.DataFrame({'n': [n]}), '00_table', profile)"
    )
    _notebook(d / "00_table.ipynb", body)
    monkeypatch.setattr(reproduce, "notebooks_dir", lambda: d)
    monkeypatch.setenv("REFT_OUTPUT", str(tmp_path / "out"))
    return d


PROFILES = {"tiny": {"common": {"n": 2}}, "other": {"notebooks": {"00_table": {"n": 3}}}}


def test_unknown_profile_or_parameter_fails_before_running(nbdir: Path) -> None:
    with pytest.raises(ValueError, match="Profiles: tiny, other"):
        reproduce.plan("nope", PROFILES)
    with pytest.raises(ValueError, match=r"has no parameter\(s\) \['m'\]"):
        reproduce.plan("bad", {"bad": {"notebooks": {"00_table": {"m": 1}}}})
    with pytest.raises(ValueError, match="declared by no notebook"):
        reproduce.plan("bad", {"bad": {"common": {"zzz": 1}}})
    assert not (report.root() / "results").exists()


def test_run_then_resume_skips_current_and_reruns_changed(nbdir: Path, capsys: pytest.CaptureFixture) -> None:
    jobs = reproduce.plan("tiny", PROFILES)
    assert jobs[0].parameters == {"n": 2, "profile": "tiny"}
    assert reproduce.run("tiny", jobs) == 0
    table = report.results_dir("tiny") / "00_table.csv"
    assert table.read_text().split() == ["n", "2"]
    stamp = json.loads((report.results_dir("tiny") / "notebooks" / "00_table.done.json").read_text())
    assert stamp["outputs"] == ["results/tiny/00_table.csv"]
    assert (report.results_dir("tiny") / "RUN.md").is_file()
    times = pd.read_csv(report.results_dir("tiny") / "RUN.csv")
    assert times["notebook"].tolist() == ["00_table", "total"]
    assert times["seconds"].iloc[1] == pytest.approx(stamp["seconds"], abs=0.05)

    assert reproduce.run("tiny", jobs) == 0
    assert "[skip] 00_table" in capsys.readouterr().out

    table.unlink()  # an output gone: not current any more
    assert reproduce.run("tiny", jobs) == 0
    assert "[run ] 00_table" in capsys.readouterr().out and table.is_file()


def test_a_run_of_one_notebook_keeps_the_others_in_the_run_record(nbdir: Path) -> None:
    """``--only 01`` re-runs one notebook; RUN.md and RUN.csv still list every finished notebook, each with
    the commit it ran at."""
    _notebook(nbdir / "01_other.ipynb", "x = 1")
    assert reproduce.run("tiny", reproduce.plan("tiny", PROFILES)) == 0
    first = pd.read_csv(report.results_dir("tiny") / "RUN.csv").set_index("notebook")
    assert reproduce.run("tiny", reproduce.plan("tiny", PROFILES, only=["01"]), force=True) == 0
    times = pd.read_csv(report.results_dir("tiny") / "RUN.csv").set_index("notebook")
    assert times.index.tolist() == ["00_table", "01_other", "total"]
    assert times.loc["00_table", "finished"] == first.loc["00_table", "finished"]  # left as it was
    assert times.loc["total", "seconds"] == pytest.approx(times["seconds"].iloc[:2].sum(), abs=0.05)
    assert times.loc["00_table", "commit"] == reproduce.machine()["commit"]
    assert "| 00_table |" in (report.results_dir("tiny") / "RUN.md").read_text()


def test_failed_notebook_exits_nonzero_and_keeps_the_error(nbdir: Path) -> None:
    _notebook(nbdir / "01_broken.ipynb", "raise RuntimeError('boom')")
    jobs = reproduce.plan("tiny", PROFILES)
    assert reproduce.run("tiny", jobs) == 1
    executed = (report.results_dir("tiny") / "notebooks" / "01_broken.ipynb").read_text()
    assert "boom" in executed
    assert not (report.results_dir("tiny") / "notebooks" / "01_broken.done.json").exists()


def test_shipped_profiles_are_valid() -> None:
    profiles = reproduce.load_profiles()
    assert {"smoke", "quick", "fmnist", "paper"} <= set(profiles)
    for name in profiles:
        jobs = reproduce.plan(name, profiles)
        assert jobs and all(j.parameters["profile"] == name for j in jobs)


def test_resume_flag_reaches_notebook_03_and_leaves_the_fingerprint_alone() -> None:
    (job,) = reproduce.plan("fmnist", reproduce.load_profiles(), only=["03"])
    assert "resume" in reproduce.declared_parameters(job.notebook) and "resume" not in job.parameters
    resumed = reproduce.Job(job.notebook, {**job.parameters, "resume": True})
    code = reproduce.code_fingerprint()
    assert reproduce.fingerprint(resumed, code) == reproduce.fingerprint(job, code)
    changed = reproduce.Job(job.notebook, {**job.parameters, "rounds": 9})
    assert reproduce.fingerprint(changed, code) != reproduce.fingerprint(job, code)


def test_progress_of_a_notebook_streams_to_the_terminal(nbdir: Path, capsys: pytest.CaptureFixture) -> None:
    """The kernel's bars print plain lines (REFT_PROGRESS=lines), which reach this terminal while it runs."""
    (nbdir / "00_table.ipynb").unlink()
    _notebook(
        nbdir / "00_steps.ipynb", "from reft.progress import tqdm\nfor _ in tqdm(range(3), desc='steps'):\n    pass"
    )
    assert reproduce.run("tiny", reproduce.plan("other", {"other": {}})) == 0
    out = capsys.readouterr().out
    assert "  steps: 1/3 [" in out and "  steps: 3/3 [" in out
    assert "REFT_PROGRESS" not in os.environ  # restored after the run


def test_an_interrupted_notebooks_time_is_kept_and_added_when_it_resumes(nbdir: Path, capsys) -> None:
    (job,) = reproduce.plan("tiny", PROFILES)
    key, code = reproduce.fingerprint(job, ""), reproduce.code_fingerprint()
    partial = reproduce.partial_path(job, "tiny")
    partial.parent.mkdir(parents=True)
    # what a killed execution of the same notebook and parameters leaves behind (its heartbeat)
    partial.write_text(json.dumps({"fingerprint": key, "code": code, "seconds": 1000.0}))
    assert reproduce.run("tiny", [job]) == 0
    stamp = json.loads(reproduce.stamp_path(job, "tiny").read_text())
    assert stamp["interrupted_s"] == 1000.0 and 1000.0 < stamp["seconds"] < 1000.0 + 300
    assert stamp["code_changed_while_interrupted"] is False
    assert not partial.exists() and "1000 s of them before an interruption" in capsys.readouterr().out
    assert pd.read_csv(report.results_dir("tiny") / "RUN.csv")["seconds"].iloc[-1] == stamp["seconds"]
    assert "measured:" in reproduce.measured("tiny") and reproduce.measured("other") == " [not measured yet]"

    # the same notebook and parameters on changed code (e.g. a fix between sessions): the time is kept, and said
    partial.write_text(json.dumps({"fingerprint": key, "code": "older code", "seconds": 500.0}))
    assert reproduce.run("tiny", [job], force=True) == 0
    stamp = json.loads(reproduce.stamp_path(job, "tiny").read_text())
    assert stamp["interrupted_s"] == 500.0 and stamp["code_changed_while_interrupted"] is True

    partial.write_text(json.dumps({"fingerprint": "another run", "seconds": 1000.0}))  # other notebook or parameters
    assert reproduce.run("tiny", [job], force=True) == 0
    assert json.loads(reproduce.stamp_path(job, "tiny").read_text())["interrupted_s"] == 0.0


def test_the_clock_writes_its_heartbeat_while_a_notebook_runs(tmp_path: Path) -> None:
    import time

    path = tmp_path / "x.partial.json"
    with reproduce.Clock(path, "fp", every=0.05):
        time.sleep(0.3)
        assert json.loads(path.read_text())["seconds"] >= 0.1  # a kill now would leave this behind
    assert not path.exists()
    with pytest.raises(KeyboardInterrupt), reproduce.Clock(path, "fp", every=0.05):
        raise KeyboardInterrupt
    assert json.loads(path.read_text())["fingerprint"] == "fp"  # interrupted: kept for the resumed run
