"""Run every notebook through papermill with a named profile: ``python -m reft.reproduce --profile P``.

Profiles live in ``notebooks/profiles.yaml``: a ``common`` block of parameters given to every notebook
that declares them, and one block per notebook. Everything is validated (profile name, parameter
names) before the first notebook starts.

Resuming: after a notebook succeeds, a stamp ``results/P/notebooks/NAME.done.json`` records a
fingerprint of what produced it: the notebook's cells, its resolved parameters and the source of the
``reft`` package. A later run skips a notebook whose stamp matches and whose outputs all exist, so an
interrupted reproduction picks up where it stopped; any change to the notebook, the profile or the
code makes it run again. Tables and figures are written atomically by ``reft.report``, so an
interruption never leaves a half-written file. A failing notebook keeps its executed copy (with the
error in it) and the run exits non-zero.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import TextIO

import yaml

from reft import report

PACKAGE = Path(__file__).resolve().parent


@dataclass
class Job:
    """One notebook to run with its resolved parameters."""

    notebook: Path
    parameters: dict

    @property
    def name(self) -> str:
        return self.notebook.stem


def notebooks_dir() -> Path:
    return PACKAGE.parent / "notebooks"


def numbered_notebooks() -> list[Path]:
    """The runnable notebooks (``NN_name.ipynb``) in run order."""
    return sorted(notebooks_dir().glob("[0-9][0-9]_*.ipynb"))


def load_profiles(path: Path | None = None) -> dict:
    path = path or notebooks_dir() / "profiles.yaml"
    with open(path) as f:
        return yaml.safe_load(f)


def declared_parameters(notebook: Path) -> dict:
    """The parameters a notebook declares in its cell tagged ``parameters``."""
    import papermill

    return {k: v["default"] for k, v in papermill.inspect_notebook(str(notebook)).items()}


def plan(profile: str, profiles: dict, only: list[str] | None = None) -> list[Job]:
    """Resolve a profile into jobs, or raise ValueError before anything runs."""
    if profile not in profiles:
        raise ValueError(f"Unknown profile {profile!r}. Profiles: {', '.join(profiles)}.")
    spec = profiles[profile] or {}
    common = spec.get("common") or {}
    per_nb = spec.get("notebooks") or {}
    notebooks = numbered_notebooks()
    names = {nb.stem for nb in notebooks}
    unknown_nb = sorted(set(per_nb) - names)
    if unknown_nb:
        raise ValueError(f"Profile {profile!r} names unknown notebooks {unknown_nb}. Notebooks: {sorted(names)}.")
    if only:
        notebooks = [nb for nb in notebooks if any(nb.stem.startswith(o) for o in only)]
        if not notebooks:
            raise ValueError(f"No notebook matches {only}. Notebooks: {sorted(names)}.")
    jobs, used_common = [], set()
    for nb in notebooks:
        declared = declared_parameters(nb)
        own = per_nb.get(nb.stem) or {}
        bad = sorted(set(own) - set(declared))
        if bad:
            raise ValueError(
                f"Profile {profile!r}: {nb.stem} has no parameter(s) {bad}. Its parameters: {sorted(declared)}."
            )
        shared = {k: v for k, v in common.items() if k in declared}
        used_common |= set(shared)
        jobs.append(Job(nb, {**shared, **own, "profile": profile}))
    unused = sorted(set(common) - used_common)
    if unused and not only:
        raise ValueError(f"Profile {profile!r}: common parameter(s) {unused} are declared by no notebook.")
    return jobs


def code_fingerprint() -> str:
    h = hashlib.sha256()
    for f in sorted(PACKAGE.rglob("*")):
        if f.is_file() and f.suffix in {".py", ".csv", ".yaml"}:
            h.update(f.relative_to(PACKAGE).as_posix().encode())
            h.update(f.read_bytes())
    return h.hexdigest()


def fingerprint(job: Job, code: str) -> str:
    cells = [c["source"] for c in json.loads(job.notebook.read_text())["cells"]]
    params = {k: v for k, v in job.parameters.items() if k != "resume"}  # resuming gives the same results
    blob = json.dumps({"cells": cells, "parameters": params, "code": code}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def outputs_of(job: Job, profile: str) -> list[Path]:
    """Tables and figures a notebook wrote: files named after its number (``00_*``)."""
    prefix = job.name.split("_")[0] + "_"
    found = [*report.results_dir(profile).glob(prefix + "*.csv"), *report.figures_dir(profile).glob(prefix + "*")]
    return sorted(p for p in found if not p.name.startswith("."))


def is_current(job: Job, profile: str, fp: str) -> bool:
    stamp = stamp_path(job, profile)
    if not stamp.is_file():
        return False
    done = json.loads(stamp.read_text())
    root = report.root()
    return done.get("fingerprint") == fp and all((root / p).is_file() for p in done.get("outputs", []))


def stamp_path(job: Job, profile: str) -> Path:
    return report.results_dir(profile) / "notebooks" / f"{job.name}.done.json"


def partial_path(job: Job, profile: str) -> Path:
    return report.results_dir(profile) / "notebooks" / f"{job.name}.partial.json"


class Clock:
    """A notebook's run time across interruptions: while it runs, the seconds so far (earlier interrupted
    executions of the same notebook and parameters included) are written to ``NAME.partial.json`` every
    ``every`` seconds, so a killed run leaves its time behind and the resumed one adds to it. ``key``
    identifies the notebook and its parameters; ``code`` is the package's fingerprint: a resumed execution
    on changed code still adds the earlier time (its finished runs come back from their checkpoints and
    records) and :attr:`code_changed` says so in the stamp."""

    def __init__(self, path: Path, key: str, code: str = "", every: float = 30.0) -> None:
        self.path, self.key, self.code, self.every = path, key, code, every
        old = json.loads(path.read_text()) if path.is_file() else {}
        same = old.get("fingerprint") == key
        self.before = float(old.get("seconds", 0.0)) if same else 0.0
        self.code_changed = bool(same and (old.get("code_changed") or old.get("code", code) != code))
        self.t0 = time.perf_counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True)

    def seconds(self) -> float:
        return self.before + time.perf_counter() - self.t0

    def _write(self) -> None:
        doc = {"fingerprint": self.key, "code": self.code, "code_changed": self.code_changed,
               "seconds": round(self.seconds(), 1)}  # fmt: skip
        report.atomic_write(self.path, lambda p: p.write_text(json.dumps(doc)))

    def _beat(self) -> None:
        while not self._stop.wait(self.every):
            self._write()

    def __enter__(self) -> Clock:
        self._write()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        if exc[0] is None:
            self.path.unlink(missing_ok=True)  # finished: its time goes into the stamp
        else:
            self._write()


class Terminal:
    """Where a kernel's printed output goes while papermill runs it: this terminal, above papermill's cell bar
    (``tqdm.write`` clears and redraws it). The kernels print progress as plain lines (``REFT_PROGRESS=lines``,
    :mod:`reft.progress`): the runs of a sweep, the rounds of a run, a line per finished run."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def write(self, text: str) -> None:
        from tqdm import tqdm

        for line in text.splitlines():
            if line.strip():
                tqdm.write(f"  {line}", file=self.stream)

    def flush(self) -> None:
        self.stream.flush()


