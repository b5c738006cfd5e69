"""Rebuild the result tables of README.md and docs/*.md from the committed CSVs, so pages and results/ cannot drift.

Each generated table sits between ``<!-- BEGIN name -->`` and ``<!-- END name -->`` in the page that
:data:`PAGES` names for it (README.md or a page under docs/).

    python scripts/readme_tables.py            # rewrite those blocks from results/<profile>/
    python scripts/readme_tables.py --check    # exit 1 if any block of any page differs (tests/test_readme.py)
    python scripts/readme_tables.py --list     # which page holds which block
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from reft import report, stats

ROOT = Path(__file__).resolve().parent.parent
PROFILE = "fmnist"
METHODS = {key: m.name for key, m in report.METHODS.items()}  # the display names every figure uses too
# 03_versus.csv holds method - REFT; REFT's own verdict against the method is the flipped one
FLIP = {"better": "worse", "worse": "better", "on par": "on par", "inconclusive": "inconclusive"}
# REFT's verdict against FedAvg, as the claims table words it
AS_CLAIM = {"better": "reproduced (REFT better)", "on par": "reproduced (on par)",
            "worse": "not reproduced (REFT worse)", "inconclusive": "inconclusive"}  # fmt: skip

RESULTS = ROOT / "results"  # tests may point this at other results


def results(name: str, profile: str | None = None) -> pd.DataFrame:
    return pd.read_csv(RESULTS / (profile or PROFILE) / f"{name}.csv")


def markdown(df: pd.DataFrame) -> str:
    """A pipe table of the (already formatted) cells."""
    lines = ["| " + " | ".join(map(str, df.columns)) + " |", "|" + " --- |" * len(df.columns)]
    lines += ["| " + " | ".join(map(str, row)) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def fmt(x: float, spec: str, missing: str = "not reached") -> str:
    return missing if pd.isna(x) else format(x, spec)


def pm(mean: float, low: float, high: float, scale: float = 100, spec: str = ".1f") -> str:
    """``mean ± half-width`` of a 95% interval (just the mean when there is no interval: one seed)."""
    if pd.isna(low) or pd.isna(high):
        return format(scale * mean, spec)
    return f"{format(scale * mean, spec)} ± {format(scale * (high - low) / 2, spec)}"


def interval(mean: float, low: float, high: float) -> str:
    """A paired difference in points with its 95% interval: ``+1.2 [-0.3, +2.7]``."""
    return f"{100 * mean:+.1f} [{100 * low:+.1f}, {100 * high:+.1f}]"


def main_results() -> str:
    """Notebook 03 over paired seeds: mean ± 95% half-width, and every method against REFT."""
    s, v = results("03_summary"), results("03_versus")
    (target_col,) = [c for c in s.columns if c.startswith("sim_time_to_") and c.endswith("_s_mean")]
    target = target_col.removeprefix("sim_time_to_").removesuffix("_s_mean")
    t = s.merge(v, on=["partition", "method"], how="left")
    rows = []
    for d in t.to_dict("records"):
        reached = d[target_col.replace("_mean", "_n")]
        rows.append({
            "partition": d["partition"],
            "method": METHODS.get(d["method"], d["method"]),
            "seeds": int(d["final_acc_n"]),
            "final acc (%), mean ± 95% CI": pm(d["final_acc_mean"], d["final_acc_ci_low"], d["final_acc_ci_high"]),
            "last 5 rounds, subset (%)": fmt(100 * d["last5_subset_acc_mean"], ".1f", "-"),
            "method − REFT (points), 95% CI": "reference" if pd.isna(d["diff_mean"]) else interval(
                d["diff_mean"], d["diff_ci_low"], d["diff_ci_high"]),
            "verdict vs REFT": "-" if pd.isna(d["verdict"]) else d["verdict"],
            "MB up": fmt(d["mb_up_mean"], ".2f"),
            "MB down": fmt(d["mb_down_mean"], ".2f"),
            f"sim. time to {100 * float(target):g}% (s), seeds reaching it": (
                f"{fmt(d[target_col], '.2f')} ({reached}/{int(d['final_acc_n'])})"),
        })  # fmt: skip
    return markdown(pd.DataFrame(rows))


def main_results_one_seed() -> str:
    """Notebook 03, the one-seed reference run (before the multi-seed re-run): every method on both partitions."""
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


def where_reft_stands() -> str:
    """Notebook 03: for each partition, which methods REFT beats, loses to, ties or cannot be told from,
    by the rule of reft/stats.py on the paired intervals of 03_versus.csv (method - REFT)."""
    v = results("03_versus")
    lines = ["| partition | REFT is better than | REFT is worse than | on par (within ±1 point) | inconclusive |",
             "| --- | --- | --- | --- | --- |"]  # fmt: skip
    for part, g in v.groupby("partition", sort=False):
        cell = {k: [] for k in ("better", "worse", "on par", "inconclusive")}
        for r in g.itertuples(index=False):
            cell[FLIP[r.verdict]].append(
                f"{METHODS.get(r.method, r.method)} ({interval(-r.diff_mean, -r.diff_ci_high, -r.diff_ci_low)})"
            )
        lines.append(f"| {part} | " + " | ".join(", ".join(cell[k]) or "-" for k in cell) + " |")
    return "\n".join(lines)


def _reft_vs(v: pd.DataFrame, method: str) -> dict[str, tuple[str, str]]:
    """Per partition: REFT against ``method`` (REFT - method in points with its interval) and the verdict
    of REFT by the rule of reft/stats.py (03_versus.csv holds method - REFT: the interval flips)."""
    out = {}
    for r in v[v["method"] == method].itertuples(index=False):
        out[r.partition] = (interval(-r.diff_mean, -r.diff_ci_high, -r.diff_ci_low), FLIP[r.verdict])
    return out


def claim_rows() -> list[dict[str, str]]:
    """The paper's abstract claims, each with what was measured and a verdict computed by a stated rule."""
    costs, comp, v = results("01_costs"), results("03_comparison"), results("03_versus")
    pruned = costs[costs["ratio"] > 0]
    at = costs.set_index("ratio")
    n_seeds = comp["seed"].nunique()
    reft, fedavg = comp[comp["method"] == "reft"], comp[comp["method"] == "fedavg"]
    key = ["partition", "seed"]
    pair = reft.merge(fedavg, on=key, suffixes=("", "_fedavg"))
    least_down = comp.loc[comp.groupby(key)["mb_down"].idxmin()]
    tier_cols = [c for c in comp.columns if c.startswith("client_gflops[")]
    weakest = tier_cols[-1]
    acc_vs = _reft_vs(v, "fedavg")
    kd = {p: stats.paired(g["client_acc_mean"], g["final_acc"]) for p, g in reft.groupby("partition", sort=False)}
    verdict_acc = "; ".join(f"{p}: {AS_CLAIM[vd]}" for p, (_, vd) in acc_vs.items())
    return [
        {
            "claim of the paper's abstract": "Variable pruning cuts model size",
            "measured here": f"ratio 0.5 keeps {100 * at.loc[0.5, 'params_fraction']:.1f}% of the parameters "
            f"({100 * at.loc[0.5, 'bytes_fraction']:.1f}% of the bytes), ratio 0.9 keeps "
            f"{100 * at.loc[0.9, 'params_fraction']:.1f}% ({100 * at.loc[0.9, 'bytes_fraction']:.1f}%); channels are "
            "removed, not masked",
            "rule": "every pruned model has fewer parameters and bytes than the dense one",
            "verdict": "reproduced"
            if (pruned["params_fraction"] < 1).all() and (pruned["bytes_fraction"] < 1).all()
            else "not reproduced",
        },
        {
            "claim of the paper's abstract": "... and FLOPs",
            "measured here": f"ratio 0.5 keeps {100 * at.loc[0.5, 'flops_fraction']:.1f}% of the FLOPs, ratio 0.9 "
            f"{100 * at.loc[0.9, 'flops_fraction']:.1f}%; per round a {weakest[14:-11]} client trains "
            f"{reft[weakest].mean():.2f} GFLOPs under REFT, {fedavg[weakest].mean():.2f} under FedAvg (mean over "
            "partitions and seeds)",
            "rule": "every pruned model has fewer FLOPs; the weakest tier computes less than under FedAvg in every run",
            "verdict": "reproduced"
            if (pruned["flops_fraction"] < 1).all() and (pair[weakest] < pair[f"{weakest}_fedavg"]).all()
            else "not reproduced",
        },
        {
            "claim of the paper's abstract": "Bandwidth is cut (no global model travels down every round)",
            "measured here": f"MB down in {int(comp['rounds'].iloc[0])} rounds, mean over {n_seeds} seeds and both "
            f"partitions: REFT {reft['mb_down'].mean():.2f}, FedAvg {fedavg['mb_down'].mean():.2f}; up + down "
            f"{reft['mb_total'].mean():.2f} vs {fedavg['mb_total'].mean():.2f}",
            "rule": "REFT moves fewer bytes down and in all than FedAvg in every (partition, seed)",
            "verdict": "reproduced"
            if (pair["mb_down"] < pair["mb_down_fedavg"]).all() and (pair["mb_total"] < pair["mb_total_fedavg"]).all()
            else "not reproduced",
        },
        {
            "claim of the paper's abstract": "Accuracy is maintained",
            "measured here": "final accuracy, REFT − FedAvg (points, 95% CI over seeds): "
            + "; ".join(f"{p} {iv}" for p, (iv, _) in acc_vs.items()),
            "rule": "per partition, REFT's verdict against FedAvg by the rule above (reproduced only where on par or "
            "better)",
            "verdict": verdict_acc,
        },
        {
            "claim of the paper's abstract": "Better downstream efficiency than the baselines",
            "measured here": "MB down, mean: "
            + ", ".join(f"{METHODS[m]} {g['mb_down'].mean():.2f}" for m, g in comp.groupby("method", sort=False)),
            "rule": "REFT has the fewest bytes down of all methods in every (partition, seed)",
            "verdict": "reproduced" if (least_down["method"] == "reft").all() else "not reproduced",
        },
        {
            "claim of the paper's abstract": "Heterogeneous architectures train together",
            "measured here": "distilled server − mean client model (points, 95% CI over seeds): "
            + "; ".join(f"{p} {interval(d.mean, d.low, d.high)}" for p, d in kd.items()),
            "rule": "the distilled dense model is better than the mean of the pruned client models (paired rule)",
            "verdict": "; ".join(
                f"{p}: {'reproduced' if d.verdict == 'better' else AS_CLAIM[d.verdict]}" for p, d in kd.items()
            ),
        },
    ]


