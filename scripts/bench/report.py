#!/usr/bin/env python3
"""Turns altbench JSON results into the tables of BENCHMARKS.md and the plots in docs/bench/.

    python3 scripts/bench/report.py RESULTS.json [MORE.json ...] [--merge BIG.json]
                                    [--touch TOUCH.json] [--memory MEM.json] [--no-write]

Only the first file's numbers go into the tables and plots (ratios come from one run, as
the methodology asks); every further file is another invocation of the same command,
used only for the "between invocations" noise line. `--touch` adds the results of
`altbench run --systems shmq-touch ...` (the loan API with the payload left alone), used
only for the loan-API per-message-cost target. `--merge` adds the sizes of another
invocation that the first file lacks (the slow 256 MiB / 1 GiB cases, run fewer times). The generated markdown replaces the
text between `<!-- generated:begin -->` and `<!-- generated:end -->` in BENCHMARKS.md
(or is printed with --no-write). Needs python3 and matplotlib.
"""
import json
import math
import os
import statistics as st
import sys
from collections import defaultdict

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
DOCS = os.path.join(ROOT, "docs", "bench")
BENCH_MD = os.path.join(ROOT, "BENCHMARKS.md")
BEGIN, END = "<!-- generated:begin -->", "<!-- generated:end -->"

KI, MI, GI = 1024, 1024 ** 2, 1024 ** 3
ORDER = [
    "shmq copy", "shmq loan", "Unix socket", "pipe", "ipc-channel", "iceoryx2 copy",
    "iceoryx2 loan", "shaq (in place)", "crossbeam copy (threads)",
    "crossbeam in place (threads)",
]
TOPOS = [(1, 1), (2, 2), (4, 1)]


def size_label(s):
    for unit, name in ((GI, "GiB"), (MI, "MiB"), (KI, "KiB")):
        if s >= unit:
            return f"{s // unit} {name}"
    return f"{s} B"


def rate(x):
    if x >= 1e6:
        return f"{x / 1e6:.2f} M"
    if x >= 1e3:
        return f"{x / 1e3:.1f} k"
    return f"{x:.0f}"


def ns(x):
    if x is None:
        return "–"
    if x >= 1e6:
        return f"{x / 1e6:.2f} ms"
    if x >= 1e3:
        return f"{x / 1e3:.2f} µs"
    return f"{x:.0f} ns"


def spread(vals):
    """(max - min) / median, as a percentage."""
    if len(vals) < 2:
        return None
    m = st.median(vals)
    return 100.0 * (max(vals) - min(vals)) / m if m else None


def topo_label(t):
    return f"{t[0]}→{t[1]}"


class Results:
    def __init__(self, d):
        self.d = d
        self.tp = defaultdict(list)  # (label, size, p, c) -> [row]
        for r in d["throughput"]:
            self.tp[(r["label"], r["size"], r["producers"], r["consumers"])].append(r)
        self.phys = defaultdict(list)
        for r in d.get("physical", []):
            self.phys[r["size"]].append(r)
        self.lat = defaultdict(list)
        for r in d.get("latency", []):
            self.lat[(r["sys"], r["mode"])].append(r)
        self.sizes = sorted({r["size"] for r in d["throughput"]} | set(self.phys))
        self.labels = [l for l in ORDER if any(k[0] == l for k in self.tp)]

    def med(self, label, size, topo, key="msgs_per_s"):
        rows = [r for r in self.tp.get((label, size) + tuple(topo), []) if r["ok"]]
        if not rows:
            return None, None
        vals = [r[key] for r in rows]
        return st.median(vals), spread(vals)

    def failed(self, label, size, topo):
        return [r for r in self.tp.get((label, size) + tuple(topo), []) if not r["ok"]]

    def memcpy(self, size):
        rows = self.phys.get(size)
        if not rows:
            return None
        return st.median(r["memcpy_gbps"] for r in rows)

    def phys_med(self, size, key):
        rows = self.phys.get(size)
        return st.median(r[key] for r in rows) if rows else None

    def lat_med(self, sys_, mode, which, q):
        rows = [r for r in self.lat.get((sys_, mode), []) if r["ok"] and r.get(which)]
        if not rows:
            return None, None
        vals = [r[which][q] for r in rows]
        return st.median(vals), spread(vals)


