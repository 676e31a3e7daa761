"""Turn a harness report (JSON) into the table of docs/BENCHMARKS.md and the chart."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["chart", "small_tables", "table"]

BEGIN, END = "<!-- bench:results:begin -->", "<!-- bench:results:end -->"


def _f(value: float | None, digits: int = 0) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"


def _ratio(a: float | None, b: float | None) -> str:
    return "n/a" if not a or not b else f"{a / b:.2f}×"


def _verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("met" if ok else "**not met**")


def bars(report: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    s = report["summary"]
    emb, prod1, prod2 = (s.get(f"{k}.external_per_second") for k in ("embedded", "production_1", "production_2"))
    best = max(v for v in (emb, prod2) if v) if (emb or prod2) else None
    celery, apprise = s.get("celery.per_second"), s.get("apprise.per_second")
    ceiling_push = report["ceiling"].get("push")
    push, email, sms = (s.get(f"only_{c}.per_second") for c in ("push", "email", "sms"))
    inapp = report.get("inapp", {})
    gw = report.get("gateway", {})
    gw_best = max(gw.values(), key=lambda g: g["per_second"]) if gw else None
    rows = [
        ("mixed, email+SMS+push deliveries/s vs Celery peer", "≥ 10×",
         f"{_ratio(best, celery)} ({_f(best)} vs {_f(celery)}/s)",
         _verdict(best / celery >= 10 if best and celery else None)),
        ("mixed vs Apprise (email+SMS+push)", "≥ 20×",
         f"{_ratio(best, apprise)} ({_f(best)} vs {_f(apprise)}/s)",
         _verdict(best / apprise >= 20 if best and apprise else None)),
        ("push alone, deliveries/s vs the push ceiling", "≥ 0.5",
         f"{(push / ceiling_push if push and ceiling_push else 0):.2f} ({_f(push)} vs {_f(ceiling_push)}/s)",
         _verdict(push / ceiling_push >= 0.5 if push and ceiling_push else None)),
        ("email alone, deliveries/s", "≥ 1,000", _f(email), _verdict(email >= 1000 if email else None)),
        ("SMS alone, deliveries/s", "≥ 1,000", _f(sms), _verdict(sms >= 1000 if sms else None)),
        (f"in-app fan-out of {inapp.get('recipients', 0):,} recipients", "≤ 10 s",
         f"{_f(inapp.get('seconds'), 2)} s", _verdict((inapp.get("seconds") or 99) <= 10
                                                      if inapp else None)),
    ]
    if gw_best:
        rows.append(("gateway, single-recipient requests", "≥ 2,000/s, p99 < 50 ms",
                     "; ".join(f"{k}: {_f(g['per_second'])}/s, p99 {_f(g['p99_ms'], 1)} ms"
                               for k, g in gw.items()),
                     _verdict(gw_best["per_second"] >= 2000 and gw_best["p99_ms"] < 50)))
        rows.append(("a 10,000-recipient request accepted in", "< 250 ms",
                     "; ".join(f"{k}: {_f(g['bulk_accept_ms'])} ms" for k, g in gw.items()),
                     _verdict(min(g["bulk_accept_ms"] for g in gw.values()) < 250)))
    personal = s.get("personalised.external_per_second")
    if personal:
        rows.append(("personalised mixed (Hi {{ user.name }} in email, SMS, push) vs mixed, embedded",
                     "≥ 0.8×", f"{_ratio(personal, emb)} ({_f(personal)} vs {_f(emb)}/s)",
                     _verdict(personal / emb >= 0.8 if emb else None)))
    if prod1 and prod2:
        rows.append(("2 worker processes vs 1 (production, mixed)", "≥ 1.7×",
                     f"{_ratio(prod2, prod1)} ({_f(prod2)} vs {_f(prod1)}/s)", _verdict(prod2 / prod1 >= 1.7)))
    rows += _small_bars(report.get("small"))
    rss = [r["embedded"]["peak_rss_mb"] for r in report["rounds"]]
    big = report.get("big")
    if rss:
        small = max(max(x.values()) for x in rss)
        text = f"{_f(small)} MB at {report['rounds'][0]['embedded']['recipients']:,}"
        ok: bool | None = small < 300
        if big:
            text += f"; {_f(max(big['peak_rss_mb'].values()))} MB at {big['recipients']:,}"
            ok = ok and max(big["peak_rss_mb"].values()) < 300
        rows.append(("peak RSS per process", "flat, < 300 MB", text, _verdict(ok)))
    return rows


def _small_bars(small: dict[str, Any] | None) -> list[tuple[str, str, str, str]]:
    if not small:
        return []
    rows = []
    rates = {name: c["search"]["sustainable_rate"] for name, c in small["contenders"].items()
             if "search" in c}
    if rates:
        rows.append(("small traffic, sustainable notifications/s (accept p99 < 50 ms, "
                     "end-to-end p99 < 1 s, settled ≤ 2 s)", "no bar",
                     "; ".join(f"{k}: {_f(v)}" for k, v in rates.items()), "n/a"))
    if "gateway_alone" in small:
        best: dict[str, Any] | None = small["gateway_alone"]["best"]
        text = (f"{_f(best['rate'])}/s, p99 {_f(best['p99_ms'], 1)} ms" if best is not None
                else "no rate with p99 < 50 ms")
        rows.append(("gateway alone (embedded, no worker), open loop, single-recipient",
                     "≥ 2,000/s, p99 < 50 ms", text,
                     _verdict(best is not None and best["rate"] >= 2000)))
    return rows


def table(report: dict[str, Any]) -> str:
    lines = ["| figure | bar | this run (medians) | |", "|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in bars(report)]
    return "\n".join(lines)


def rounds_table(report: dict[str, Any]) -> str:
    head = "| contender | " + " | ".join(f"round {i + 1}" for i in range(len(report["rounds"]))) + " | median |"
    lines = [head, "|---" * (len(report["rounds"]) + 2) + "|"]
    names = {"embedded": "dispatcher, embedded (SQLite, 2 processes)",
             "personalised": "dispatcher, embedded, personalised (user.name in every part)",
             "production_1": "dispatcher, production, 1 worker process",
             "production_2": "dispatcher, production, 2 worker processes",
             "celery": "Celery 5 + boto3 + pyfcm (prefork 2)", "apprise": "Apprise (2 processes)"}
    for key, name in names.items():
        values = [r[key].get("external_per_second", r[key].get("per_second")) for r in report["rounds"] if key in r]
        if values:
            ordered = sorted(values)
            half = len(ordered) // 2
            median = ordered[half] if len(ordered) % 2 else sum(ordered[half - 1:half + 1]) / 2
            lines.append(f"| {name} | " + " | ".join(_f(v) for v in values) + f" | **{_f(median)}** |")
    return "\n".join(lines)


def small_tables(small: dict[str, Any]) -> str:
    """The small workload's tables: the fixed offers, CPU per process, the sustainable-rate
    search, the gateway alone (whichever the report has)."""
    parts = []
    runs = [(name, r) for name, c in small["contenders"].items() for r in c.get("runs", [])]
    if runs:
        parts += [_offers_table(runs), _cpu_table(runs)]
    searches = {name: c["search"] for name, c in small["contenders"].items() if "search" in c}
    if searches:
        parts.append(_search_table(searches))
    if small.get("gateway_alone"):
        parts.append(_gateway_alone_table(small["gateway_alone"]))
    return "\n\n".join(parts)


def _pair(r: dict[str, Any], key: str) -> str:
    return f"{_f(r[f'{key}_p50_ms'], 1)} / {_f(r[f'{key}_p99_ms'], 1)}"


def _settled(r: dict[str, Any]) -> str:
    if r["settle_seconds"] is None:
        return f"not ({r['unsettled']:,} open)"
    return f"{r['settle_seconds']:.2f} s"


def _offers_table(runs: list[tuple[str, dict[str, Any]]]) -> str:
    lines = ["| contender | offered notif./s (× notif.) | accepted req/s | accept p50 / p99 ms | "
             "end-to-end p50 / p99 ms | update p50 / p99 ms | deliveries/s | settled after the "
             "offer | CPU ms / delivery (measured processes) | errors |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in runs:
        cpu = sum(v for v in r["cpu_ms_per_delivery"].values() if v == v)  # NaN: no delivery
        lines.append(f"| {name} | {_f(r['rate'])} (× {r['notifications']:,}) | "
                     f"{_f(r['accepted_per_second'])} | {_pair(r, 'accept')} | {_pair(r, 'e2e')} | "
                     f"{_pair(r, 'update')} | {_f(r['deliveries_per_second'])} | {_settled(r)} | "
                     f"{cpu:.2f} | {r['errors']} |")
    return "\n".join(lines)


def _cpu_table(runs: list[tuple[str, dict[str, Any]]]) -> str:
    lines = ["| contender, offered/s | CPU ms per delivery, per process | whole machine | "
             "other load (cores) |", "|---|---|---|---|"]
    for name, r in runs:
        per = ", ".join(f"{k} {v:.2f}" for k, v in sorted(r["cpu_ms_per_delivery"].items(),
                                                           key=lambda kv: -kv[1]))
        lines.append(f"| {name}, {_f(r['rate'])} | {per} | {_f(r['machine_cpu_ms_per_delivery'], 2)} "
                     f"| {r['unattributed_cores']:.2f} |")
    return "\n".join(lines)


def _search_table(searches: dict[str, dict[str, Any]]) -> str:
    lines = ["| contender | steps: offered/s → accept p99 ms, end-to-end p99 ms, update p99 ms, "
             "settled | sustainable notifications/s | at that rate, CPU ms per delivery: whole "
             "machine (measured processes) |", "|---|---|---|---|"]
    for name, s in searches.items():
        steps = "; ".join(f"{_f(r['rate'])} → {_f(r['accept_p99_ms'])}, {_f(r['e2e_p99_ms'])}, "
                          f"{_f(r['update_p99_ms'])}, {_settled(r)} {'✓' if r['sustainable'] else '✗'}"
                          for r in s["steps"])
        best = next((r for r in s["steps"] if r["sustainable"] and r["rate"] == s["sustainable_rate"]), None)
        cpu = ("n/a" if best is None else f"{_f(best['machine_cpu_ms_per_delivery'], 2)} "
               f"({_f(sum(best['cpu_ms_per_delivery'].values()), 2)})")
        lines.append(f"| {name} | {steps} ({s['stopped']}) | **{_f(s['sustainable_rate'])}** | {cpu} |")
    return "\n".join(lines)


def _gateway_alone_table(g: dict[str, Any]) -> str:
    lines = ["| gateway alone: offered/s | accepted/s | p50 ms | p99 ms | errors | CPU ms / request: "
             "gateway, client | |", "|---|---|---|---|---|---|---|"]
    for s in g["steps"]:
        cpu = s["cpu_ms_per_request"]
        lines.append(f"| {_f(s['rate'])} | {_f(s['accepted_per_second'])} | {_f(s['p50_ms'], 1)} | "
                     f"{_f(s['p99_ms'], 1)} | {s['errors']} | {cpu['gateway']:.2f}, "
                     f"{cpu['client']:.2f} | {'✓' if s['passed'] else '✗'} |")
    return "\n".join(lines)


def chart(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series: dict[str, dict[int, float]] = {"dispatcher (embedded)": {}, "Celery + boto3 + pyfcm": {}, "Apprise": {}}
    points = [(r, False) for r in report["rounds"]] + [(p, True) for p in report.get("sizes", {}).values()]
    for entry, _ in points:
        if "embedded" in entry:
            series["dispatcher (embedded)"][entry["embedded"]["recipients"]] = entry["embedded"]["external_per_second"]
        if "celery" in entry:
            series["Celery + boto3 + pyfcm"][entry["celery"]["recipients"]] = entry["celery"]["per_second"]
        if "apprise" in entry:
            series["Apprise"][entry["apprise"]["recipients"]] = entry["apprise"]["per_second"]
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    for name, data in series.items():
        if data:
            xs = sorted(data)
            ax.plot(xs, [data[x] for x in xs], marker="o", label=name)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("recipients in the bulk")
    ax.set_ylabel("email + SMS + push deliveries / s")
    ax.set_title("Deliveries per second on this 2-core machine (same stand-ins)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def splice(markdown: str, generated: str) -> str:
    """Replace the generated section of BENCHMARKS.md, or append it."""
    block = f"{BEGIN}\n{generated}\n{END}"
    if BEGIN in markdown and END in markdown:
        return markdown[:markdown.index(BEGIN)] + block + markdown[markdown.index(END) + len(END):]
    return markdown.rstrip() + "\n\n" + block + "\n"