def claims() -> str:
    return markdown(pd.DataFrame(claim_rows()))


def gflops_by_tier() -> str:
    """Notebook 03, IID: client training GFLOPs per round, by tier."""
    t = results("03_comparison")
    cols = [c for c in t.columns if c.startswith("client_gflops[")]
    t = t[t["partition"] == "iid"].groupby("method", sort=False)[cols].mean().reset_index()  # mean over seeds
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


# The front page's commands (and the quick profile between them), with each profile's measured notebook time
COMMANDS = {
    "smoke": "make reproduce PROFILE=smoke",
    "quick": "make reproduce PROFILE=quick",
    "fmnist": "make reproduce",
}


def run_profiles() -> str:
    """Each front-page command's measured notebook time, from results/<profile>/RUN.csv and the commit in its
    RUN.md (written by reft.reproduce); "not measured yet" for a profile that has no run record."""
    rows = []
    for profile, command in COMMANDS.items():
        run, record = RESULTS / profile / "RUN.csv", RESULTS / profile / "RUN.md"
        if run.is_file():
            t = pd.read_csv(run, dtype={"commit": str}).set_index("notebook")
            header = re.search(r"^- commit: (\w+)", record.read_text(), re.M) if record.is_file() else None
            commits = set(t["commit"].drop("total", errors="ignore")) if "commit" in t else set()
            n = len(t) - ("total" in t.index)
            measured = f"{t.loc['total', 'seconds']:.0f} s ({t.loc['total', 'seconds'] / 60:.1f} min), {n} notebooks"
            where = f"[results/{profile}/RUN.md](results/{profile}/RUN.md)"
            if len(commits) > 1:  # a notebook re-run alone (--only) at a later commit
                where += ", commits per notebook there"
            elif commits and commits != {"-"}:
                where += f", commit {commits.pop()}"
            elif header:
                where += f", commit {header.group(1)}"
        else:
            measured, where = "not measured yet", "-"
        rows.append({"command": f"`{command}`", "profile": f"`{profile}`", "notebook time, measured": measured,
                     "record": where})  # fmt: skip
    return markdown(pd.DataFrame(rows))


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


