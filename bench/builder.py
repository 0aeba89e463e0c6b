#!/usr/bin/env python3
"""Benchmark: bpfarm-builder against a naive sequential script and against
the CPU floor, same run.

For N kernels of a matrix (default: the Debian bookworm amd64 matrix):
  1. cold:  bpfarm-builder with an empty cache (unpack, compile, validate);
  2. warm:  bpfarm-builder again, nothing changed;
  3. floor: the CPU time no builder can avoid: every distinct package the
            compile reads (flavour and -common; the linux-kbuild package is
            only paired, never unpacked) unpacked once (`dpkg-deb -x`) plus one
            clang + llc per kernel with the builder's own flags, summed and
            divided by the cores. The same work is also run on as many workers
            as cores, so its wall time is measured under the same load;
  4. naive: per kernel, `dpkg-deb -x` its three packages into a fresh folder,
            compile with the same clang/llc flags, delete the folder.
Prints each time, cold/floor, warm/floor, naive/cold and peak RSS, and the
compile's CPU time per kernel; and where the cold build's time went (from
`build --timings`): CPU and wall per stage, the phases, how many workers and
cores were busy over time, the longest dependency chain and the idle tail.
With --baseline, another bpfarm-builder (e.g. main's) is timed cold and warm
in the same run (--repeat N: N alternating rounds of both, medians printed,
with the packages each cold build inspected, a count no load changes). Targets (2 cores): cold within 1.3x of the floor; cold >= 4x
faster than naive; warm < 1 s.

    bench/builder.py [--matrix kernels/debian-bookworm.toml] [--arch amd64|all] [--limit N] [--no-naive]
                     [--builder target/release/bpfarm-builder] [--baseline OLD-BUILDER [--repeat N]] [--program-dir bpf]
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def timed(argv, **kw):
    """Runs argv, returns (seconds, peak RSS in MiB, completed returncode)."""
    t = time.monotonic()
    p = subprocess.Popen(argv, **kw)
    _, status, ru = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    return time.monotonic() - t, ru.ru_maxrss / 1024, p.returncode


class Sampler:
    """Samples, every `period` seconds while a process runs, the CPU it and
    its reaped children used (/proc/<pid>/stat) and the whole machine's
    busy time (/proc/stat): how many cores each kept busy, over time."""

    def __init__(self, period=0.5):
        self.period, self.rows, self.stop = period, [], threading.Event()
        self.tick = os.sysconf("SC_CLK_TCK")

    def _proc(self, pid):
        try:
            f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
            return sum(int(x) for x in f[11:15]) / self.tick  # utime stime cutime cstime
        except (OSError, IndexError, ValueError):
            return None

    @staticmethod
    def _machine():
        f = [int(x) for x in open("/proc/stat").readline().split()[1:]]
        return (sum(f) - f[3] - f[4]) / os.sysconf("SC_CLK_TCK")  # all but idle and iowait

    def run(self, pid):
        t0 = time.monotonic()
        while not self.stop.is_set():
            p = self._proc(pid)
            if p is not None:
                self.rows.append((time.monotonic() - t0, p, self._machine()))
            self.stop.wait(self.period)

    def slices(self, n):
        """(start, end, builder cores, machine cores) for n equal slices."""
        r = self.rows
        if len(r) < 2:
            return []
        out, end = [], r[-1][0]
        for i in range(n):
            a, b = end * i / n, end * (i + 1) / n
            pa = min(r, key=lambda x: abs(x[0] - a))
            pb = min(r, key=lambda x: abs(x[0] - b))
            dt = pb[0] - pa[0]
            if dt > 0:
                out.append((a, b, (pb[1] - pa[1]) / dt, (pb[2] - pa[2]) / dt))
        return out


def timed_sampled(argv, **kw):
    """`timed`, also returning the CPU seconds of the process and its
    children and a Sampler of its run."""
    s = Sampler()
    t = time.monotonic()
    p = subprocess.Popen(argv, **kw)
    th = threading.Thread(target=s.run, args=(p.pid,), daemon=True)
    th.start()
    _, status, ru = os.wait4(p.pid, 0)
    s.stop.set()
    th.join()
    return time.monotonic() - t, ru.ru_maxrss / 1024, os.waitstatus_to_exitcode(status), ru.ru_utime + ru.ru_stime, s


def breakdown(path, sampler, cores):
    """Prints where the cold build's time went, from its --timings file."""
    with open(path) as f:
        head = json.loads(f.readline())
        spans = [json.loads(l) for l in f if l.strip()]
    wall = head["wall"]
    envelope = {"plan", "job"}
    stages = {}
    for sp in spans:
        if sp["stage"] in envelope:
            continue
        st = stages.setdefault(sp["stage"], [0, 0.0, 0.0])
        st[0] += 1
        st[1] += sp["end"] - sp["start"]
        st[2] += sp["cpu"]
    jobs = [sp for sp in spans if sp["stage"] == "job"]
    plan = [sp for sp in spans if sp["stage"] == "plan"]
    total_cpu = head["cpu_self"] + head["cpu_children"]
    print(f"where the cold build's time went ({head['jobs']} workers, wall {wall:.2f} s, CPU {total_cpu:.2f} s: "
          f"{head['cpu_self']:.2f} s in process, {head['cpu_children']:.2f} s in clang/llc):")
    print(f"  {'stage':<10} {'count':>5} {'wall sum':>9} {'CPU sum':>8} {'CPU/item':>8} {'% of CPU':>8}")
    for name, (n, w, c) in sorted(stages.items(), key=lambda kv: -kv[1][2]):
        print(f"  {name:<10} {n:5d} {w:8.2f}s {c:7.2f}s {c / n:7.3f}s {100 * c / total_cpu if total_cpu else 0:7.1f}%")
    accounted = sum(c for _, _, c in stages.values())
    print(f"  {'(other)':<10} {'':>5} {'':>9} {total_cpu - accounted:7.2f}s {'':>8} "
          f"{100 * (total_cpu - accounted) / total_cpu if total_cpu else 0:7.1f}%   (setup, key, scratch, thread overhead)")
    if plan:
        print(f"  phases: plan (inspect, unpack flavours) {plan[0]['end'] - plan[0]['start']:.2f} s; ", end="")
    if jobs:
        first, last = min(j["start"] for j in jobs), max(j["end"] for j in jobs)
        ends = {}
        for j in jobs:
            ends[j["worker"]] = max(ends.get(j["worker"], 0), j["end"])
        tail = last - min(ends.values()) if len(ends) > 1 else 0.0
        between = first - (plan[0]["end"] if plan else 0.0)
        print(f"-common unpacks before the first kernel {between:.2f} s; kernels {last - first:.2f} s; "
              f"after them {wall - last:.2f} s; idle tail (a worker out of work) {tail:.2f} s")
        # The longest chain of work one kernel depends on: the unpacks it
        # needs (in parallel at best) then its compile.
        unpack = {sp["subject"]: sp["end"] - sp["start"] for sp in spans if sp["stage"] == "unpack"}
        comp = {}
        for sp in spans:
            if sp["stage"] in ("clang", "llc"):
                comp[sp["subject"]] = comp.get(sp["subject"], 0) + sp["end"] - sp["start"]
        if unpack and comp:
            chain = max(unpack.values()) + max(comp.values())
            print(f"  longest dependency chain (slowest unpack + slowest compile): {chain:.2f} s, so the schedule, "
                  f"not a chain, bounds the wall time")
    # Busy workers from the spans, cores from the samples, per tenth of the run.
    n = 10
    busy_spans = [sp for sp in spans if sp["stage"] not in envelope]
    busy_avg = sum(sp["end"] - sp["start"] for sp in busy_spans) / wall if wall else 0
    print(f"  on average {busy_avg:.2f} of {head['jobs']} workers were busy and the builder used {total_cpu / wall:.2f} of "
          f"{cores} cores: the rest of the time its runnable work waited for a core (other load on the machine)")
    rows = sampler.slices(n) if sampler else []
    print(f"  {'time':>13}  {'workers busy':>12}  {'builder cores':>13}  {'machine cores':>13}  (of {cores})")
    for i in range(n):
        a, b = wall * i / n, wall * (i + 1) / n
        covered = sum(max(0.0, min(b, sp["end"]) - max(a, sp["start"])) for sp in busy_spans)
        busy = covered / (b - a) if b > a else 0
        samp = [r for r in rows if r[0] <= (a + b) / 2 < r[1]]
        bc = f"{samp[0][2]:13.2f}" if samp else f"{'':>13}"
        mc = f"{samp[0][3]:13.2f}" if samp else f"{'':>13}"
        print(f"  {a:5.1f}-{b:5.1f} s  {busy:12.2f}  {bc}  {mc}")


