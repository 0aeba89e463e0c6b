#!/usr/bin/env python3
"""Benchmark: the whole Debian matrix, from the archive to objects, one run.

  1. discover: `bpfarm-builder discover` against the machine's mirror (its
     apt sources): wall time, kernels per suite, and whether the result is
     byte-identical to the shipped kernels/debian.toml;
  2. fetch: every package of kernels/debian.toml into an empty package
     cache, sequentially (--jobs 1, the baseline) and in parallel (--jobs 4):
     MiB, time, throughput, ratio; packages the mirror does not serve;
  3. cold build: every kernel, empty object and tree caches, --jobs = cores:
     wall time, CPU time (user+sys of the process tree) per kernel built,
     peak RSS, built / failed per suite x arch, failures by reason;
  4. warm rebuild: the same command again, nothing changed (cold/warm ratio).

Needs ~6 GB under --work (packages and unpacked trees; removed at the end
unless --keep).

    bench/coverage.py [--matrix kernels/debian.toml] [--work DIR] [--keep]
"""
import argparse
import collections
import json
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def timed(argv, **kw):
    """Runs argv; returns (wall s, cpu s of the process tree, peak RSS MiB, rc, stderr)."""
    t = time.monotonic()
    p = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, **kw)
    err = p.stderr.read()
    _, status, ru = os.wait4(p.pid, 0)
    wall = time.monotonic() - t
    # Children of the builder (clang, llc) are waited for by it; their time
    # shows up in RUSAGE_CHILDREN of this process, taken as a difference.
    return wall, ru.ru_utime + ru.ru_stime, ru.ru_maxrss / 1024, os.waitstatus_to_exitcode(status), err


