#!/usr/bin/env python3
"""Benchmark: time from starting bpfarm-agent to a loaded, attached program,
for the three ways it can get the object, side by side in one run:

  local hit      the object is already in the install path;
  registry fetch empty install path, --build-policy never, a bpfarm registry
                 on loopback holds the object;
  local build    empty install path (and build cache), no registry: the agent
                 builds from the running kernel's BTF (bpftool + clang).

Each is timed from `bpfarm-agent ... run` starting to its "attached" line,
repeated --runs times; medians are compared. Target: fetch >= 20x faster
than the local build. Needs root (it loads the program).

    bench/agent.py [--runs 5]
"""
import argparse
import os
import shutil
import statistics
import subprocess
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target/release")


def timed(argv, env=None):
    """Seconds from start until the agent reports its programs attached (it
    is then stopped: teardown, which waits for RCU grace periods, is not
    part of getting a program loaded)."""
    # Let the previous run's detach (deferred RCU work in the kernel) finish,
    # so no run pays for the one before it.
    time.sleep(0.5)
    t = time.monotonic()
    p = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    seen = []
    for line in p.stderr:
        seen.append(line)
        if "attached" in line:
            took = time.monotonic() - t
            p.terminate()
            p.wait()
            return took
    p.wait()
    raise SystemExit(f"bench: {' '.join(argv)} never attached:\n{''.join(seen)}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "bpfarm-builder", "-p", "bpfarm-registry", "-p", "bpfarm-agent"], cwd=ROOT, check=True)
    work = tempfile.mkdtemp(prefix="bpfarm-agentbench-")
    env = {k: v for k, v in os.environ.items() if k not in ("TRACEE_BPF_FILE", "KERN_HEADERS")}
    reg = None
    try:
        data = os.path.join(work, "registry")
        token = subprocess.run([f"{BIN}/bpfarm-registry", "token", "create", "--data", data, "--name", "bench", "--scope", "push"], capture_output=True, text=True, check=True).stdout.split()[-1]
        reg = subprocess.Popen([f"{BIN}/bpfarm-registry", "serve", "--listen", "127.0.0.1:0", "--data", data], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env={**env, "BPFARM_LOG": "error"})
        url = reg.stdout.readline().decode().strip().removeprefix("listening on ")
        subprocess.run([f"{BIN}/bpfarm-builder", "build", "--running-kernel", "--no-progress", "--cache-dir", f"{work}/bcache", "--out", f"{work}/out", "--publish", url, "--token", token], capture_output=True, check=True)

        hit_dir = f"{work}/hit"
        timed([f"{BIN}/bpfarm-agent", "--install-path", hit_dir, "--build-policy", "never", "--registry", url, "run", "--duration", "30"], env)
        results = {"local hit": [], "registry fetch": [], "local build": []}
        for i in range(args.runs):
            results["local hit"].append(timed([f"{BIN}/bpfarm-agent", "--install-path", hit_dir, "--build-policy", "never", "run", "--duration", "30"], env))
            results["registry fetch"].append(timed([f"{BIN}/bpfarm-agent", "--install-path", f"{work}/fetch{i}", "--build-policy", "never", "--registry", url, "run", "--duration", "30"], env))
            results["local build"].append(timed([f"{BIN}/bpfarm-agent", "--install-path", f"{work}/build{i}", "--build-policy", "if-needed", "run", "--duration", "30"], env))
        med = {k: statistics.median(v) for k, v in results.items()}
        print(f"bench: time to a loaded, attached program, median of {args.runs} runs, {os.cpu_count()} cores")
        for k, v in med.items():
            print(f"  {k:<15} {v * 1000:8.1f} ms")
        print(f"  local build / registry fetch: {med['local build'] / med['registry fetch']:.1f}x  (target >= 20x)")
        print(f"  registry fetch / local hit:   {med['registry fetch'] / med['local hit']:.2f}x")
    finally:
        if reg:
            reg.kill()
            reg.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
