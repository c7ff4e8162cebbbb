#!/usr/bin/env python3
"""Turn bench/run.sh's results.jsonl into the report: tables, same-run ratios, targets (issue 10).

Usage: report.py RESULTS.jsonl [--quick=0|1]
       report.py --row   (one result line on stdin -> one progress line)

Ratios are taken within a round (the proxies run interleaved, so a round's rows share the
machine's state); with two rounds both ratios are shown and a target is judged on their mean.
Each load row is also checked: every answer 200/201 and of the size checked before the load
(a proxy that answered differently under load would show another size).
"""
import json
import statistics
import sys
from collections import defaultdict

PROXIES = ("nginx", "passthrough", "eds-proxy")


def join(rows, key, fmt):
    """One cell: the rounds' values of `key`, "round 1 / round 2"."""
    return " / ".join(fmt.format(r[key]) for r in rows if r.get(key) is not None) or "–"


def fmt_ratio(values):
    if not values:
        return "–"
    return " / ".join(f"{v:.2f}×" for v in values)


def row(d):
    """The progress line bench/run.sh prints after each run."""
    if d["kind"] == "hapi":
        return (f"  {'HAPI direct' if d['via'] == 'hapi' else 'via eds-proxy':<14} c={d['c']:<3} "
                f"{d['rps']:7.1f} req/s  p50 {d['p50_ms']:8.2f} ms  p99 {d['p99_ms']:8.2f} ms  {d['statuses']}")
    what = d["workload"] if d["kind"] == "load" else "handshakes"
    unit = "req/s" if d["kind"] == "load" else "conn/s"
    return (f"  r{d['round']} {what:<10} c={d['c']:<3} {d['proxy']:<12} {d['rps']:9.0f} {unit}  "
            f"p50 {d['p50_ms']:7.2f} ms  p99 {d['p99_ms']:7.2f} ms  "
            f"{d['cpu_us_per_req'] or 0:6.0f} µs CPU/req  busy {d['proxy_busy']:4.0%}  "
            f"{d['statuses']}" + (f" errors {d['errors']}" if d["errors"] else ""))