def children_cpu():
    r = os.times()
    return r.children_user + r.children_system


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--matrix", default=os.path.join(ROOT, "kernels/debian.toml"))
    ap.add_argument("--work", default=os.path.join(os.environ.get("BPFARM_CACHE", os.path.expanduser("~/.cache/bpfarm")), "bench-coverage"))
    ap.add_argument("--builder", default=os.path.join(ROOT, "target/release/bpfarm-builder"))
    ap.add_argument("--jobs", type=int, default=os.cpu_count())
    ap.add_argument("--keep", action="store_true", help="keep --work afterwards")
    args = ap.parse_args()

    subprocess.run(["cargo", "build", "--release", "--locked", "-p", "bpfarm-builder"], cwd=ROOT, check=True)
    shutil.rmtree(args.work, ignore_errors=True)
    os.makedirs(args.work)
    b = args.builder
    with open(args.matrix, "rb") as f:
        matrix = tomllib.load(f)
    kernels = matrix["kernel"]
    print(f"bench: {len(kernels)} kernels in {os.path.relpath(args.matrix, ROOT)}, {os.cpu_count()} cores", flush=True)

    # 1. discover
    found = os.path.join(args.work, "discovered.toml")
    wall, cpu, rss, rc, err = timed([b, "discover", "--output", found])
    if rc != 0:
        raise SystemExit(f"bench: discover failed ({rc}):\n{err}")
    with open(found, "rb") as f:
        disc = tomllib.load(f)
    same = open(found, "rb").read() == open(args.matrix, "rb").read()
    print(f"\n## discover: {wall:.1f} s wall, {cpu:.1f} s CPU, peak RSS {rss:.0f} MiB; "
          f"{len(disc['kernel'])} kernels from {len(disc['suite'])} suites; "
          f"{'byte-identical to' if same else 'DIFFERS from'} {os.path.relpath(args.matrix, ROOT)}")
    print("| suite | " + " | ".join(["amd64", "arm64"]) + " |\n|---|---|---|")
    for s in disc["suite"]:
        per = dict(zip(s["arches"], s["kernels"]))
        if any(per.values()):
            print(f"| {s['name']} | {per.get('amd64', 0)} | {per.get('arm64', 0)} |")

    # 2. fetch: sequential baseline, then parallel, each into an empty store.
    debs = os.path.join(args.work, "debs")
    results = {}
    for jobs in (1, 4):
        shutil.rmtree(debs, ignore_errors=True)
        wall, cpu, rss, rc, err = timed([b, "fetch", "--matrix", args.matrix, "--package-cache", debs, "--jobs", str(jobs), "--no-progress"])
        m = re.search(r"fetch: (\d+) downloaded \(([\d.]+) MiB in ([\d.]+)s", err)
        failed = len([l for l in err.splitlines() if l.startswith("fetch: FAILED") and "(" in l and "):" in l])
        if not m:
            raise SystemExit(f"bench: fetch printed no summary:\n{err[-2000:]}")
        results[jobs] = (int(m.group(1)), float(m.group(2)), wall, rss, failed, rc)
    n, mib, _, _, failed, rc = results[4]
    s1, s4 = results[1][2], results[4][2]
    print(f"\n## fetch: {n} packages, {mib:.0f} MiB; {failed} packages not served by the mirror (exit {rc})")
    print(f"| | wall | MiB/s | peak RSS |\n|---|---|---|---|")
    print(f"| sequential (--jobs 1) | {s1:.1f} s | {mib / s1:.0f} | {results[1][3]:.0f} MiB |")
    print(f"| parallel (--jobs 4) | {s4:.1f} s | {mib / s4:.0f} | {results[4][3]:.0f} MiB |")
    print(f"parallel/sequential speed-up: {s1 / s4:.2f}x")

    # 3. cold build, 4. warm rebuild
    cache, out = os.path.join(args.work, "cache"), os.path.join(args.work, "out")
    report = os.path.join(args.work, "cold.json")
    build = [b, "build", "--matrix", args.matrix, "--package-cache", debs, "--cache-dir", cache, "--out", out,
             "--no-progress", "--jobs", str(args.jobs), "--report", report]
    before = children_cpu()
    cold, _, cold_rss, rc, err = timed(build)
    cold_cpu = children_cpu() - before
    r = json.load(open(report))
    before = children_cpu()
    # --no-fetch: nothing changed, so nothing is asked of the mirror (the
    # packages it does not serve would otherwise be asked for again).
    warm, _, warm_rss, wrc, _ = timed(build[:-1] + [os.path.join(args.work, "warm.json"), "--no-fetch"])
    warm_cpu = children_cpu() - before
    w = json.load(open(os.path.join(args.work, "warm.json")))

    suites = {(k["release"], {"amd64": "x86_64", "arm64": "aarch64"}[k["arch"]]): k.get("suites", ["?"]) for k in kernels}
    table = collections.defaultdict(lambda: [0, 0, 0])  # built, unreachable, failed
    reasons = collections.Counter()
    for k in r["kernels"]:
        for s in suites.get((k["kernel"], k["arch"]), ["?"]):
            row = table[(s, k["arch"])]
            if k["status"] != "failed":
                row[0] += 1
            elif "fetch failed" in (k["error"] or ""):
                row[1] += 1
            else:
                row[2] += 1
        if k["status"] == "failed":
            e = k["error"] or ""
            reasons["package not served by the mirror (HTTP 404)" if "fetch failed" in e else e.splitlines()[0][:120]] += 1
    sm = r["summary"]
    built = sm["built"] + sm["cached"]
    print(f"\n## cold build (--jobs {args.jobs}): {sm['total']} kernels, {built} built, {sm['failed']} failed (exit {rc})")
    print(f"wall {cold:.0f} s; CPU {cold_cpu:.0f} s = {cold_cpu / max(built, 1):.2f} s per kernel built; "
          f"{cold / max(built, 1):.2f} s wall per kernel; peak RSS {cold_rss:.0f} MiB")
    print("| suite | arch | built | not served | failed |\n|---|---|---|---|---|")
    for (s, a), (ok, gone, bad) in sorted(table.items()):
        print(f"| {s} | {a} | {ok} | {gone} | {bad} |")
    for why, c in reasons.most_common():
        print(f"failed: {c} x {why}")
    ws = w["summary"]
    print(f"\n## warm rebuild: {warm:.2f} s wall, {warm_cpu:.2f} s CPU, peak RSS {warm_rss:.0f} MiB; "
          f"{ws['cached']} cached, {ws['built']} built (exit {wrc}); cold/warm = {cold / warm:.0f}x")
    sizes = subprocess.run(["du", "-sh", debs, os.path.join(cache, "trees")], capture_output=True, text=True).stdout
    print("\ndisk:\n" + sizes)
    if not args.keep:
        shutil.rmtree(args.work, ignore_errors=True)


if __name__ == "__main__":
    main()