def throughput_tables(R):
    out = []
    for size in R.sizes:
        if not any(R.med(l, size, t)[0] for l in R.labels for t in TOPOS):
            continue
        mc = R.memcpy(size)
        head = f"#### {size_label(size)}"
        if mc:
            head += f" (single-thread memcpy: {mc:.1f} GB/s)"
        out.append(head + "\n")
        out.append("| system | " + " | ".join(topo_label(t) for t in TOPOS) + " |")
        out.append("|---|" + "---|" * len(TOPOS))
        for l in R.labels:
            cells = []
            for t in TOPOS:
                m, s = R.med(l, size, t)
                g, _ = R.med(l, size, t, "gbps")
                if m is None:
                    cells.append("FAILED" if R.failed(l, size, t) else "–")
                    continue
                sp = f" ±{s / 2:.0f}%" if s is not None else ""
                cells.append(f"{rate(m)}msg/s · {g:.2f} GB/s{sp}")
            if all(c == "–" for c in cells):
                continue
            label = l
            if l.startswith("iceoryx2"):
                label += " ¹"
            out.append(f"| {label} | " + " | ".join(cells) + " |")
        out.append("")
    out.append(
        "¹ iceoryx2 is publish–subscribe: 4→1 is four publishers on one service; 2→2 is "
        "**static round-robin** (producer *i* publishes to service *i* mod 2, one subscriber "
        "each), not competing consumers.\n"
    )
    return out


def ratio(a, b):
    return a / b if a and b else None


def fmt_ratio(x, digits=2):
    return f"{x:.{digits}f}×" if x is not None else "–"


