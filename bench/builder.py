#!/usr/bin/env python3
"""Benchmark: bpfarm-builder against a naive sequential script, same run.

For N kernels of a matrix (default: the Debian bookworm amd64 matrix):
  1. cold:  bpfarm-builder with an empty cache (unpack, compile, validate);
  2. naive: per kernel, `dpkg-deb -x` its three packages into a fresh folder,
            compile with the same clang/llc flags, delete the folder;
  3. warm:  bpfarm-builder again, nothing changed.
Prints each time, the cold/naive ratio and peak RSS. Targets (2 cores):
cold >= 4x faster than naive; warm < 1 s.

    bench/builder.py [--matrix kernels/debian-bookworm.toml] [--arch amd64] [--limit N]
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


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--matrix", default=os.path.join(ROOT, "kernels/debian-bookworm.toml"))
    ap.add_argument("--arch", default="amd64", help="Debian arch of the matrix entries to use")
    ap.add_argument("--limit", type=int, default=0, help="only the first N kernels (0 = all)")
    ap.add_argument("--builder", default=os.path.join(ROOT, "target/release/bpfarm-builder"))
    args = ap.parse_args()

    if not os.path.exists(args.builder):
        subprocess.run(["cargo", "build", "--release", "-p", "bpfarm-builder"], cwd=ROOT, check=True)
    cache = os.environ.get("BPFARM_CACHE", os.path.expanduser("~/.cache/bpfarm"))
    debs = os.path.join(cache, "debs")
    subprocess.run([args.builder, "fetch", "--matrix", args.matrix, f"--select=-{args.arch}$", "--package-cache", debs, "--no-progress"], check=True)

    import tomllib
    with open(args.matrix, "rb") as f:
        kernels = [k for k in tomllib.load(f)["kernel"] if k["arch"] == args.arch]
    if args.limit:
        kernels = kernels[: args.limit]
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

    # The naive script: the same compile, one kernel at a time, unpacking
    # every package with dpkg-deb into a fresh folder and deleting it after.
    metas = []
    for root, _, files in os.walk(out):
        metas += [json.load(open(os.path.join(root, f))) for f in files if f.endswith(".o.json")]
    by_name = {}
    for f in os.listdir(debs):
        if f.endswith(".deb"):
            name, version, arch = f[:-4].split("_")
            by_name[(name, version.replace("%3a", ":"), arch)] = os.path.join(debs, f)
    clang = shutil.which("clang")
    resource = subprocess.run([clang, "-print-resource-dir"], capture_output=True, text=True).stdout.strip()
    script = os.path.join(work, "naive.sh")
    with open(script, "w") as s:
        s.write("set -e\n")
        for m in sorted(metas, key=lambda m: m["kernel_release"]):
            pkgs = [next(p for (n_, v, _a), p in by_name.items() if n_ == src["name"] and v == src["version"]) for src in m["sources"]]
            flavour, common = m["sources"][0]["name"], m["sources"][1]["name"]
            d = os.path.join(work, "naive")
            src = f"{d}/usr/src/{common.replace('linux-headers-', 'linux-headers-', 1)}"
            bld = f"{d}/usr/src/{flavour}"
            flags = m["flags"]
            cflags = [f.replace("$CLANG_RESOURCE", resource).replace("/bpfarm/kernel/source", src).replace("/bpfarm/kernel/build", bld) for f in flags["clang"]]
            s.write(f"rm -rf {d}; mkdir -p {d}\n")
            for p in pkgs:
                s.write(f"dpkg-deb -x {p} {d}\n")
            s.write(f"(cd {ROOT}/bpf && {clang} {' '.join(cflags)} -c tracer.bpf.c -o {d}/t.bc)\n")
            s.write(f"llc {' '.join(flags['llc'])} -o {d}/t.o {d}/t.bc\n")
            s.write(f"rm -rf {d}\n")
    naive, naive_rss, rc = timed(["bash", script], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if rc != 0:
        raise SystemExit(f"bench: the naive script failed; see {script}")

    print(f"naive sequential script : {naive:7.2f} s   ({naive / n:.2f} s/kernel)")
    print(f"bpfarm cold             : {cold:7.2f} s   ({cold / n:.2f} s/kernel)   peak RSS {cold_rss:.0f} MiB")
    print(f"bpfarm warm (unchanged) : {warm:7.2f} s   peak RSS {warm_rss:.0f} MiB")
    print(f"ratio naive/cold        : {naive / cold:7.2f}x  (target >= 4x)")
    print(f"warm target < 1 s       : {'met' if warm < 1 else 'NOT met'}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