def main():
    if sys.argv[1] == "--row":
        print(row(json.loads(sys.stdin.read())))
        return
    path = sys.argv[1]
    quick = any(a == "--quick=1" for a in sys.argv[2:])
    rows = [json.loads(l) for l in open(path) if l.strip()]
    load = [r for r in rows if r["kind"] == "load"]
    hs = [r for r in rows if r["kind"] == "handshakes"]
    hold = {r["proxy"]: r for r in rows if r["kind"] == "hold"}
    tokens = [r for r in rows if r["kind"] == "token"]
    metrics = next((r for r in rows if r["kind"] == "metrics"), None)
    rounds = sorted({r["round"] for r in load})
    by = {(r["proxy"], r["workload"], r["c"], r["round"]): r for r in load}
    out = []
    p = out.append
    run = next((r for r in rows if r["kind"] == "run"), None)
    if run:
        p(f"Run {run['date']} at {run['commit']} on {run['cpu']}; {run['duration_s']} s per run, "
          f"c = {', '.join(map(str, run['concurrency']))}, {run['rounds']} round(s); load average "
          f"before: {run['load_before']}.\n")
        quick = quick or run["quick"]
    if quick:
        p("**Quick run (`--quick`): validates the harness; not a measurement.**\n")

    problems = []
    for r in load:
        want = "201" if r["workload"] == "create" else "200"
        if set(r["statuses"]) != {want}:
            problems.append(f"{r['proxy']} {r['workload']} c={r['c']} r{r['round']}: statuses {r['statuses']}")
        size = r.get("size_per_answer")
        if size is not None and abs(size - r["checked_size"]) > 0.5:
            problems.append(f"{r['proxy']} {r['workload']} c={r['c']} r{r['round']}: "
                            f"{size:.0f} bytes per answer, checked answer had {r['checked_size']}")
        aborted = {k: v for k, v in r["errors"].items() if "deadline" not in k}
        if aborted:
            problems.append(f"{r['proxy']} {r['workload']} c={r['c']} r{r['round']}: errors {aborted}")
    for r in hs:
        if set(r["statuses"]) != {"200"} or r["errors"]:
            problems.append(f"handshakes {r['proxy']} r{r['round']}: {r['statuses']} errors {r['errors']}")
    if metrics and metrics["drops_after_load"] != metrics["drops_before_load"]:
        problems.append(f"eds-proxy dropped entries of the station's own searches under load "
                        f"({metrics['drops_before_load']} → {metrics['drops_after_load']})")
    if metrics and metrics["foreign"]:
        problems.append(f"eds_proxy_response_foreign_total = {metrics['foreign']}")

    p("## Load (oha, keep-alive, HTTP/1.1; proxy alone on core 1)\n")
    p("| workload | c | proxy | req/s | p50 ms | p99 ms | CPU µs/req | core busy | RSS after (MiB) |")
    p("|---|---|---|---|---|---|---|---|---|")
    for w in ("search", "read", "create"):
        for c in sorted({r["c"] for r in load if r["workload"] == w}):
            for px in PROXIES:
                rs = [by[(px, w, c, n)] for n in rounds if (px, w, c, n) in by]
                if not rs:
                    continue
                p(f"| {w} | {c} | {px} | {join(rs, 'rps', '{:.0f}')} | {join(rs, 'p50_ms', '{:.2f}')} | "
                  f"{join(rs, 'p99_ms', '{:.2f}')} | {join(rs, 'cpu_us_per_req', '{:.0f}')} | "
                  f"{join(rs, 'proxy_busy', '{:.0%}')} | {rs[-1]['rss_kib'] / 1024:.1f} |")
    if len(rounds) > 1:
        p("\n(two values: round 1 / round 2)")

    def ratios(w, c, base, key="rps"):
        out = []
        for n in rounds:
            a, b = by.get(("eds-proxy", w, c, n)), by.get((base, w, c, n))
            if a and b and b[key]:
                out.append(a[key] / b[key])
        return out

    p("\n## Same-run ratios, eds-proxy / other (throughput; p99 for search)\n")
    p("| workload | c | / nginx | / passthrough | p99 / nginx's p99 | CPU/req: eds-proxy / nginx / passthrough |")
    p("|---|---|---|---|---|---|")
    for w in ("search", "read", "create"):
        for c in sorted({r["c"] for r in load if r["workload"] == w}):
            cpu = []
            for px in ("eds-proxy", "nginx", "passthrough"):
                vals = [by[(px, w, c, n)]["cpu_us_per_req"] for n in rounds if (px, w, c, n) in by]
                vals = [v for v in vals if v is not None]
                cpu.append(f"{statistics.mean(vals):.0f}" if vals else "–")
            p(f"| {w} | {c} | {fmt_ratio(ratios(w, c, 'nginx'))} | {fmt_ratio(ratios(w, c, 'passthrough'))} | "
              f"{fmt_ratio(ratios(w, c, 'nginx', 'p99_ms'))} | {' / '.join(cpu)} µs |")

    hs_by = {(r["proxy"], r["round"]): r for r in hs}
    if hs:
        p("\n## Full mTLS handshakes (TLS resumption OFF on the client: a fresh session store per "
          "connection), c = 16, one read per connection\n")
        p("| proxy | conn/s | p50 ms | p99 ms | CPU µs/conn | core busy |")
        p("|---|---|---|---|---|---|")
        for px in PROXIES:
            rs = [hs_by[(px, n)] for n in rounds if (px, n) in hs_by]
            if rs:
                p(f"| {px} | {join(rs, 'rps', '{:.0f}')} | {join(rs, 'p50_ms', '{:.2f}')} | "
                  f"{join(rs, 'p99_ms', '{:.2f}')} | {join(rs, 'cpu_us_per_req', '{:.0f}')} | "
                  f"{join(rs, 'proxy_busy', '{:.0%}')} |")
    hs_ratio = [hs_by[("eds-proxy", n)]["rps"] / hs_by[("nginx", n)]["rps"]
                for n in rounds if ("eds-proxy", n) in hs_by and ("nginx", n) in hs_by and hs_by[("nginx", n)]["rps"]]
    hs_pass = [hs_by[("eds-proxy", n)]["rps"] / hs_by[("passthrough", n)]["rps"]
               for n in rounds if ("eds-proxy", n) in hs_by and ("passthrough", n) in hs_by and hs_by[("passthrough", n)]["rps"]]
    if hs:
        p(f"\neds-proxy / nginx: {fmt_ratio(hs_ratio)}; eds-proxy / passthrough: {fmt_ratio(hs_pass)}")

    if hold:
        p("\n## Memory with idle keep-alive mTLS connections (one read each, then held)\n")
        p("| proxy | held | RSS before (MiB) | RSS holding (MiB) | per connection (KiB) | still open after 4 s |")
        p("|---|---|---|---|---|---|")
        for px in PROXIES:
            h = hold.get(px)
            if h:
                per = (h["held_rss_kib"] - h["base_rss_kib"]) / h["held"] if h["held"] else 0
                p(f"| {px} | {h['held']} | {h['base_rss_kib'] / 1024:.1f} | {h['held_rss_kib'] / 1024:.1f} | "
                  f"{per:.0f} | {h['still_open']} |")

    hapi = {(r["via"], r["c"]): r for r in rows if r["kind"] == "hapi"}
    hapi_share = {}
    if hapi:
        p("\n## The same search against real HAPI FHIR (20 entries; HAPI on core 0 with the load generator)\n")
        p("| c | HAPI direct p50 ms | through eds-proxy p50 ms | eds-proxy's share of HAPI's p50 | req/s direct / through | statuses |")
        p("|---|---|---|---|---|---|")
        for c in sorted({k[1] for k in hapi}):
            d, e = hapi.get(("hapi", c)), hapi.get(("eds-proxy", c))
            if not (d and e):
                continue
            share = (e["p50_ms"] - d["p50_ms"]) / d["p50_ms"] if d["p50_ms"] else None
            hapi_share[c] = share
            p(f"| {c} | {d['p50_ms']:.2f} | {e['p50_ms']:.2f} | "
              f"{'–' if share is None else f'{share:+.1%}'} | {d['rps']:.0f} / {e['rps']:.0f} | "
              f"{d['statuses']} / {e['statuses']} |")
            if set(d["statuses"]) != {"200"} or set(e["statuses"]) != {"200"}:
                problems.append(f"HAPI search c={c}: statuses {d['statuses']} / {e['statuses']}")

    if tokens:
        p("\n## Token validation on a cache miss (read_header + verify; `cargo bench --bench tokens`)\n")
        p("| algorithm | µs per token |")
        p("|---|---|")
        for t in tokens:
            p(f"| {t['alg']} | {t['us']:.1f} |")

    # ------------------------------------------------------------ targets
    def judge(values, ok):
        if not values:
            return "not measured", "–"
        m = statistics.mean(values)
        return ("met" if ok(m) else "NOT MET"), m

    targets = []
    mid = [c for c in (16, 64) if any(r["c"] == c for r in load)]
    for c in mid:
        v, m = judge(ratios("search", c, "nginx"), lambda x: x >= 0.6)
        targets.append((f"search c={c}: throughput ≥ 0.6× nginx", m, v))
        v, m = judge(ratios("search", c, "nginx", "p99_ms"), lambda x: x <= 1.5)
        targets.append((f"search c={c}: p99 ≤ 1.5× nginx's", m, v))
    for w in ("read", "create"):
        for c in mid:
            v, m = judge(ratios(w, c, "passthrough"), lambda x: x >= 0.9)
            targets.append((f"{w} c={c}: throughput ≥ 0.9× passthrough", m, v))
    for t in tokens:
        targets.append((f"token validation on a cache miss, {t['alg']}: ≤ 100 µs", t["us"],
                        "met" if t["us"] <= 100 else "NOT MET"))
    v, m = judge(hs_ratio, lambda x: x >= 1.5)
    targets.append(("full handshakes (resumption off) ≥ 1.5× nginx's", m, v))
    h = hold.get("eds-proxy")
    if h:
        mib = h["held_rss_kib"] / 1024
        targets.append((f"RSS with {h['held']} idle keep-alive connections ≤ 64 MiB", mib,
                        "met" if mib <= 64 and h["held"] >= 1000 else "NOT MET"))
    if hapi_share.get(1) is not None:
        targets.append(("against HAPI (c=1): eds-proxy adds ≤ 5% to HAPI's p50 search latency",
                        hapi_share[1] * 100, "met" if hapi_share[1] <= 0.05 else "NOT MET"))
    else:
        targets.append(("against HAPI: eds-proxy adds ≤ 5% to HAPI's p50 search latency", None,
                        "not measured (bench/run.sh --hapi)"))

    p("\n## Targets (issue 10)\n")
    p("| target | measured | verdict |")
    p("|---|---|---|")
    for name, m, verdict in targets:
        shown = "–" if m is None or m == "–" else (f"{m:.2f}" if isinstance(m, float) else str(m))
        p(f"| {name} | {shown} | {verdict} |")

    p("\n## Checks\n")
    if problems:
        p("FAILED:\n" + "\n".join(f"- {x}" for x in problems))
    else:
        p("- every load answer had the expected status (200, create 201) and the size of the "
          "answer checked before the load (eds-proxy's searchset: all 20 entries)")
        if metrics:
            p(f"- eds_proxy_response_check_drops_total: {metrics['drops_before_load']} from the "
              f"other station's search (all 20 entries) (its read, 404, counts as a hidden read), unchanged under load; "
              f"eds_proxy_response_foreign_total: {metrics['foreign']}")
    print("\n".join(out))
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
