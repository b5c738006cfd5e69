"""Rebuild the README's result tables from the committed CSVs, so README and results/ cannot drift.

Each generated table sits between ``<!-- BEGIN name -->`` and ``<!-- END name -->`` in README.md.

    python scripts/readme_tables.py            # rewrite those blocks from results/<profile>/
    python scripts/readme_tables.py --check    # exit 1 if any block differs (tests/test_readme.py)
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
PROFILE = "fmnist"
METHODS = {
    "reft": "REFT",
    "fedavg": "FedAvg",
    "fedavg-weakest": "FedAvg (weakest model)",
    "feddf": "FedDF",
    "heterofl": "HeteroFL",
}


def results(name: str, profile: str = PROFILE) -> pd.DataFrame:
    return pd.read_csv(ROOT / "results" / profile / f"{name}.csv")


def markdown(df: pd.DataFrame) -> str:
    """A pipe table of the (already formatted) cells."""
    lines = ["| " + " | ".join(map(str, df.columns)) + " |", "|" + " --- |" * len(df.columns)]
    lines += ["| " + " | ".join(map(str, row)) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def fmt(x: float, spec: str, missing: str = "not reached") -> str:
    return missing if pd.isna(x) else format(x, spec)


def main_results() -> str:
    """Notebook 03: every method on both partitions."""
    t = results("03_comparison")
    (target_col,) = [c for c in t.columns if c.startswith("sim_time_to_")]
    target = float(target_col.removeprefix("sim_time_to_").removesuffix("_s"))
    return markdown(
        pd.DataFrame(
            {
                "partition": t["partition"],
                "method": t["method"].map(METHODS),
                "final acc (%)": (100 * t["final_acc"]).map(lambda v: fmt(v, ".1f")),
                "MB up": t["mb_up"].map(lambda v: fmt(v, ".2f")),
                "MB down": t["mb_down"].map(lambda v: fmt(v, ".2f")),
                f"sim. time to {100 * target:g}% (s)": t[target_col].map(lambda v: fmt(v, ".2f")),
                "sim. time, all rounds (s)": t["sim_time_s"].map(lambda v: fmt(v, ".2f")),
            }
        )
    )


def gflops_by_tier() -> str:
    """Notebook 03, IID: client training GFLOPs per round, by tier."""
    t = results("03_comparison")
    t = t[t["partition"] == "iid"]
    cols = [c for c in t.columns if c.startswith("client_gflops[")]
    out = pd.DataFrame({"method": t["method"].map(METHODS)})
    for c in cols:
        out[c.removeprefix("client_gflops[").removesuffix("]_per_round")] = t[c].map(lambda v: fmt(v, ".2f", "-"))
    return markdown(out)


def tiers() -> str:
    """The tier table the runs used (notebook 01 saves it)."""
    t = results("01_tiers")
    return markdown(
        pd.DataFrame(
            {
                "tier": t["tier"],
                "device": t["device"],
                "peak TFLOP/s": (t["peak_flops"] / 1e12).map(lambda v: f"{v:.3g}"),
                "assumed efficiency": t["efficiency"],
                "memory (GB)": t["memory_gb"].map(lambda v: f"{v:g}"),
                "down / up (Mbit/s)": [
                    f"{d:g} / {u:g}" for d, u in zip(t["downlink_mbps"], t["uplink_mbps"], strict=True)
                ],
                "source": t["source"],
            }
        )
    )


def run_times() -> str:
    """Wall time per notebook of the reference run (RUN.csv, written by reft.reproduce)."""
    t = results("RUN")
    return markdown(
        pd.DataFrame(
            {
                "notebook": t["notebook"],
                "wall time (s)": t["seconds"].map(lambda v: f"{v:.0f}"),
                "(min)": (t["seconds"] / 60).map(lambda v: f"{v:.1f}"),
            }
        )
    )


def peer_fidelity() -> str:
    """scripts/peer_fidelity.py: the peers before/after the fidelity changes, paired seeds, full test set."""
    t = results("peer_fidelity")

    def pm(mean: pd.Series, std: pd.Series) -> list[str]:
        return [f"{100 * m:.2f} ± {100 * s:.2f}" for m, s in zip(mean, std, strict=True)]

    return markdown(
        pd.DataFrame(
            {
                "method": t["method"].map(METHODS),
                "partition": t["partition"],
                "seeds": t["seeds"],
                "before: final acc (%), mean ± sd": pm(t["before_mean"], t["before_std"]),
                "after": pm(t["after_mean"], t["after_std"]),
                "after − before (points), 95% CI": [
                    f"{100 * d:+.2f} [{100 * lo:+.2f}, {100 * hi:+.2f}]"
                    for d, lo, hi in zip(t["diff_mean"], t["diff_ci95_low"], t["diff_ci95_high"], strict=True)
                ],
                "verdict": t["verdict"],
            }
        )
    )


def speedups() -> str:
    """reft/speedups.csv: measured training-step speed-up of each pruned model against its FLOPs reduction."""
    t = pd.read_csv(ROOT / "reft" / "speedups.csv")
    t = t[t["ratio"] > 0]
    return markdown(
        pd.DataFrame(
            {
                "model": t["model"],
                "ratio": t["ratio"].map(lambda v: f"{v:g}"),
                "FLOPs kept (%)": (100 * t["flops_fraction"]).map(lambda v: f"{v:.2f}"),
                "FLOPs reduction": (1 / t["flops_fraction"]).map(lambda v: f"{v:.1f}x"),
                "measured speed-up": t["speedup"].map(lambda v: f"{v:.2f}x"),
                "speed factor (of ideal)": t["speedup_vs_ideal"].map(lambda v: f"{v:.3f}"),
                "batch, threads": [f"{b}, {n}" for b, n in zip(t["batch"], t["threads"], strict=True)],
            }
        )
    )


BLOCKS: dict[str, Callable[[], str]] = {
    "speedups": speedups,
    "peer-fidelity": peer_fidelity,
    "main-results": main_results,
    "gflops-by-tier": gflops_by_tier,
    "tiers": tiers,
    "run-times": run_times,
}


def render(text: str) -> str:
    """``text`` with every known block rebuilt; an unknown or missing block is an error."""
    found = set(re.findall(r"<!-- BEGIN ([\w-]+) -->", text))
    if found != set(BLOCKS):
        raise ValueError(f"README blocks {sorted(found)} do not match the generators {sorted(BLOCKS)}.")
    for name, make in BLOCKS.items():
        block = f"<!-- BEGIN {name} -->\n{make()}\n<!-- END {name} -->"
        text = re.sub(rf"<!-- BEGIN {name} -->.*?<!-- END {name} -->", lambda m, b=block: b, text, flags=re.S)
    return text


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="exit 1 if README differs from the CSVs")
    args = ap.parse_args(argv)
    old = README.read_text()
    new = render(old)
    if args.check:
        if new != old:
            print("README tables differ from results/: run python scripts/readme_tables.py", file=sys.stderr)
            return 1
        return 0
    README.write_text(new)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
