#!/usr/bin/env python3
"""Benchmark: time from starting bpfarm-agent to a loaded, attached program,
for the ways it can get the object, side by side in one run:

  local hit      the object is already in the install path;
  /v1 fetch      empty install path, --build-policy never, a bpfarm registry
                 on loopback holds the object (its /v1 API);
  static fetch   the same, from nginx serving `bpfarm-registry export`'s
                 static layout (no /v1 API);
  installed      the first run after a fetch installed the object (what
                 every later start of that host is);
  cold hit       a local hit with the agent's executable and the object's
                 files evicted from the page cache first (posix_fadvise
                 DONTNEED on those files only, not the whole machine's cache);
  local build    empty install path (and build cache), no registry: the agent
                 builds from the running kernel's BTF (bpftool + clang).

Each is timed from `bpfarm-agent ... run` starting to its "attached" line,
repeated --runs times, interleaved; medians are compared. Targets: a fetch
costs <= 3 ms over a local hit; installed and cold hit within 10% of a local
hit; fetch >= 20x faster than the local build. Needs root (it loads the
program).

    bench/agent.py [--runs 10] [--no-build] [--bin-dir target/release]
"""
import argparse
import os
import shutil
import socket
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


def evict(paths):
    """Drops these files' pages from the page cache."""
    for path in paths:
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            continue
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--no-build", action="store_true", help="skip the local build (the slowest part)")
    ap.add_argument("--bin-dir", default=BIN, help="where the bpfarm binaries are (default: a release build made here)")
    args = ap.parse_args()
    bin_dir = args.bin_dir
    if bin_dir == BIN:
        subprocess.run(["cargo", "build", "--release", "-q", "-p", "bpfarm-builder", "-p", "bpfarm-registry", "-p", "bpfarm-agent"], cwd=ROOT, check=True)
    nginx_exe = shutil.which("nginx") or "/usr/sbin/nginx"
    if not os.path.exists(nginx_exe):
        raise SystemExit("bench: nginx is needed for the static layout (ci/install-deps installs it)")
    work = tempfile.mkdtemp(prefix="bpfarm-agentbench-")
    env = {k: v for k, v in os.environ.items() if k not in ("TRACEE_BPF_FILE", "KERN_HEADERS")}
    procs = []
    try:
        data = os.path.join(work, "registry")
        token = subprocess.run([f"{bin_dir}/bpfarm-registry", "token", "create", "--data", data, "--name", "bench", "--scope", "push"], capture_output=True, text=True, check=True).stdout.split()[-1]
        reg = subprocess.Popen([f"{bin_dir}/bpfarm-registry", "serve", "--listen", "127.0.0.1:0", "--data", data], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env={**env, "BPFARM_LOG": "error"})
        procs.append(reg)
        url = reg.stdout.readline().decode().strip().removeprefix("listening on ")
        subprocess.run([f"{bin_dir}/bpfarm-builder", "build", "--running-kernel", "--no-progress", "--cache-dir", f"{work}/bcache", "--out", f"{work}/out", "--publish", url, "--token", token], capture_output=True, check=True)
        static = os.path.join(work, "static")
        subprocess.run([f"{bin_dir}/bpfarm-registry", "export", "--data", data, "--out", static], capture_output=True, check=True)
        port = free_port()
        with open(os.path.join(work, "nginx.conf"), "w") as f:
            f.write(NGINX_CONF.format(work=work, port=port, root=static))
        procs.append(subprocess.Popen([nginx_exe, "-c", os.path.join(work, "nginx.conf")], stderr=subprocess.DEVNULL))
        static_url = f"http://127.0.0.1:{port}"
        wait_for(port)

        agent = f"{bin_dir}/bpfarm-agent"
        hit_dir = f"{work}/hit"
        timed([agent, "--install-path", hit_dir, "--build-policy", "never", "--registry", url, "run", "--duration", "30"], env)
        hit_files = [agent] + [os.path.join(hit_dir, f) for f in os.listdir(hit_dir)]
        kinds = ["local hit", "/v1 fetch", "static fetch", "installed", "cold hit"] + ([] if args.no_build else ["local build"])
        results = {k: [] for k in kinds}
        never = ["--build-policy", "never"]
        for i in range(args.runs):
            results["local hit"].append(timed([agent, "--install-path", hit_dir, *never, "run", "--duration", "30"], env))
            results["/v1 fetch"].append(timed([agent, "--install-path", f"{work}/fetch{i}", *never, "--registry", url, "run", "--duration", "30"], env))
            results["static fetch"].append(timed([agent, "--install-path", f"{work}/static{i}", *never, "--registry", static_url, "run", "--duration", "30"], env))
            results["installed"].append(timed([agent, "--install-path", f"{work}/fetch{i}", *never, "run", "--duration", "30"], env))
            evict(hit_files)
            results["cold hit"].append(timed([agent, "--install-path", hit_dir, *never, "run", "--duration", "30"], env))
            if not args.no_build:
                results["local build"].append(timed([agent, "--install-path", f"{work}/build{i}", "--build-policy", "if-needed", "run", "--duration", "30"], env))
        med = {k: statistics.median(v) for k, v in results.items()}
        hit = med["local hit"]
        print(f"bench: time to a loaded, attached program, median of {args.runs} runs, {os.cpu_count()} cores, load {' '.join(open('/proc/loadavg').read().split()[:3])}")
        for k, v in med.items():
            spread = (max(results[k]) - min(results[k])) * 1000
            extra = "" if k == "local hit" else f"   {(v - hit) * 1000:+7.1f} ms  {v / hit:5.2f}x local hit"
            print(f"  {k:<13} {v * 1000:8.1f} ms  (spread {spread:5.1f} ms){extra}")
        print(f"  /v1 fetch over local hit:    {(med['/v1 fetch'] - hit) * 1000:+.1f} ms  (target <= 3 ms)")
        print(f"  static fetch over local hit: {(med['static fetch'] - hit) * 1000:+.1f} ms")
        print(f"  installed / local hit:       {med['installed'] / hit:.3f}x  (target <= 1.10x)")
        print(f"  cold hit / local hit:        {med['cold hit'] / hit:.3f}x  (target <= 1.10x)")
        if not args.no_build:
            print(f"  local build / /v1 fetch:     {med['local build'] / med['/v1 fetch']:.1f}x  (target >= 20x)")
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.terminate()
                p.wait()
        shutil.rmtree(work, ignore_errors=True)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_for(port):
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit("bench: nginx did not start")


NGINX_CONF = """daemon off;
master_process on;
user root;
worker_processes 1;
pid {work}/nginx.pid;
error_log {work}/nginx.err error;
events {{ worker_connections 64; }}
http {{
    access_log off;
    sendfile on;
    client_body_temp_path {work}/ncb;
    proxy_temp_path {work}/np;
    fastcgi_temp_path {work}/nf;
    uwsgi_temp_path {work}/nu;
    scgi_temp_path {work}/ns;
    server {{
        listen 127.0.0.1:{port};
        root {root};
        default_type application/octet-stream;
    }}
}}
"""


if __name__ == "__main__":
    main()
