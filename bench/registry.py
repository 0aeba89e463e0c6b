#!/usr/bin/env python3
"""Benchmark: object download from bpfarm-registry against Debian's
docker-registry (CNCF distribution 2.8) serving the same bytes as a blob.

Both run on loopback in this one run; the same load client (wrk) hits
each blob URL with the same settings. Prints requests/s, p99 latency, the
ratio, and each server's peak RSS (VmHWM) under the load.

    bench/registry.py [--seconds 10] [--connections 64] [--object PATH]
"""
import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def wait_http(url, timeout=20):
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(url, timeout=1)
            return
        except urllib.error.HTTPError:
            return  # it answers
        except Exception:
            if time.monotonic() > deadline:
                raise SystemExit(f"bench: {url} did not come up")
            time.sleep(0.05)


def hwm_mib(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def wrk(url, seconds, conns):
    out = subprocess.run(["wrk", "-t2", f"-c{conns}", f"-d{seconds}s", "--latency", url], capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[p99.group(2)]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)|Socket errors: (.*)", out)
    return rps, float(p99.group(1)) * scale, errors.group(0) if errors else None


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--object", help="object file to serve (default: 132 KiB of pseudo-random bytes, a tracer object's size)")
    ap.add_argument("--registry-bin", default=os.path.join(ROOT, "target/release/bpfarm-registry"))
    args = ap.parse_args()
    # The peers come from Debian; install them if this machine lacks them.
    missing = [pkg for pkg, exe in (("docker-registry", "docker-registry"), ("wrk", "wrk")) if not shutil.which(exe)]
    if missing:
        subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing], check=True, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    if not os.path.exists(args.registry_bin):
        subprocess.run(["cargo", "build", "--release", "-p", "bpfarm-registry"], cwd=ROOT, check=True)
    data = open(args.object, "rb").read() if args.object else hashlib.sha256(b"seed").digest() * (132 * 1024 // 32)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    work = tempfile.mkdtemp(prefix="bpfarm-regbench-")
    procs = []
    try:
        # distribution 2.8, minimal config, filesystem storage on loopback.
        cfg = os.path.join(work, "distribution.yml")
        with open(cfg, "w") as f:
            f.write(f"version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {work}/distribution\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:5055\n")
        dist = subprocess.Popen(["docker-registry", "serve", cfg], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(dist)
        wait_http("http://127.0.0.1:5055/v2/")
        req = urllib.request.Request("http://127.0.0.1:5055/v2/bench/tracee-bpf/blobs/uploads/", method="POST")
        loc = urllib.request.urlopen(req).headers["Location"]
        sep = "&" if "?" in loc else "?"
        put = urllib.request.Request(f"{loc}{sep}digest={digest}", data=data, method="PUT", headers={"Content-Type": "application/octet-stream"})
        urllib.request.urlopen(put)
        dist_url = f"http://127.0.0.1:5055/v2/bench/tracee-bpf/blobs/{digest}"
        assert hashlib.sha256(urllib.request.urlopen(dist_url).read()).hexdigest() == digest[7:]

        # bpfarm-registry with the same bytes.
        rdata = os.path.join(work, "bpfarm")
        token = subprocess.run([args.registry_bin, "token", "create", "--data", rdata, "--name", "bench", "--scope", "push"], capture_output=True, text=True, check=True).stdout.split()[-1]
        reg = subprocess.Popen([args.registry_bin, "serve", "--listen", "127.0.0.1:0", "--data", rdata], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env={**os.environ, "BPFARM_LOG": "error"})
        procs.append(reg)
        base = reg.stdout.readline().decode().strip().removeprefix("listening on ")
        auth = {"Authorization": f"Bearer {token}"}
        urllib.request.urlopen(urllib.request.Request(f"{base}/v1/blobs/{digest}", data=data, method="PUT", headers=auth))
        ours_url = f"{base}/v1/blobs/{digest}"
        assert hashlib.sha256(urllib.request.urlopen(ours_url).read()).hexdigest() == digest[7:]

        print(f"bench: {len(data)} byte object, wrk -t2 -c{args.connections} -d{args.seconds}s, {os.cpu_count()} cores", flush=True)
        d_rps, d_p99, d_err = wrk(dist_url, args.seconds, args.connections)
        d_rss = hwm_mib(dist.pid)
        o_rps, o_p99, o_err = wrk(ours_url, args.seconds, args.connections)
        o_rss = hwm_mib(reg.pid)
        print(f"distribution 2.8 : {d_rps:9.0f} req/s   p99 {d_p99:7.2f} ms   peak RSS {d_rss:6.1f} MiB{'   ' + d_err if d_err else ''}")
        print(f"bpfarm-registry  : {o_rps:9.0f} req/s   p99 {o_p99:7.2f} ms   peak RSS {o_rss:6.1f} MiB{'   ' + o_err if o_err else ''}")
        print(f"throughput ratio (bpfarm/distribution): {o_rps / d_rps:.2f}x   p99 ratio: {o_p99 / d_p99:.2f}x (lower is better)")
    finally:
        for p in procs:
            p.kill()
            p.wait()
        subprocess.run(["rm", "-rf", work])


if __name__ == "__main__":
    main()