def final_acc(t: pd.DataFrame) -> list[str]:
    """A summary's final accuracy as ``mean ± half-width`` in percent, row by row."""
    return [pm(*r) for r in zip(t["final_acc_mean"], t["final_acc_ci_low"], t["final_acc_ci_high"], strict=True)]


def differences(t: pd.DataFrame) -> list[str]:
    """A versus table's paired differences with their intervals; ``reference`` where there is none."""
    cols = zip(t["diff_mean"], t["diff_ci_low"], t["diff_ci_high"], strict=True)
    return ["reference" if pd.isna(m) else interval(m, lo, hi) for m, lo, hi in cols]


def selection() -> str:
    """Notebook 02: REFT's server-model choices on the same federation, against kd_loss, paired by seed."""
    s, v = results("02_selection_summary"), results("02_selection_versus")
    t = s.merge(v, on=["partition", "variant"], how="left")
    return markdown(
        pd.DataFrame(
            {
                "partition": t["partition"],
                "variant": t["variant"],
                "seeds": t["final_acc_n"],
                "final acc (%), mean ± 95% CI": final_acc(t),
                "largest one-round drop (points), mean": (100 * t["largest_drop_mean"]).map(lambda x: f"{x:.1f}"),
                "variant − kd_loss (points), 95% CI": differences(t),
                "verdict vs kd_loss": t["verdict"].fillna("-"),
            }
        )
    )