def run(profile: str, jobs: list[Job], force: bool = False) -> int:
    """Run (or resume) the planned jobs of a profile; returns a process exit code. The notebooks' printed
    output and progress lines stream to this terminal (:class:`Terminal`)."""
    before = os.environ.get("REFT_PROGRESS")
    os.environ["REFT_PROGRESS"] = before or "lines"  # the kernels inherit it
    try:
        return _run(profile, jobs, force)
    finally:
        if before is None:
            del os.environ["REFT_PROGRESS"]


def _run(profile: str, jobs: list[Job], force: bool) -> int:
    import papermill

    code = code_fingerprint()
    executed_dir = report.results_dir(profile) / "notebooks"
    executed_dir.mkdir(parents=True, exist_ok=True)
    t_all = time.perf_counter()
    for job in jobs:
        fp = fingerprint(job, code)
        if not force and is_current(job, profile, fp):
            print(f"[skip] {job.name}: outputs are current for profile {profile!r}")
            continue
        stamp_path(job, profile).unlink(missing_ok=True)
        out = executed_dir / job.notebook.name
        print(f"[run ] {job.name} with {job.parameters}")
        clock = Clock(partial_path(job, profile), fingerprint(job, ""), code)
        try:
            with clock:
                papermill.execute_notebook(
                    str(job.notebook), str(out), parameters=job.parameters, cwd=str(job.notebook.parent),
                    progress_bar=True, stdout_file=Terminal(sys.stdout), stderr_file=Terminal(sys.stderr),
                )  # fmt: skip
        except papermill.PapermillExecutionError as e:
            print(f"[FAIL] {job.name}: {e.ename}: {e.evalue}\n       the executed copy shows the error: {out}")
            return 1
        seconds = clock.seconds()
        root = report.root()
        done = {
            "fingerprint": fp,
            "seconds": round(seconds, 1),  # earlier interrupted executions included (Clock)
            "interrupted_s": round(clock.before, 1),
            "code_changed_while_interrupted": clock.code_changed,
            "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "commit": machine()["commit"],
            "parameters": job.parameters,
            "outputs": [p.relative_to(root).as_posix() for p in outputs_of(job, profile)],
        }
        report.atomic_write(stamp_path(job, profile), lambda p, d=done: p.write_text(json.dumps(d, indent=1)))
        print(f"[done] {job.name} in {seconds:.0f} s" + (f" ({clock.before:.0f} s of them before an interruption)"
                                                          if clock.before else ""))  # fmt: skip
    write_run_record(profile)
    print(f"Profile {profile!r} complete in {time.perf_counter() - t_all:.0f} s; see {report.results_dir(profile)}")
    return 0


