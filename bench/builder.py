#!/usr/bin/env python3
"""Benchmark: bpfarm-builder against a naive sequential script and against
the CPU floor, same run.

For N kernels of a matrix (default: the Debian bookworm amd64 matrix):
  1. cold:  bpfarm-builder with an empty cache (unpack, compile, validate);
  2. warm:  bpfarm-builder again, nothing changed;
  3. floor: the CPU time no builder can avoid: every distinct package
            unpacked once (`dpkg-deb -x`) plus one clang + llc per kernel
            with the builder's own flags, summed and divided by the cores;
  4. naive: per kernel, `dpkg-deb -x` its three packages into a fresh folder,
            compile with the same clang/llc flags, delete the folder.
Prints each time, cold/floor, warm/floor, naive/cold and peak RSS, and the
compile's CPU time per kernel. Targets (2 cores): cold within 1.3x of the
floor; cold >= 4x faster than naive; warm < 1 s.

    bench/builder.py [--matrix kernels/debian-bookworm.toml] [--arch amd64|all] [--limit N] [--no-naive]
                     [--builder target/release/bpfarm-builder] [--program-dir bpf]
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def timed(argv, **kw):
    """Runs argv, returns (seconds, peak RSS in MiB, completed returncode)."""
    t = time.monotonic()
    p = subprocess.Popen(argv, **kw)
    _, status, ru = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    return time.monotonic() - t, ru.ru_maxrss / 1024, p.returncode


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
    ap.add_argument("--no-naive", action="store_true", help="skip the naive script (the slowest part)")
    ap.add_argument("--time-trace", action="store_true", help="also compile each kernel with clang -ftime-trace and print where its time goes")
    ap.add_argument("--program-dir", default=os.path.join(ROOT, "bpf"), help="the program the floor and the naive script compile (the one --builder embeds)")
    args = ap.parse_args()

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
    subprocess.run([args.builder, "fetch", "--matrix", args.matrix, f"--select={select}", "--package-cache", debs, "--no-progress"], check=True)
    print(f"fetch (packages not yet in {debs}): {time.monotonic() - started:.1f} s", flush=True)
    work = tempfile.mkdtemp(prefix="bpfarm-bench-")
    sub = os.path.join(work, "matrix.toml")
    with open(sub, "w") as f:
        f.write('name = "bench"\n')
        for k in kernels:
            f.write(f'\n[[kernel]]\npackage = "{k["package"]}"\narch = "{k["arch"]}"\n')
    n = len(kernels)
    print(f"bench: {n} kernels ({args.arch}) from {os.path.relpath(args.matrix, ROOT)}, {os.cpu_count()} cores", flush=True)

    bcache, out = os.path.join(work, "cache"), os.path.join(work, "out")
    build = [args.builder, "build", "--matrix", sub, "--package-cache", debs, "--cache-dir", bcache, "--out", out, "--no-progress"]
    cold, cold_rss, rc = timed(build, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if rc != 0:
        raise SystemExit(f"bench: cold build failed ({rc}); run it by hand: {' '.join(build)}")
    warm, warm_rss, rc = timed(build, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if rc != 0:
        raise SystemExit("bench: warm build failed")

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

    # The floor: each distinct package unpacked once, one compile per kernel.
    shared = os.path.join(work, "floor")
    os.makedirs(shared)
    unpack_cpu, compile_cpu = 0.0, []
    for p in sorted({package(src) for m in metas for src in m["sources"]}):
        unpack_cpu += cpu(["dpkg-deb", "-x", p, shared])
    for m in metas:
        cc, llc = compile_argv(m, shared, os.path.join(work, "floor-t"))
        compile_cpu.append(cpu(cc, cwd=args.program_dir) + cpu(llc))
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
    shutil.rmtree(shared, ignore_errors=True)
    cores = os.cpu_count()
    floor = (unpack_cpu + sum(compile_cpu)) / cores

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
    print(f"unpack CPU, distinct    : {unpack_cpu:7.2f} s")
    print(f"CPU floor               : {floor:7.2f} s   ((unpack + compiles) / {cores} cores)")
    if naive is not None:
        print(f"naive sequential script : {naive:7.2f} s   ({naive / n:.2f} s/kernel)")
    print(f"bpfarm cold             : {cold:7.2f} s   ({cold / n:.2f} s/kernel)   peak RSS {cold_rss:.0f} MiB")
    print(f"bpfarm warm (unchanged) : {warm:7.2f} s   peak RSS {warm_rss:.0f} MiB")
    print(f"ratio cold/floor        : {cold / floor:7.2f}x  (target <= 1.3x)")
    print(f"ratio warm/floor        : {warm / floor:7.2f}x")
    if naive is not None:
        print(f"ratio naive/cold        : {naive / cold:7.2f}x  (target >= 4x)")
    print(f"warm target < 1 s       : {'met' if warm < 1 else 'NOT met'}")
    print(f"load average            : {' '.join(open('/proc/loadavg').read().split()[:3])}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