def codecs() -> str:
    """Notebook 03: each method's upload codecs against its fp32 runs, paired by seed, with the Ledger's MB."""
    s, v = results("03_codecs_summary"), results("03_codecs_versus")
    t = s.merge(v, on=["method", "partition", "codec_up"], how="left")
    return markdown(
        pd.DataFrame(
            {
                "method": t["method"].map(lambda m: METHODS.get(m, m)),
                "partition": t["partition"],
                "upload codec": t["codec_up"],
                "seeds": t["final_acc_n"],
                "final acc (%), mean ± 95% CI": final_acc(t),
                "codec − fp32 (points), 95% CI": differences(t),
                "verdict vs fp32": t["verdict"].fillna("-"),
                "MB up": t["mb_up_mean"].map(lambda x: f"{x:.2f}"),
                "MB down": t["mb_down_mean"].map(lambda x: f"{x:.2f}"),
                "MB total": t["mb_total_mean"].map(lambda x: f"{x:.2f}"),
            }
        )
    )


def flower_parity() -> str:
    """scripts/flower_parity.py: every method on the in-process engine and on Flower's deployment engine
    (same seed, one torch thread per process), with fp32 and with int8 uploads."""
    t = results("flower_parity")

    def yes(v: object) -> str:
        return "yes" if str(v) == "True" else "no"

    return markdown(
        pd.DataFrame(
            {
                "method": t["algorithm"].map(lambda m: METHODS.get(m, m)),
                "upload codec": t["codec_up"],
                "engine": t["engine"],
                "final acc (%)": (100 * t["final_acc"]).map(lambda x: f"{x:.2f}"),
                "bytes up": t["bytes_up"].map(lambda x: f"{int(x):,}"),
                "bytes down": t["bytes_down"].map(lambda x: f"{int(x):,}"),
                "same acc as in-process": t["same_acc"].map(yes),
                "same bytes as in-process": t["same_bytes"].map(yes),
            }
        )
    )