def targets(R):
    out = []
    one = (1, 1)
    out.append("| target | measured (same run, 1→1 unless said) | met? |")
    out.append("|---|---|---|")
    big = [s for s in R.sizes if s >= MI]
    # copy API >= 1 MiB: >= 80% of memcpy and >= 10x Unix socket
    for s in big:
        g, _ = R.med("shmq copy", s, one, "gbps")
        u, _ = R.med("Unix socket", s, one, "gbps")
        mc = R.memcpy(s)
        if g is None:
            continue
        pm = 100 * g / mc if mc else None
        ru = ratio(g, u)
        if pm is not None:
            out.append(
                f"| copy API {size_label(s)}: ≥ 80% of memcpy | {g:.2f} GB/s = "
                f"{pm:.0f}% of {mc:.1f} GB/s | {'yes' if pm >= 80 else 'no'} |"
            )
        # What 10x would take: when the socket already reaches a tenth of single-thread
        # memcpy, no transport that copies once can be 10x faster.
        bound = ""
        if u and mc:
            bound = (f"; 10× would be {10 * u:.1f} GB/s = {1000 * u / mc:.0f}% of memcpy"
                     + (", beyond one copy's limit" if 10 * u > mc else ""))
        out.append(
            f"| copy API {size_label(s)}: ≥ 10× Unix socket | {fmt_ratio(ru, 1)} "
            f"(socket {u or 0:.2f} GB/s{bound}) | {'yes' if ru and ru >= 10 else 'no'} |"
        )
    # loan API per-message cost within 2x from 64 B to 1 GiB: the API's own cost, with the
    # payload left alone (only its first and last words written and read), from a
    # separate `--systems shmq-touch` invocation.
    T = getattr(R, "touch", None)
    if T:
        rows = []
        for s in T.sizes:
            if s < 64:
                continue
            npm, sp = T.med("shmq loan, payload untouched", s, one, "ns_per_msg")
            if npm:
                rows.append((s, npm))
        if rows:
            vals = [n for _, n in rows]
            worst = max(vals) / min(vals)
            detail = ", ".join(f"{size_label(s)} {ns(n)}" for s, n in rows)
            out.append(
                f"| loan API per-message cost within 2× from 64 B to 1 GiB (payload untouched; "
                f"separate invocation `{T.d['command']}`) | max ÷ min {worst:.1f}×: {detail} | "
                f"{'yes' if worst <= 2 else 'no'} |"
            )
    m64, _ = R.med("shmq copy", 64, one)
    u64, _ = R.med("Unix socket", 64, one)
    if m64:
        r = ratio(m64, u64)
        out.append(
            f"| 64 B: ≥ 3× Unix socket (aim ≥ 10 M msg/s) | {rate(m64)}msg/s = "
            f"{fmt_ratio(r, 1)} Unix socket | {'yes' if r and r >= 3 else 'no'}"
            f"{'' if m64 >= 10e6 else ' (aim of 10 M/s: no)'} |"
        )
    for mode, lim, lname in (("spin", 200, "200 ns"), ("sleep", 5000, "5 µs")):
        p50, _ = R.lat_med("shmq", mode, "oneway", "p50")
        h, _ = R.lat_med("shmq", mode, "rtt", "p50")
        if p50 is None:
            continue
        ref = ""
        if mode == "spin":
            xb, _ = R.lat_med("crossbeam", "spin", "oneway", "p50")
            if xb:
                ref = f"; crossbeam between two threads (no process boundary): {ns(xb)}"
        else:
            pp, _ = R.lat_med("pipe", "sleep", "oneway", "p50")
            if pp:
                ref = f"; a pipe (kernel wake-up, same run): {ns(pp)}"
        out.append(
            f"| one-way p50 ≤ {lname} receiver {'spinning' if mode == 'spin' else 'asleep'} | "
            f"{ns(p50)} by timestamp, {ns(h / 2 if h else None)} as RTT/2{ref} | "
            f"{'yes' if p50 <= lim else 'no'} |"
        )
    a, _ = R.lat_med("shmq", "spin", "oneway", "p50")
    b, _ = R.lat_med("iceoryx2", "spin", "oneway", "p50")
    if a and b:
        out.append(
            f"| within 1.5× of iceoryx2 1→1 latency (p50 one-way, spinning) | shmq {ns(a)} vs "
            f"iceoryx2 {ns(b)} = {fmt_ratio(a / b)} | {'yes' if a <= 1.5 * b else 'no'} |"
        )
    # Ahead of iceoryx2 on work distribution to several consumers. The matrix has 2->2
    # (not 1->N): shmq's consumers compete for every message; iceoryx2 can only split work
    # statically (producer i publishes to consumer i mod 2's service).
    topo = (2, 2)
    rows = []
    for sz in R.sizes:
        a, _ = R.med("shmq copy", sz, topo)
        b, _ = R.med("iceoryx2 copy", sz, topo)
        if a and b:
            rows.append((sz, a / b))
    if rows:
        lo = min(r for _, r in rows)
        detail = ", ".join(f"{size_label(sz)} {fmt_ratio(r)}" for sz, r in rows)
        out.append(
            f"| ahead of iceoryx2 distributing work to several consumers (2→2, copy API, "
            f"msg/s ÷ msg/s; iceoryx2 static round-robin) | {detail} | "
            f"{'yes' if lo > 1 else 'not at every size'} |"
        )
    out.append("")
    return out