def cpu(argv, **kw):
    """Runs argv to success; returns its CPU seconds (user + system, its
    own and its waited-for children's: dpkg-deb's decompressor, clang's cc1)."""
    p = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kw)
    _, status, ru = os.wait4(p.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"bench: {' '.join(argv)} failed")
    return ru.ru_utime + ru.ru_stime


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--matrix", default=os.path.join(ROOT, "kernels/debian-bookworm.toml"))
    ap.add_argument("--arch", default="amd64", help="Debian arch of the matrix entries to use (all: every arch)")
    ap.add_argument("--limit", type=int, default=0, help="only the first N kernels (0 = all)")
    ap.add_argument("--suites", default="", help="only kernels in these suites (comma-separated prefixes: bookworm,trixie)")
    ap.add_argument("--builder", default=os.path.join(ROOT, "target/release/bpfarm-builder"))
    ap.add_argument("--baseline", help="another bpfarm-builder (e.g. built from main) to time cold and warm in the same run")
    ap.add_argument("--repeat", type=int, default=1,
                    help="with --baseline: cold + warm builds of both, alternating, this many times; medians printed")
    ap.add_argument("--no-naive", action="store_true", help="skip the naive script (the slowest part)")
    ap.add_argument("--time-trace", action="store_true", help="also compile each kernel with clang -ftime-trace and print where its time goes")
    ap.add_argument("--program-dir", default=os.path.join(ROOT, "bpf"), help="the program the floor and the naive script compile (the one --builder embeds)")
    args = ap.parse_args()
    if args.repeat < 1:
        ap.error("--repeat takes a count of 1 or more")
    if args.repeat > 1 and not args.baseline:
        ap.error("--repeat alternates the builder with --baseline: give --baseline OLD-BUILDER")
    sys.stdout.reconfigure(line_buffering=True)

    if not os.path.exists(args.builder):
        subprocess.run(["cargo", "build", "--release", "-p", "bpfarm-builder"], cwd=ROOT, check=True)
    cache = os.environ.get("BPFARM_CACHE", os.path.expanduser("~/.cache/bpfarm"))
    debs = os.path.join(cache, "debs")
    import re
    import tomllib
    with open(args.matrix, "rb") as f:
        kernels = [k for k in tomllib.load(f)["kernel"] if args.arch in ("all", k["arch"])]
    if args.suites:
        prefixes = tuple(args.suites.split(","))
        kernels = [k for k in kernels if any(s.startswith(prefixes) for s in k.get("suites", []))]
    if args.limit:
        kernels = kernels[: args.limit]
    # Fetch exactly these kernels' packages (the matrix may hold many more).
    select = "^(" + "|".join(sorted({re.escape(k["release"]) for k in kernels})) + ")$"
    started = time.monotonic()
    fetched = subprocess.run([args.builder, "fetch", "--matrix", args.matrix, f"--select={select}", "--package-cache", debs, "--no-progress"])
    print(f"fetch (packages not yet in {debs}): {time.monotonic() - started:.1f} s", flush=True)
    # A kernel whose packages the mirror no longer serves is left out, by name.
    have = [k for k in kernels if all(os.path.exists(os.path.join(debs, "sha256", d["sha256"] + ".deb")) for d in k.get("deb", []))]
    if len(have) < len(kernels):
        gone = sorted(k["release"] for k in kernels if k not in have)
        print(f"bench: {len(gone)} kernels left out, their packages could not be fetched: {' '.join(gone)}", flush=True)
    elif fetched.returncode != 0:
        raise SystemExit("bench: fetch failed")
    kernels = have
    work = tempfile.mkdtemp(prefix="bpfarm-bench-")
    sub = os.path.join(work, "matrix.toml")
    with open(sub, "w") as f:
        f.write('name = "bench"\n')
        for k in kernels:
            f.write(f'\n[[kernel]]\npackage = "{k["package"]}"\narch = "{k["arch"]}"\n')
    n = len(kernels)
    print(f"bench: {n} kernels ({args.arch}) from {os.path.relpath(args.matrix, ROOT)}, {os.cpu_count()} cores", flush=True)

    def cold_and_warm(builder, name, timings):
        """A cold build into fresh folders, then the same again (warm)."""
        bcache, out = os.path.join(work, f"cache-{name}"), os.path.join(work, f"out-{name}")
        build = [builder, "build", "--matrix", sub, "--package-cache", debs, "--cache-dir", bcache, "--out", out, "--no-progress"]
        load = float(open("/proc/loadavg").read().split()[0])
        cold, rss, rc, cpu_s, sampler = timed_sampled(build + ["--timings", timings], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if rc != 0:
            raise SystemExit(f"bench: cold build failed ({rc}); run it by hand: {' '.join(build)}")
        warm, warm_rss, rc = timed(build, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if rc != 0:
            raise SystemExit("bench: warm build failed")
        # The packages the cold build inspected (opened: its facts cache was
        # empty), and the CPU that took: a count no load changes.
        with open(timings) as f:
            spans = [json.loads(l) for l in list(f)[1:] if l.strip()]
        insp = [sp for sp in spans if sp["stage"] == "inspect"]
        return dict(cold=cold, rss=rss, cpu=cpu_s, sampler=sampler, warm=warm, warm_rss=warm_rss, out=out, cache=bcache,
                    inspected=len(insp), inspect_cpu=sum(sp["cpu"] for sp in insp), load=load)

    def median(xs):
        xs = sorted(xs)
        return xs[len(xs) // 2] if len(xs) % 2 else (xs[len(xs) // 2 - 1] + xs[len(xs) // 2]) / 2

    # Old and new alternate, so load drift hits both alike; the last new
    # run's output and timings are what the rest of the bench reads.
    timings = os.path.join(work, "timings.jsonl")
    base_runs, new_runs = [], []
    for i in range(args.repeat):
        if args.baseline:
            b = cold_and_warm(args.baseline, "baseline", os.path.join(work, "timings-baseline.jsonl"))
            shutil.rmtree(b["cache"], ignore_errors=True)
            shutil.rmtree(b["out"], ignore_errors=True)
            base_runs.append(b)
        r = cold_and_warm(args.builder, "new", timings)
        shutil.rmtree(r["cache"], ignore_errors=True)
        if i < args.repeat - 1:
            shutil.rmtree(r["out"], ignore_errors=True)
        new_runs.append(r)
        if args.repeat > 1:
            print(f"round {i + 1}/{args.repeat} (load {b['load']:.2f} / {r['load']:.2f}): baseline cold {b['cold']:.2f} s, "
                  f"CPU {b['cpu']:.2f} s, inspected {b['inspected']}; new cold {r['cold']:.2f} s, CPU {r['cpu']:.2f} s, "
                  f"inspected {r['inspected']}", flush=True)

    def summary(runs):
        """Medians over the rounds (the run itself when there is one)."""
        out = dict(runs[-1])
        for k in ("cold", "cpu", "warm", "rss", "warm_rss", "inspect_cpu"):
            out[k] = median([r[k] for r in runs])
        out["cpus"] = [r["cpu"] for r in runs]
        out["loads"] = [r["load"] for r in runs]
        return out

    new = summary(new_runs)
    base = summary(base_runs) if base_runs else None
    cold, cold_rss, warm, warm_rss, out = new["cold"], new["rss"], new["warm"], new["warm_rss"], new["out"]

    metas = []
    for root, _, files in os.walk(out):
        metas += [json.load(open(os.path.join(root, f))) for f in files if f.endswith(".o.json")]
    metas.sort(key=lambda m: (m["kernel_release"], m["arch"]))
    by_name = {}
    for f in os.listdir(debs):
        if f.endswith(".deb"):
            name, version, arch = f[:-4].split("_")
            by_name[(name, version.replace("%3a", ":"), arch)] = os.path.join(debs, f)
    clang = shutil.which("clang")
    resource = subprocess.run([clang, "-print-resource-dir"], capture_output=True, text=True).stdout.strip()

    def package(src):
        return next(p for (n_, v, _a), p in by_name.items() if n_ == src["name"] and v == src["version"])

    def compile_argv(m, root, o):
        """The builder's clang and llc for `m`'s kernel, its trees under `root`."""
        flavour, common = m["sources"][0]["name"], m["sources"][1]["name"]
        src, bld = f"{root}/usr/src/{common}", f"{root}/usr/src/{flavour}"
        flags = m["flags"]
        cflags = [f.replace("$CLANG_RESOURCE", resource).replace("/bpfarm/kernel/source", src).replace("/bpfarm/kernel/build", bld) for f in flags["clang"]]
        return [clang, *cflags, "-c", "tracer.bpf.c", "-o", f"{o}.bc"], ["llc", *flags["llc"], "-o", f"{o}.o", f"{o}.bc"]

    # The floor: each distinct package the compile reads (flavour and
    # -common) unpacked once, one compile per kernel, on as many workers as
    # cores (unpacks first, then compiles): its CPU is the floor, its wall
    # the same work's time under the same load. The linux-kbuild packages
    # are only paired by the builder, never unpacked: timed apart.
    shared = os.path.join(work, "floor")
    os.makedirs(shared)
    cores = os.cpu_count()
    needed = sorted({package(src) for m in metas for src in m["sources"][:2]})
    kbuild = sorted({package(src) for m in metas for src in m["sources"][2:]} - set(needed))

    def compile_one(i_m):
        i, m = i_m
        cc, llc = compile_argv(m, shared, os.path.join(work, f"floor-t{i}"))
        return cpu(cc, cwd=args.program_dir) + cpu(llc)

    floor_start = time.monotonic()
    with ThreadPoolExecutor(cores) as pool:
        unpack_cpu = sum(pool.map(lambda p: cpu(["dpkg-deb", "-x", p, shared]), needed))
        compile_cpu = list(pool.map(compile_one, enumerate(metas)))
    floor_wall = time.monotonic() - floor_start
    kbuild_cpu = 0.0
    kdir = os.path.join(work, "kbuild")
    os.makedirs(kdir)
    for p in kbuild:
        kbuild_cpu += cpu(["dpkg-deb", "-x", p, kdir])
    subprocess.run(["rm", "-rf", kdir], check=False)
    traces = []
    if args.time_trace:
        # Where clang's time goes, per kernel: header parsing ("Source"),
        # the rest of the front end, optimisation and code generation.
        for m in metas:
            o = os.path.join(work, "trace-t")
            cc, _ = compile_argv(m, shared, o)
            cpu([*cc, "-ftime-trace", "-ftime-trace-granularity=500"], cwd=args.program_dir)
            with open(f"{o}.json") as f:
                total = {e["name"]: e["dur"] / 1e6 for e in json.load(f)["traceEvents"] if e.get("name", "").startswith("Total ")}
            traces.append((m["kernel_release"], m["arch"], total))
    floor_cpu = unpack_cpu + sum(compile_cpu)
    floor = floor_cpu / cores

    naive = None
    if not args.no_naive:
        # The naive script: the same compile, one kernel at a time, unpacking
        # every package with dpkg-deb into a fresh folder and deleting it after.
        script = os.path.join(work, "naive.sh")
        with open(script, "w") as s:
            s.write("set -e\n")
            for m in metas:
                d = os.path.join(work, "naive")
                cc, llc = compile_argv(m, d, f"{d}/t")
                s.write(f"rm -rf {d}; mkdir -p {d}\n")
                for src in m["sources"]:
                    s.write(f"dpkg-deb -x {package(src)} {d}\n")
                s.write(f"(cd {args.program_dir} && {' '.join(cc)})\n")
                s.write(f"{' '.join(llc)}\n")
                s.write(f"rm -rf {d}\n")
        naive, naive_rss, rc = timed(["bash", script], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if rc != 0:
            raise SystemExit(f"bench: the naive script failed; see {script}")

    for release, arch, t in traces:
        g = lambda k: t.get(f"Total {k}", 0.0)
        print(f"clang -ftime-trace {release} ({arch}): headers parsed {g('Source'):.2f} s of front end {g('Frontend'):.2f} s; optimiser {g('Optimizer'):.2f} s, codegen {g('CodeGenPasses') + g('Backend'):.2f} s; all {g('ExecuteCompiler'):.2f} s")
    per = sum(compile_cpu) / len(compile_cpu)
    print(f"compile CPU per kernel  : {per:7.2f} s   (min {min(compile_cpu):.2f}, max {max(compile_cpu):.2f}; clang + llc)")
    print(f"unpack CPU, distinct    : {unpack_cpu:7.2f} s   ({len(needed)} flavour and -common packages; "
          f"the {len(kbuild)} linux-kbuild ones, never unpacked by the builder: {kbuild_cpu:.2f} s more)")
    print(f"CPU floor               : {floor:7.2f} s   ((unpack + compiles) / {cores} cores; "
          f"with kbuild, as until 2026-11: {(floor_cpu + kbuild_cpu) / cores:.2f} s)")
    print(f"floor work, {cores} workers   : {floor_wall:7.2f} s wall under this load ({floor_wall / floor:.2f}x the CPU floor)")
    if naive is not None:
        print(f"naive sequential script : {naive:7.2f} s   ({naive / n:.2f} s/kernel)")
    print(f"bpfarm cold             : {cold:7.2f} s   ({cold / n:.2f} s/kernel)   peak RSS {cold_rss:.0f} MiB; "
          f"CPU {new['cpu']:.2f} s = {new['cpu'] / floor_cpu:.2f}x the floor's CPU")
    print(f"bpfarm warm (unchanged) : {warm:7.2f} s   peak RSS {warm_rss:.0f} MiB")
    print(f"ratio cold/floor        : {cold / floor:7.2f}x  (target <= 1.3x)   cold / the floor's work on {cores} workers: {cold / floor_wall:.2f}x")
    print(f"ratio warm/floor        : {warm / floor:7.2f}x")
    print(f"packages inspected      : {new['inspected']:7d}     ({new['inspect_cpu']:.2f} s CPU; "
          f"{len([f for f in os.listdir(debs) if f.endswith('.deb')])} packages in {debs})")
    if base:
        print(f"baseline cold           : {base['cold']:7.2f} s   ({base['cold'] / n:.2f} s/kernel)   peak RSS {base['rss']:.0f} MiB; "
              f"CPU {base['cpu']:.2f} s = {base['cpu'] / floor_cpu:.2f}x the floor's CPU")
        print(f"baseline warm           : {base['warm']:7.2f} s")
        print(f"baseline inspected      : {base['inspected']:7d}     ({base['inspect_cpu']:.2f} s CPU)")
        print(f"baseline cold/floor     : {base['cold'] / floor:7.2f}x   warm/floor {base['warm'] / floor:.2f}x   "
              f"new cold / baseline cold {cold / base['cold']:.2f}x   new CPU / baseline CPU {new['cpu'] / base['cpu']:.2f}x")
        if args.repeat > 1:
            print(f"  (medians of {args.repeat} alternating rounds; CPU new {' '.join(f'{c:.2f}' for c in new['cpus'])}, "
                  f"baseline {' '.join(f'{c:.2f}' for c in base['cpus'])}; 1-min load at each start "
                  f"{' '.join(f'{l:.1f}' for l in base['loads'] + new['loads'])})")
    if naive is not None:
        print(f"ratio naive/cold        : {naive / cold:7.2f}x  (target >= 4x)")
    print(f"warm target < 1 s       : {'met' if warm < 1 else 'NOT met'}")
    print(f"load average            : {' '.join(open('/proc/loadavg').read().split()[:3])}")
    breakdown(timings, new["sampler"], cores)
    # Millions of small files: rm is faster than shutil.rmtree.
    subprocess.run(["rm", "-rf", work], check=False)


if __name__ == "__main__":
    main()