def _median_run(t: pd.DataFrame) -> pd.DataFrame:
    """Per (algorithm, phase), the median over repeats (``rep``) of seconds and of the sustained rate;
    GFLOP/s, shares and % of sustained recomputed from those medians."""
    g = t.groupby(["algorithm", "phase"], sort=False)
    m = g.agg(seconds=("seconds", "median"), gflop=("gflop", "first"), sustained=("sustained_gflop_per_s", "median"))
    m = m.reset_index()
    wall = m.groupby("algorithm")["seconds"].transform("sum")
    m["share_pct"] = 100 * m["seconds"] / wall
    m["gflop_per_s"] = (m["gflop"] / m["seconds"]).where(m["gflop"] > 0)
    m["pct_of_sustained"] = 100 * m["gflop_per_s"] / m["sustained"]
    return m


def bench() -> str:
    """python -m reft.bench before and after the speed work (results/fmnist/bench_before.csv, bench_after.csv,
    three alternating repeats each): per phase of REFT and FedAvg rounds, the median seconds, share and
    achieved GFLOP/s against the sustained rate."""
    b, a = _median_run(results("bench_before")), _median_run(results("bench_after"))
    rows = []
    for alg in ("reft", "fedavg"):
        bb, aa = b[b["algorithm"] == alg].set_index("phase"), a[a["algorithm"] == alg].set_index("phase")
        for ph in aa.index:
            before = bb.loc[ph] if ph in bb.index else None
            rows.append({
                "method": METHODS[alg],
                "phase": ph,
                "before: s (share)": "-" if before is None else f"{before['seconds']:.2f} ({before['share_pct']:.0f}%)",
                "after: s (share)": f"{aa.loc[ph, 'seconds']:.2f} ({aa.loc[ph, 'share_pct']:.0f}%)",
                "after: GFLOP/s": fmt(aa.loc[ph, "gflop_per_s"], ".0f", "-"),
                "after: % of sustained": fmt(aa.loc[ph, "pct_of_sustained"], ".0f", "-"),
            })  # fmt: skip
        total = {"before: s (share)": f"{bb['seconds'].sum():.2f}", "after: s (share)": f"{aa['seconds'].sum():.2f}"}
        sb, sa = bb["sustained"].iloc[0], aa["sustained"].iloc[0]
        rate = {"after: GFLOP/s": f"sustained: {sb:.0f} before, {sa:.0f} after", "after: % of sustained": "-"}
        rows.append({"method": METHODS[alg], "phase": "**all phases**", **total, **rate})
    return markdown(pd.DataFrame(rows))


def bf16() -> str:
    """python -m reft.bench with both precisions at 1 and 2 threads, in one process (bench_bf16_precision.csv):
    seconds per phase group, fp32 -> bf16, and the speed-up; client training summed over the tiers."""
    t = results("bench_bf16_precision")
    t["group"] = t["phase"].where(~t["phase"].str.startswith("client training ["), "client training (all tiers)")
    threads = sorted(int(n) for n in t["threads"].unique())

    def cells(g: pd.DataFrame) -> dict[str, str]:
        by = g.groupby("threads")[["fp32_s", "bf16_s"]].sum()
        f32, b16 = by["fp32_s"], by["bf16_s"]
        return {f"{n} thread{'s' if n > 1 else ''}: fp32 → bf16 s (speed-up)":
                f"{f32[n]:.2f} → {b16[n]:.2f} ({f32[n] / b16[n]:.2f}x)" for n in threads}  # fmt: skip

    rows = []
    for alg, ga in t.groupby("algorithm", sort=False):
        for group, gg in ga.groupby("group", sort=False):
            if gg["fp32_s"].max() >= 0.5:  # the smaller phases are in the CSV
                rows.append({"method": METHODS[alg], "phase": group, **cells(gg)})
        rows.append({"method": METHODS[alg], "phase": "**all phases**", **cells(ga)})
    return markdown(pd.DataFrame(rows))