def ratio_table(R):
    out = ["| size | shmq copy ÷ Unix socket | shmq loan ÷ Unix socket | shmq copy ÷ iceoryx2 copy "
           "| shmq loan ÷ iceoryx2 loan | shmq copy % memcpy | shmq loan ÷ crossbeam in place |",
           "|---|---|---|---|---|---|---|"]
    one = (1, 1)
    for s in R.sizes:
        c, _ = R.med("shmq copy", s, one)
        l, _ = R.med("shmq loan", s, one)
        if not c:
            continue
        u, _ = R.med("Unix socket", s, one)
        ic, _ = R.med("iceoryx2 copy", s, one)
        il, _ = R.med("iceoryx2 loan", s, one)
        xb, _ = R.med("crossbeam in place (threads)", s, one)
        g, _ = R.med("shmq copy", s, one, "gbps")
        mc = R.memcpy(s)
        out.append(
            f"| {size_label(s)} | {fmt_ratio(ratio(c, u))} | {fmt_ratio(ratio(l, u))} | "
            f"{fmt_ratio(ratio(c, ic))} | {fmt_ratio(ratio(l, il))} | "
            f"{f'{100 * g / mc:.0f}%' if g and mc else '–'} | {fmt_ratio(ratio(l, xb))} |"
        )
    out.append("")
    return out


def latency_table(R):
    out = ["| system | receiver | one-way p50 / p99 / p99.9 (timestamp) | RTT/2 p50 | "
           "RTT p50 / p99 / p99.9 | spread of p50 between runs |",
           "|---|---|---|---|---|---|"]
    syss = ["shmq", "iceoryx2", "shaq", "uds", "pipe", "ipc-channel", "crossbeam"]
    names = {"uds": "Unix socket", "crossbeam": "crossbeam (threads)"}
    for mode in ("spin", "sleep"):
        for s in syss:
            o = [R.lat_med(s, mode, "oneway", q)[0] for q in ("p50", "p99", "p999")]
            r = [R.lat_med(s, mode, "rtt", q)[0] for q in ("p50", "p99", "p999")]
            if o[0] is None:
                continue
            _, sp = R.lat_med(s, mode, "oneway", "p50")
            out.append(
                f"| {names.get(s, s)} | {'spinning' if mode == 'spin' else 'asleep'} | "
                f"{' / '.join(ns(x) for x in o)} | {ns(r[0] / 2 if r[0] else None)} | "
                f"{' / '.join(ns(x) for x in r)} | {f'±{sp / 2:.0f}%' if sp is not None else '–'} |"
            )
    out.append("")
    return out


def memory_table(R):
    if getattr(R, "memory", None):
        R = R.memory
    out = [f"From `{R.d['command']}`.", "","| size | system | /dev/shm | producer VmRSS growth | consumer VmRSS growth | "
           "consumer RssShmem |", "|---|---|---|---|---|---|"]

    def mb(x):
        return f"{x / MI:.1f} MiB" if abs(x) >= MI else f"{x / KI:.0f} KiB"

    for s in R.sizes:
        for l in ["shmq copy", "shmq loan", "iceoryx2 loan", "shaq (in place)", "Unix socket"]:
            rows = [r for r in R.tp.get((l, s, 1, 1), []) if r["ok"]]
            if not rows:
                continue
            r = rows[0]
            prod = [x for x in r["rss"] if x[0] == "prod"]
            cons = [x for x in r["rss"] if x[0] == "cons"]
            if not prod or not cons:
                continue
            out.append(
                f"| {size_label(s)} | {l} | {mb(r['shm_bytes'])} | {mb(prod[0][3] - prod[0][2])} | "
                f"{mb(cons[0][3] - cons[0][2])} | {mb(cons[0][4])} |"
            )
    out.append("")
    return out


def phys_table(R):
    out = ["| size | memcpy (1 thread) | fill in place | read (word sum) |", "|---|---|---|---|"]
    for s in sorted(R.phys):
        mc = R.memcpy(s)
        out.append(
            f"| {size_label(s)} | {mc:.1f} GB/s ({ns(s / mc)}) | {ns(R.phys_med(s, 'fill_ns'))} | "
            f"{ns(R.phys_med(s, 'sum_ns'))} |"
        )
    out.append("")
    return out


