"""The printed table of ``bench/run.py``: its figures as Markdown, and the issue's targets met or not."""

from __future__ import annotations

import statistics
from dataclasses import dataclass


@dataclass
class Run:
    wall_s: float  # process start -> process exit
    first_mask_s: float  # process start -> first mask on disk (its mtime)
    last_mask_s: float  # process start -> last mask on disk
    masks: int
    peak_rss_mb: float
    returncode: int
    cpu_s: float = float("nan")  # the process's user + system CPU (wait4), start-up included


def med(runs: list[Run], field: str) -> float:
    return statistics.median(getattr(r, field) for r in runs)


def spread(runs: list[Run], field: str) -> str:
    xs = [getattr(r, field) for r in runs]
    return f"{min(xs):.2f}-{max(xs):.2f}" if len(xs) > 1 else ""


# -- printing ------------------------------------------------------------------------------------------
def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]
    line = lambda r: "| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)) + " |"  # noqa: E731
    return "\n".join([line(headers), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)])


def met(ok: bool) -> str:
    return "met" if ok else "NOT met"


def report(r: dict) -> str:
    m, model, n = r["machine"], r["model"], r["n"]
    out = ["## Machine", ""]
    out.append(
        f"- CPU: {m['cpu']}, {m['cores_available']} core(s) available to this process "
        f"(os.sched_getaffinity; os.cpu_count {m['cpu_count']}); {m['platform']}"
    )
    out.append(
        f"- python {m['python']}, onnxruntime {m['onnxruntime']}, opencv {m['opencv']}, numpy {m['numpy']}, "
        f"edge-seg {m['edge-seg']} (edge_runtime from {m['edge_runtime from']})"
    )
    out.append(f"- load average at start / end: {r['load_start']} / {r['load_end']}; CPU priority {r['priority']}")
    busy = r["busy_start"] or ["none"]
    out.append("- other busy processes at start: " + "; ".join(busy))
    if r["busy_end"]:
        out.append("- other busy processes at end: " + "; ".join(r["busy_end"]))
    out.append(
        f"- model: {model['name']} {model['version']} ({model['architecture']}, input {model['input']}, "
        f"{model['parameters']} parameters, {model['gmac']} GMAC/scan)"
    )
    rounds = f", {r['rounds']} alternating rounds of the steady state and the bound" if r.get("rounds") else ""
    out.append(f"- {n} scans ({r['scan_sizes']}), {r['repeats']} repeat(s) of each process run{rounds}; medians shown")
    if "work" in r:
        w = r["work"]
        later = f", {w['create_ms_later']:.3f} ms after the process runs" if "create_ms_later" in w else ""
        out.append(
            f"- work folder {w['folder']}: creating a file there takes {w['create_ms']:.3f} ms (median) "
            f"at the start{later}"
        )
    out.append("")

    e2e, cold = r.get("e2e", {}), r.get("cold", {})
    if e2e:
        out += [f"## 1. End to end, {n} scans: process start -> last mask", ""]
        rows = []
        for name in PIPELINE_NAMES:
            if name not in e2e:
                continue
            runs = [Run(**x) for x in e2e[name]]
            last = med(runs, "last_mask_s")
            rows.append(
                [
                    PIPELINE_NAMES[name],
                    f"{last:.2f}",
                    f"{n / last:.1f}",
                    f"{med(runs, 'wall_s'):.2f}",
                    f"{med(runs, 'cpu_s') * 1000.0 / n:.1f}",
                    spread(runs, "last_mask_s"),
                ]
            )
        heads = ["pipeline", "to last mask (s)", "scans/s", "to exit (s)", "CPU ms/scan (user+sys)", "range (s)"]
        out.append(table(heads, rows))
        out += ["", "CPU: the whole process's user + system time (its rusage), start-up included, over the scans."]
        if "edge-seg" in e2e:
            mine = med([Run(**x) for x in e2e["edge-seg"]], "last_mask_s")
            for name, label, goal in (("blog", "the blog's FCN pipeline", 4), ("seed", "same-architecture Keras", 0)):
                if name in e2e:
                    ratio = med([Run(**x) for x in e2e[name]], "last_mask_s") / mine
                    if goal:
                        r["targets"].append(
                            (
                                f"one-shot e2e vs {label}, start-up included",
                                f"{ratio:.1f}x",
                                f">= {goal}x",
                                ratio >= goal,
                            )
                        )
                    out.append(f"edge-seg / {PIPELINE_NAMES[name]} scans/s: **{ratio:.1f}x**")
            cpu = med([Run(**x) for x in e2e["edge-seg"]], "cpu_s") * 1000.0 / n
            work = r["serial"]["total"]["cpu_ms"]  # the model alone on one thread + the image work, one scan
            r["targets"].append(
                (
                    f"CPU per scan e2e, start-up included, {n} scans, over the model + image work ({work:.1f} ms)",
                    f"{cpu / work:.2f}x ({cpu:.1f} ms)",
                    "<= 1.2x",
                    cpu <= 1.2 * work,
                )
            )
            rss = med([Run(**x) for x in e2e["edge-seg"]], "peak_rss_mb")
            r["targets"].append((f"peak memory of a one-shot run, {n} scans", f"{rss:.0f} MB", "<= 250 MB", rss <= 250))
        out.append("")
    if cold:
        out += ["## 2. Cold start: process start -> first mask, one scan", ""]
        rows = []
        for name in PIPELINE_NAMES:
            if name not in cold:
                continue
            runs = [Run(**x) for x in cold[name]]
            rows.append(
                [
                    PIPELINE_NAMES[name],
                    f"{med(runs, 'first_mask_s'):.2f}",
                    f"{med(runs, 'wall_s'):.2f}",
                    spread(runs, "first_mask_s"),
                ]
            )
        out.append(table(["pipeline", "to first mask (s)", "to exit (s)", "range (s)"], rows))
        for name, what, goal in (("edge-seg", "graph cache warm", 0.4), ("first-use", "first use on a machine", 0.8)):
            if name in cold:
                c = med([Run(**x) for x in cold[name]], "first_mask_s")
                r["targets"].append((f"cold start to first mask, {what}", f"{c:.2f} s", f"<= {goal} s", c <= goal))
        su = model.get("session_startup_ms")
        if su:
            out += [
                "",
                f"Session start-up of the model file ({model['precision']}, {model['file_mb']:.2f} MB), one thread: "
                f"{su['open_first_ms']:.0f} ms to open it the first time in this process (importing onnxruntime "
                f"included), then {su['open_ms']:.0f} ms (median); its first scan {su['first_run_ms']:.1f} ms."
                + (
                    f" From the graph cache: {su['open_cached_ms']:.0f} ms (median; building it, on the thread "
                    f"beside the open, took {su['build_ms']:.0f} ms)."
                    if "open_cached_ms" in su
                    else ""
                ),
            ]
        out.append("")

    s, p = r["serial"], r["steady"]
    out += ["## 3. Stage breakdown (edge-seg)", ""]
    out.append("One scan at a time on one thread, no overlap (median ms per scan; CPU = the thread's own time):")
    out.append("")
    labels = {
        "read": "read file",
        "sha256": "sha256 (ledger)",
        "decode": "decode (cv2.imdecode)",
        "preprocess": "preprocess (resize, min-max)",
        "inference": "inference, batch 1, one thread",
        "postprocess": "post-process (second stage on the crop, resize, threshold, opening)"
        if model.get("second_stage")
        else "post-process (resize, threshold, opening)",
        "encode": "PNG encode",
        "write": "atomic write with fsync",
        "write_nofsync": "(atomic write without fsync)",
        "total": "total (without the row in brackets)",
    }
    out.append(
        table(
            ["stage", "wall ms/scan", "CPU ms/scan"],
            [[labels[k], f"{v['ms']:.2f}", f"{v['cpu_ms']:.2f}"] for k, v in s.items()],
        )
    )
    others = {k: v["cpu_ms"] for k, v in s.items() if k not in ("inference", "total", "write_nofsync")}
    top = max(others, key=lambda k: others[k])
    rest = s["total"]["cpu_ms"] - s["inference"]["cpu_ms"]
    out += [
        "",
        f"Besides the model ({s['inference']['cpu_ms']:.2f} ms of CPU), the stages cost {rest:.2f} ms of CPU a scan; "
        f"the largest is **{labels[top]}: {others[top]:.2f} ms**.",
    ]
    if r.get("durability"):
        d = r["durability"]
        dlabels = {
            "ledger": "ledger: a begin and a done record",
            "mask_write": "mask: atomic write with fsync",
            "mask_write_nofsync": "(mask: atomic write without fsync)",
            "folder_fsync": "folder fsync, one a batch, per scan",
            "ledger_fsync": "ledger fsync, one a batch, per scan",
            "error_unlink": "old error file removed",
        }
        out += ["", "What makes a mask durable and recorded (560 x 360 empty mask, median per scan):", ""]
        rows = [[dlabels[k], f"{v['ms']:.3f}", f"{v['cpu_ms']:.3f}"] for k, v in d.items()]
        out.append(table(["step", "wall ms/scan", "CPU ms/scan"], rows))
    out += ["", f"In the pipeline (`Processor.process`, {n} scans, session warm; mean of `Outcome.timings`, ms/scan;"]
    out.append("stages run concurrently on different threads, so they add up to more than the wall time per scan):")
    out.append("")
    plabels = {
        "read": "read + sha256 + decode",
        "preprocess": "preprocess",
        "inference": "inference (batch share)",
        "postprocess": "post-process",
        "write": "PNG encode + atomic write",
    }
    out.append(table(["stage", "ms/scan"], [[plabels.get(k, k), f"{v:.2f}"] for k, v in p["stages_ms"].items()]))
    cpu_steady = f", {p['cpu_ms_per_scan']:.1f} ms of CPU a scan (all threads)" if "cpu_ms_per_scan" in p else ""
    out += [
        "",
        f"Wall: {p['ms_per_scan']:.2f} ms/scan = **{p['scans_per_s']:.1f} scans/s** steady state{cpu_steady}",
        "",
    ]
    if r.get("steady_rounds"):
        xs = r["steady_rounds"]
        out[-2] += f" (median of {len(xs)} rounds after a warm-up pass; range {min(xs):.1f}-{max(xs):.1f})."
    else:
        out[-2] += "."

    bounds = r["bound"]
    out += ["## 4. The bound: onnxruntime alone on preprocessed tensors", ""]
    if model.get("second_stage"):
        out += ["(The first stage only: the second pass runs on a crop the first stage gives, in post-processing.)", ""]
    sizes = sorted({bs for b in bounds.values() for bs in b}, key=int)
    out.append(
        table(
            ["session use", *[f"batch {bs}: scans/s (ms/scan)" for bs in sizes]],
            [
                [label, *[f"{b[bs]['scans_per_s']:.1f} ({b[bs]['ms_per_scan']:.2f})" for bs in sizes]]
                for label, b in bounds.items()
            ],
        )
    )
    best_label, best_bs, best = max(
        ((label, bs, x) for label, b in bounds.items() for bs, x in b.items()), key=lambda t: t[2]["scans_per_s"]
    )
    share = p["scans_per_s"] / best["scans_per_s"]
    latency = min(b[min(b, key=int)]["ms_per_scan"] for b in bounds.values())
    out += [
        "",
        f"Steady-state pipeline {p['scans_per_s']:.1f} scans/s = **{share:.1%}** of the bound, the fastest row and "
        f"batch above ({best['scans_per_s']:.1f} scans/s: {best_label}, batch {best_bs}).",
        *(
            [
                f"Paired by round (each round's steady state over that round's fastest bound figure): "
                f"{min(r['share_rounds']):.1%}-{max(r['share_rounds']):.1%}, median "
                f"{statistics.median(r['share_rounds']):.1%}."
            ]
            if r.get("share_rounds")
            else []
        ),
        f"Model at batch 1, fastest way: {latency:.1f} ms/scan (budget <= 25 ms); "
        f"{model['parameters']} parameters, {model['gmac']} GMAC/scan.",
        "",
    ]
    # The share of the bound and the model's latency are diagnostics now (issue 14), not targets.

    out += ["## 5. Memory and installed size", ""]
    rows = []
    for name in PIPELINE_NAMES:
        if name not in e2e and name not in r.get("sizes", {}):
            continue
        row = [PIPELINE_NAMES[name]]
        row.append(f"{med([Run(**x) for x in e2e[name]], 'peak_rss_mb'):.0f}" if name in e2e else "-")
        row.append(f"{med([Run(**x) for x in cold[name]], 'peak_rss_mb'):.0f}" if name in cold else "-")
        size = r.get("sizes", {}).get(name)
        row.append(f"{size['site_packages_mb']:.0f} ({size['without_pip_mb']:.0f})" if size else "(run with --sizes)")
        rows.append(row)
    out.append(
        table(
            ["pipeline", f"peak RSS, {n} scans (MB)", "peak RSS, 1 scan (MB)", "site-packages MB (without pip)"], rows
        )
    )
    out.append(
        "\nPeak RSS: GNU time's `%M` for the process"
        if r.get("gnu_time")
        else "\nPeak RSS: an upper bound (no /usr/bin/time: wait4 also counts the benchmark's own memory)"
    )
    for name, size in r.get("sizes", {}).items():
        big = ", ".join(f"{k} {v:.0f}" for k, v in size["largest_mb"].items())
        out.append(f"\n{PIPELINE_NAMES[name]}: `pip install {' '.join(size['requirements'])}`; largest (MB): {big}")
    out.append("")

    out += ["## Targets (issue 30; printed, never asserted)", ""]
    out.append(table(["target", "measured", "goal", ""], [[a, b_, c, met(d)] for a, b_, c, d in r["targets"]]))
    out += ["", "Dice unchanged within 0.005 on `test`: `python -m bench.precision` (model card figures)."]
    return "\n".join(out)


PIPELINE_NAMES = {
    "blog": "blog: seed-fcn, one batch predict (TF/Keras)",
    "seed": "seed: same architecture, per-scan predict (TF/Keras)",
    "edge-seg": "edge-seg IN --out OUT",
    "first-use": "edge-seg, first use (empty graph cache)",
}