def machine() -> dict:
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=PACKAGE)
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "reft", "notebooks"], capture_output=True, text=True, cwd=PACKAGE.parent
    )
    return {
        "commit": (commit.stdout.strip() or "unknown") + (" (uncommitted changes)" if dirty.stdout.strip() else ""),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "cores": torch.get_num_threads(),
        "gpu": gpu,
        "os": platform.platform(),
    }


def write_run_record(profile: str) -> Path:
    """``results/P/RUN.md``: what ran, where, with which code, and how long each notebook took (the
    times also as ``results/P/RUN.csv``, one row per notebook and a ``total`` row). It lists every notebook
    of the profile that has finished, also those a ``--only`` run left as they were, each with the commit
    it ran at (``-`` for stamps older than that field); the header's machine is this run's."""
    import pandas as pd

    rows, times, total = [], [], 0.0
    for nb in numbered_notebooks():
        stamp = stamp_path(Job(nb, {}), profile)
        if not stamp.is_file():
            continue
        d = json.loads(stamp.read_text())
        commit = d.get("commit", "-")
        rows.append(f"| {nb.stem} | {d['seconds']} | {d['finished']} | {commit} |")
        times.append({"notebook": nb.stem, "seconds": d["seconds"], "finished": d["finished"], "commit": commit})
        total += d["seconds"]
    times.append({"notebook": "total", "seconds": round(total, 1), "finished": "", "commit": ""})
    report.save_table(pd.DataFrame(times), "RUN", profile)
    m = machine()
    text = "\n".join(
        [
            f"# Run record: profile `{profile}`",
            "",
            *[f"- {k}: {v}" for k, v in m.items()],
            "",
            "| notebook | wall time (s) | finished (UTC) | commit |",
            "| --- | --- | --- | --- |",
            *rows,
            "",
            f"Total notebook time: {total:.0f} s (each notebook's last complete run, with the time of earlier"
            " interrupted executions it resumed from).",
            "",
        ]
    )
    return report.atomic_write(report.results_dir(profile) / "RUN.md", lambda p: p.write_text(text))


def measured(profile: str) -> str:
    """`` [measured: N s (H h) of notebook time, K notebooks]`` from the profile's run record (``RUN.csv``),
    or `` [not measured yet]`` without one."""
    path = report.results_dir(profile) / "RUN.csv"
    if not path.is_file():
        return " [not measured yet]"
    import pandas as pd

    t = pd.read_csv(path).set_index("notebook")["seconds"]
    return f" [measured: {t['total']:.0f} s ({t['total'] / 3600:.1f} h) of notebook time, {len(t) - 1} notebooks]"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m reft.reproduce", description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="fmnist", help="profile name from notebooks/profiles.yaml")
    ap.add_argument("--only", nargs="*", help="run only notebooks whose names start with these (e.g. 00 01)")
    ap.add_argument("--force", action="store_true", help="run even notebooks whose outputs are current")
    ap.add_argument("--list", action="store_true", help="list profiles and exit")
    ap.add_argument(
        "--resume", action="store_true", help="notebooks with a `resume` parameter continue interrupted runs"
    )
    args = ap.parse_args(argv)
    profiles = load_profiles()
    if args.list:
        for name, spec in profiles.items():
            print(f"{name:8s} {(spec or {}).get('description', '')}{measured(name)}")
        return 0
    try:
        jobs = plan(args.profile, profiles, args.only)  # everything validated before anything runs
        if args.resume:
            jobs = [
                replace(j, parameters={**j.parameters, "resume": True})
                if "resume" in declared_parameters(j.notebook)
                else j
                for j in jobs
            ]
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return run(args.profile, jobs, args.force)


if __name__ == "__main__":
    raise SystemExit(main())