def noise(R, others):
    sp = []
    for k, rows in R.tp.items():
        v = [r["msgs_per_s"] for r in rows if r["ok"]]
        s = spread(v)
        if s is not None:
            sp.append((s, k))
    out = []
    if sp:
        sp.sort()
        vals = [s for s, _ in sp]
        worst = sp[-1]
        out.append(
            f"Throughput, {len(vals)} cases × {R.d['runs']} interleaved runs: spread "
            f"(max − min) ÷ median is {st.median(vals):.0f}% at the median case, "
            f"{vals[int(0.9 * (len(vals) - 1))]:.0f}% at the 90th percentile, worst "
            f"{worst[0]:.0f}% ({worst[1][0]}, {size_label(worst[1][1])}, "
            f"{worst[1][2]}→{worst[1][3]}). Tables show median ± half that spread."
        )
    for o in others:
        O = Results(o)
        diffs = []
        for k in R.tp:
            a = R.med(k[0], k[1], k[2:])[0]
            b = O.med(k[0], k[1], k[2:])[0]
            if a and b:
                diffs.append(abs(a - b) / a * 100)
        if diffs:
            out.append(
                f"Between invocations (`{o['command']}` started {o['started_unix']} vs this one): "
                f"median |Δ| of the per-case medians {st.median(diffs):.0f}%, 90th percentile "
                f"{sorted(diffs)[int(0.9 * (len(diffs) - 1))]:.0f}%, over {len(diffs)} cases."
            )
    return out