def amp_check() -> str:
    """scripts/amp_check.py: final accuracy in fp32 and bf16, paired by seed, and bf16 - fp32 with the verdict."""
    v = results("amp_check_versus")
    s = stats.summarize(results("amp_check"), ["method", "partition", "precision"], ["final_acc", "wall_s"])
    keys = v[["method", "partition"]]
    f32, b16 = (keys.merge(s[s["precision"] == p], on=["method", "partition"], how="left") for p in ("fp32", "bf16"))
    walls = zip(f32["wall_s_mean"], b16["wall_s_mean"], strict=True)
    return markdown(pd.DataFrame({
        "method": v["method"].map(METHODS), "partition": v["partition"], "seeds": v["seeds"],
        "fp32: final acc (%)": final_acc(f32), "bf16: final acc (%)": final_acc(b16),
        "bf16 − fp32 (points, 95% CI)": differences(v), "verdict": v["verdict"],
        "run wall s, fp32 → bf16": [f"{a:.0f} → {b:.0f}" for a, b in walls],
    }))  # fmt: skip


def step_costs() -> str:
    """scripts/step_costs.py: one SGD step (batch 64, one thread) per tier's pruned cnn, median ms."""
    t = results("step_costs")
    return markdown(pd.DataFrame({
        "tier": t["tier"], "widths": t["widths"], "before (ms)": t["before"].map("{:.1f}".format),
        "after, fp32": t["after fp32"].map("{:.1f}".format), "after, bf16": t["after bf16"].map("{:.1f}".format),
        "+ foreach SGD": t["after bf16 foreach"].map("{:.1f}".format),
        "+ torch.compile (compile s)": [f"{a:.1f} ({c:.0f} s)" for a, c in zip(t["after bf16 compiled"],
                                                                              t["compile_s"], strict=True)],
        "before / after bf16": t["before/after_bf16"].map("{:.2f}x".format),
    }))  # fmt: skip