def plots(R):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(DOCS, exist_ok=True)
    styles = {
        "shmq copy": dict(color="tab:red", marker="o", lw=2.5),
        "shmq loan": dict(color="darkred", marker="s", lw=2.5),
        "Unix socket": dict(color="tab:blue", marker="v"),
        "pipe": dict(color="tab:cyan", marker="^"),
        "ipc-channel": dict(color="tab:purple", marker="d"),
        "iceoryx2 copy": dict(color="tab:green", marker="o", ls="--"),
        "iceoryx2 loan": dict(color="darkgreen", marker="s", ls="--"),
        "shaq (in place)": dict(color="tab:orange", marker="P", ls="--"),
        "crossbeam copy (threads)": dict(color="gray", marker="x", ls=":"),
        "crossbeam in place (threads)": dict(color="black", marker="x", ls=":"),
    }
    cpu = R.d["machine"].get("cpu", "")
    foot = f"{cpu}, 2 cores (shared VM); median of {R.d['runs']} runs; every message checked"

    def tp_axes(ax, topo, key, ylabel):
        for l in R.labels:
            xs, ys = [], []
            for s in R.sizes:
                m, _ = R.med(l, s, topo, key)
                if m:
                    xs.append(s)
                    ys.append(m)
            if xs:
                ax.plot(xs, ys, label=l, ms=5, **styles.get(l, {}))
        if key == "gbps" and R.phys:
            xs = sorted(R.phys)
            ax.plot(xs, [R.memcpy(s) for s in xs], label="memcpy, 1 thread (limit)",
                    color="goldenrod", lw=3, alpha=0.6)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ticks = [s for s in R.sizes]
        ax.set_xticks(ticks)
        ax.set_xticklabels([size_label(s).replace(" ", "") for s in ticks], fontsize=8)
        ax.set_xlabel("message size")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)

    fig, axs = plt.subplots(1, 2, figsize=(14, 5.5))
    tp_axes(axs[0], (1, 1), "gbps", "GB/s (log)")
    axs[0].set_title("Throughput 1→1 across processes: bandwidth")
    tp_axes(axs[1], (1, 1), "msgs_per_s", "messages/s (log)")
    axs[1].set_title("Throughput 1→1 across processes: messages/s")
    h, l = axs[0].get_legend_handles_labels()
    fig.legend(h, l, loc="lower center", ncol=4, fontsize=8)
    fig.text(0.5, 0.005, foot, ha="center", fontsize=7, color="gray")
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    fig.savefig(os.path.join(DOCS, "throughput.png"), dpi=110)
    plt.close(fig)

    fig, axs = plt.subplots(1, 3, figsize=(18, 5.5), sharey=True)
    for ax, t in zip(axs, TOPOS):
        tp_axes(ax, t, "gbps", "GB/s (log)")
        ax.set_title(f"{topo_label(t)} across processes")
    h, l = axs[0].get_legend_handles_labels()
    fig.legend(h, l, loc="lower center", ncol=6, fontsize=8)
    fig.text(0.5, 0.005, foot + "; iceoryx2 2→2 is static round-robin over 2 services",
             ha="center", fontsize=7, color="gray")
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    fig.savefig(os.path.join(DOCS, "throughput_topologies.png"), dpi=100)
    plt.close(fig)

    syss = ["shmq", "iceoryx2", "shaq", "crossbeam", "pipe", "uds", "ipc-channel"]
    names = {"uds": "Unix socket", "crossbeam": "crossbeam\n(threads)"}
    fig, axs = plt.subplots(1, 2, figsize=(14, 5))
    for ax, mode in zip(axs, ("spin", "sleep")):
        present = [s for s in syss if R.lat_med(s, mode, "oneway", "p50")[0]]
        qs = [("p50", "p50"), ("p99", "p99"), ("p999", "p99.9")]
        w = 0.27
        for i, (q, qn) in enumerate(qs):
            vals = [R.lat_med(s, mode, "oneway", q)[0] for s in present]
            ax.bar([x + (i - 1) * w for x in range(len(present))], vals, w, label=qn,
                   color=["tab:red", "tab:orange", "gold"][i])
        ax.set_xticks(range(len(present)))
        ax.set_xticklabels([names.get(s, s) for s in present], fontsize=9)
        ax.set_yscale("log")
        ax.set_ylabel("one-way latency, ns (log)")
        ax.set_title("64 B one-way latency, receiver " + ("spinning" if mode == "spin" else
                                                           "asleep (100 µs between pings)"))
        ax.grid(True, axis="y", which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.text(0.5, 0.005, foot + "; one-way by CLOCK_MONOTONIC stamp in the payload",
             ha="center", fontsize=7, color="gray")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    fig.savefig(os.path.join(DOCS, "latency.png"), dpi=110)
    plt.close(fig)


def generate(R, others):
    m = R.d["machine"]
    out = [BEGIN, ""]
    out.append(
        f"Results of `{R.d['command']}` ({R.d['runs']} interleaved runs, {R.d['duration_s']:.0f} s "
        f"in all), shmq at `{m.get('shmq_commit', '?')}`, {m.get('rustc', '')}. "
        f"**Machine: {m.get('cpu', '')}, {m.get('cpus', '')} cores (shared KVM guest), "
        f"{m.get('kernel', '')}.** Every number below is from this machine and this one "
        f"invocation; ratios compare systems within it."
    )
    for mline in R.d.get("merged", []):
        out.append("")
        out.append(f"Merged from a separate invocation on the same machine: {mline}. Each size's "
                   "row comes from one invocation, so every ratio at a size is still same-run.")
    out.append("")
    out.append("### Noise")
    out.append("")
    out += noise(R, others)
    out.append("")
    out.append("### Targets")
    out.append("")
    out += targets(R)
    out.append("### Ratios, 1→1 (messages/s ÷ messages/s, same run)")
    out.append("")
    out += ratio_table(R)
    out.append("### Throughput by size and topology (median of runs, 2 cores)")
    out.append("")
    out.append("![throughput 1→1](docs/bench/throughput.png)")
    out.append("")
    out.append("![throughput by topology](docs/bench/throughput_topologies.png)")
    out.append("")
    out += throughput_tables(R)
    out.append("### Latency, 64 B ping-pong between two processes (2 cores)")
    out.append("")
    out.append("![latency](docs/bench/latency.png)")
    out.append("")
    out += latency_table(R)
    T = getattr(R, "touch", None)
    if T:
        out.append("### Loan API per-message cost, payload untouched (1→1)")
        out.append("")
        out.append(f"From `{T.d['command']}` ({T.d['runs']} runs): the producer loans `size` bytes, "
                   "writes only the first and last words, sends; the consumer checks those two words "
                   "and drops. What is left is the API's own per-message cost.")
        out.append("")
        out.append("| size | ns per message | msg/s | spread |")
        out.append("|---|---|---|---|")
        for s in T.sizes:
            npm, sp = T.med("shmq loan, payload untouched", s, (1, 1), "ns_per_msg")
            m, _ = T.med("shmq loan, payload untouched", s, (1, 1))
            if npm:
                out.append(f"| {size_label(s)} | {ns(npm)} | {rate(m)} | "
                           f"{f'±{sp / 2:.0f}%' if sp is not None else '–'} |")
        out.append("")
    out.append("### Physical limits, one thread")
    out.append("")
    out += phys_table(R)
    out.append("### Memory per queue at steady state (1→1, end of the case, queue still open)")
    out.append("")
    out += memory_table(R)
    if R.d.get("skipped"):
        out.append("### Not measured")
        out.append("")
        out += [f"- {s}" for s in R.d["skipped"]]
        out.append("")
    bad = [r for r in R.d["throughput"] if not r["ok"]] + [r for r in R.d["latency"] if not r["ok"]]
    if bad:
        out.append("### Failed cases")
        out.append("")
        for r in bad:
            out.append(f"- {r.get('label', r.get('sys'))} {size_label(r['size'])} run {r['run']}: "
                       f"{'; '.join(r['errors'])}")
        out.append("")
    out.append(END)
    return "\n".join(out)


def main(argv):
    write = "--no-write" not in argv
    merge = []
    while "--merge" in argv:
        i = argv.index("--merge")
        merge.append(json.load(open(argv[i + 1])))
        argv = argv[:i] + argv[i + 2:]
    memory = None
    if "--memory" in argv:
        i = argv.index("--memory")
        memory = json.load(open(argv[i + 1]))
        argv = argv[:i] + argv[i + 2:]
    touch = None
    if "--touch" in argv:
        i = argv.index("--touch")
        touch = json.load(open(argv[i + 1]))
        argv = argv[:i] + argv[i + 2:]
    files = [a for a in argv if not a.startswith("--")]
    if not files:
        print(__doc__)
        return 2
    ds = [json.load(open(f)) for f in files]
    for m in merge:
        # Other sizes from another invocation (e.g. the slow 256 MiB / 1 GiB cases with
        # fewer runs): their rows join the tables; ratios stay within each invocation
        # because every ratio compares systems at one size.
        have = {r["size"] for r in ds[0]["throughput"]}
        ds[0]["throughput"] += [r for r in m["throughput"] if r["size"] not in have]
        haveph = {r["size"] for r in ds[0].get("physical", [])}
        ds[0].setdefault("physical", []).extend(
            r for r in m.get("physical", []) if r["size"] not in haveph)
        ds[0].setdefault("skipped", []).extend(
            s for s in m.get("skipped", []) if s not in ds[0]["skipped"])
        ds[0].setdefault("merged", []).append(
            f"`{m['command']}` ({m['runs']} run{'s' if m['runs'] != 1 else ''}, "
            f"{m['duration_s']:.0f} s): sizes "
            + ", ".join(size_label(s) for s in sorted({r['size'] for r in m['throughput']} - have)))
    R = Results(ds[0])
    R.touch = Results(touch) if touch else None
    R.memory = Results(memory) if memory else None
    text = generate(R, ds[1:])
    plots(R)
    if not write:
        print(text)
        return 0
    md = open(BENCH_MD).read() if os.path.exists(BENCH_MD) else f"# Benchmarks\n\n{BEGIN}\n{END}\n"
    if BEGIN not in md:
        md += f"\n{BEGIN}\n{END}\n"
    pre, rest = md.split(BEGIN, 1)
    _, post = rest.split(END, 1)
    open(BENCH_MD, "w").write(pre + text + post)
    print(f"updated {BENCH_MD} and {DOCS}/*.png")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