def _block_rows(text: str, name: str) -> list[dict[str, str]]:
    """The rows of the table printed between the ``name`` markers, as {header: cell}."""
    body = text.split(f"<!-- BEGIN {name} -->")[1].split(f"<!-- END {name} -->")[0]
    lines = [ln for ln in body.strip().splitlines() if ln.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    return [dict(zip(header, [c.strip() for c in ln.strip().strip("|").split("|")], strict=True)) for ln in lines[2:]]


def verdict_problems(text: str, versus: pd.DataFrame) -> list[str]:
    """Rows of the README's main table whose verdict is not what the rule of reft/stats.py gives for the
    interval in ``versus`` (03_versus.csv), or that name a comparison the CSV does not hold. Independent
    of :func:`main_results`: it reads the printed table back."""
    name_of = {v: k for k, v in METHODS.items()}
    csv = versus.set_index(["partition", "method"])
    problems = []
    for row in _block_rows(text, "main-results"):
        if row["verdict vs REFT"] == "-":
            continue
        key = (row["partition"], name_of.get(row["method"], row["method"]))
        if key not in csv.index:
            problems.append(f"{key}: not in 03_versus.csv")
            continue
        r = csv.loc[key]
        expected = stats.verdict(float(r["diff_ci_low"]), float(r["diff_ci_high"]))
        if row["verdict vs REFT"] != expected or r["verdict"] != expected:
            problems.append(f"{key}: the table says {row['verdict vs REFT']!r}, the rule gives {expected!r}")
    return problems


def stands_problems(text: str, versus: pd.DataFrame) -> list[str]:
    """Methods the printed "where REFT stands" table puts in a column other than the one the rule of
    reft/stats.py gives for REFT against them (03_versus.csv holds method - REFT, so REFT - method flips)."""
    column = {"better": "REFT is worse than", "worse": "REFT is better than", "on par": "on par (within ±1 point)",
              "inconclusive": "inconclusive"}  # fmt: skip
    printed = {r["partition"]: r for r in _block_rows(text, "where-reft-stands")}
    problems = []
    for r in versus.itertuples(index=False):
        row = printed.get(r.partition)
        if row is None:
            problems.append(f"{r.partition}: not in the table")
            continue
        want = column[stats.verdict(r.diff_ci_low, r.diff_ci_high)]
        name = re.escape(METHODS.get(r.method, r.method))
        where = [h for h, cell in row.items() if re.search(rf"(^|, ){name} \([+-]", cell)]
        if where != [want]:
            problems.append(f"{(r.partition, r.method)}: the table puts it under {where}, the rule gives {want!r}")
    return problems


def claim_problems(text: str, versus: pd.DataFrame) -> list[str]:
    """The printed claims table's "Accuracy is maintained" verdict against the rule of reft/stats.py on
    REFT vs FedAvg in 03_versus.csv, partition by partition."""
    (row,) = [r for r in _block_rows(text, "claims") if r["claim of the paper's abstract"] == "Accuracy is maintained"]
    printed = dict(part.split(": ", 1) for part in row["verdict"].split("; "))
    problems = []
    for r in versus[versus["method"] == "fedavg"].itertuples(index=False):
        want = AS_CLAIM[FLIP[stats.verdict(r.diff_ci_low, r.diff_ci_high)]]
        if printed.get(r.partition) != want:
            problems.append(f"{r.partition}: the table says {printed.get(r.partition)!r}, the rule gives {want!r}")
    return problems


BLOCKS: dict[str, Callable[[], str]] = {
    "run-profiles": run_profiles,
    "speedups": speedups,
    "peer-fidelity": peer_fidelity,
    "main-results": main_results,
    "where-reft-stands": where_reft_stands,
    "gflops-by-tier": gflops_by_tier,
    "selection": selection,
    "codecs": codecs,
    "flower-parity": flower_parity,
    "claims": claims,
    "tiers": tiers,
    "run-times": run_times,
    "bench": bench,
    "bf16": bf16,
    "amp-check": amp_check,
    "step-costs": step_costs,
}
# Which page (relative to the repository root) holds which blocks; every block is in exactly one page
PAGES: dict[str, tuple[str, ...]] = {
    "README.md": ("run-profiles", "claims", "main-results"),
    "docs/setup.md": ("tiers", "speedups"),
    "docs/results.md": ("where-reft-stands", "gflops-by-tier", "selection"),
    "docs/peers.md": ("peer-fidelity",),
    "docs/codecs.md": ("codecs",),
    "docs/flower.md": ("flower-parity",),
    "docs/performance.md": ("bench", "bf16", "amp-check", "step-costs", "run-times"),
}
PAGE_OF = {name: page for page, names in PAGES.items() for name in names}
assert sorted(PAGE_OF) == sorted(BLOCKS) and sum(map(len, PAGES.values())) == len(BLOCKS), "place each block once"


def render(text: str, names: tuple[str, ...] | None = None) -> str:
    """``text`` with its blocks rebuilt. ``names``: the blocks it must hold, exactly (default: every block);
    an unknown, missing or misplaced block is an error."""
    names = tuple(BLOCKS) if names is None else names
    found = re.findall(r"<!-- BEGIN ([\w-]+) -->", text)
    if sorted(found) != sorted(names):
        raise ValueError(f"blocks {sorted(found)} do not match the ones this page holds, {sorted(names)}.")
    for name in names:
        block = f"<!-- BEGIN {name} -->\n{BLOCKS[name]()}\n<!-- END {name} -->"
        text = re.sub(rf"<!-- BEGIN {name} -->.*?<!-- END {name} -->", lambda m, b=block: b, text, flags=re.S)
    return text


def page_text(block: str) -> str:
    """The current text of the page that holds ``block``."""
    return (ROOT / PAGE_OF[block]).read_text()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="exit 1 if a page's blocks differ from the CSVs")
    ap.add_argument("--list", action="store_true", help="print which page holds which block")
    args = ap.parse_args(argv)
    if args.list:
        for page, names in PAGES.items():
            print(f"{page}: {', '.join(names)}")
        return 0
    stale = []
    for page, names in PAGES.items():
        path = ROOT / page
        try:
            old = path.read_text()
            new = render(old, names)
        except (OSError, ValueError) as e:
            print(f"{page}: {e}", file=sys.stderr)
            return 1
        if new != old:
            stale.append(page)
            if not args.check:
                path.write_text(new)
    if args.check and stale:
        print(f"tables differ from results/ in {', '.join(stale)}: run scripts/readme_tables.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
