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

Besides the time to "attached", each run's time to the agent's "using"
line is kept: the agent's own part (search, fetch, every check), before
libbpf and the kernel load and attach. The kernel's part (its feature
probes, the verifier) varies by tens of ms between runs on a shared
machine and is the same for the same bytes, so the fetch's cost over a
local hit is read best from the own parts.

--baseline-bin-dir DIR times another agent (e.g. one built from main) the
same way, interleaved with this one against the same registry, and prints
old beside new.

--breakdown N runs N /v1 fetches and N local hits under
`strace -f --seccomp-bpf` (only the syscalls that mark a phase are stopped
on) and prints the median time of each phase from the agent's exec: the
HTTP client's thread, connect, the first and the last byte of the answer,
the first bpf() call (load starts: everything before it is the agent's own
work) and the "attached" line. strace slows what it traces, so read the
phases against each other, not as absolute times.

    bench/agent.py [--runs 10] [--no-build] [--bin-dir target/release]
                   [--baseline-bin-dir DIR] [--breakdown 5]
"""
import argparse
import os
import re
import shutil
import socket
import statistics
import subprocess
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target/release")


# Of the last timed run: seconds from start to the agent's "using" line
# (its own work done: search, fetch, checks; the rest is libbpf and the
# kernel's load, verifier and attach, the same for the same bytes).
LAST_LOAD_START = [None]
# (which agent, kind) -> those seconds, per run.
LOAD_STARTS = {}


def record(res, who, kind, argv, env):
    res[kind].append(timed(argv, env))
    if LAST_LOAD_START[0] is not None:
        LOAD_STARTS.setdefault((who, kind), []).append(LAST_LOAD_START[0])


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
    loading = None
    for line in p.stderr:
        seen.append(line)
        # "using" ends the search, fetch and checks (every agent since #8
        # prints it); what follows is libbpf and the kernel.
        if loading is None and line.startswith("bpfarm-agent: using "):
            loading = time.monotonic() - t
        if "attached" in line:
            took = time.monotonic() - t
            p.terminate()
            p.wait()
            LAST_LOAD_START[0] = loading
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
    ap.add_argument("--baseline-bin-dir", metavar="DIR", help="a folder holding another build's bpfarm-agent (e.g. target/release of an older checkout), timed beside this one (old vs new)")
    ap.add_argument("--breakdown", type=int, default=0, metavar="N", help="also trace N fetches and N hits with strace (needs strace) and print their phases")
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
        base_agent = os.path.join(args.baseline_bin_dir, "bpfarm-agent") if args.baseline_bin_dir else None
        base_kinds = ["local hit", "/v1 fetch", "static fetch", "cold hit"]
        base = {k: [] for k in base_kinds}
        if base_agent:
            # Its own copy of the object (the new agent's hit dir is evicted too).
            base_hit = f"{work}/base-hit"
            shutil.copytree(hit_dir, base_hit)
            base_files = [base_agent] + [os.path.join(base_hit, f) for f in os.listdir(base_hit)]
        for i in range(args.runs):
            record(results, "new", "local hit", [agent, "--install-path", hit_dir, *never, "run", "--duration", "30"], env)
            record(results, "new", "/v1 fetch", [agent, "--install-path", f"{work}/fetch{i}", *never, "--registry", url, "run", "--duration", "30"], env)
            record(results, "new", "static fetch", [agent, "--install-path", f"{work}/static{i}", *never, "--registry", static_url, "run", "--duration", "30"], env)
            record(results, "new", "installed", [agent, "--install-path", f"{work}/fetch{i}", *never, "run", "--duration", "30"], env)
            evict(hit_files)
            record(results, "new", "cold hit", [agent, "--install-path", hit_dir, *never, "run", "--duration", "30"], env)
            if not args.no_build:
                record(results, "new", "local build", [agent, "--install-path", f"{work}/build{i}", "--build-policy", "if-needed", "run", "--duration", "30"], env)
            if base_agent:
                record(base, "base", "local hit", [base_agent, "--install-path", base_hit, *never, "run", "--duration", "30"], env)
                record(base, "base", "/v1 fetch", [base_agent, "--install-path", f"{work}/bfetch{i}", *never, "--registry", url, "run", "--duration", "30"], env)
                record(base, "base", "static fetch", [base_agent, "--install-path", f"{work}/bstatic{i}", *never, "--registry", static_url, "run", "--duration", "30"], env)
                evict(base_files)
                record(base, "base", "cold hit", [base_agent, "--install-path", base_hit, *never, "run", "--duration", "30"], env)
        med = {k: statistics.median(v) for k, v in results.items()}
        hit = med["local hit"]
        print(f"bench: time to a loaded, attached program, median of {args.runs} runs, {os.cpu_count()} cores, load {' '.join(open('/proc/loadavg').read().split()[:3])}")
        for k, v in med.items():
            spread = (max(results[k]) - min(results[k])) * 1000
            extra = "" if k == "local hit" else f"   {(v - hit) * 1000:+7.1f} ms  {v / hit:5.2f}x local hit"
            print(f"  {k:<13} {v * 1000:8.1f} ms  (spread {spread:5.1f} ms){extra}")
        ls = {k: statistics.median(v) for (who, k), v in LOAD_STARTS.items() if who == "new"}
        if "local hit" in ls:
            print("  the agent's own part (start to its \"using\" line: search, fetch, checks; after it libbpf and the kernel load and attach):")
            for k, v in ls.items():
                extra = "" if k == "local hit" else f"   {(v - ls['local hit']) * 1000:+7.1f} ms"
                print(f"    {k:<13} {v * 1000:8.1f} ms{extra}")
        print(f"  /v1 fetch over local hit:    {(med['/v1 fetch'] - hit) * 1000:+.1f} ms  (target <= 3 ms)")
        print(f"  static fetch over local hit: {(med['static fetch'] - hit) * 1000:+.1f} ms")
        print(f"  installed / local hit:       {med['installed'] / hit:.3f}x  (target <= 1.10x)")
        print(f"  cold hit / local hit:        {med['cold hit'] / hit:.3f}x  (target <= 1.10x)")
        if not args.no_build:
            print(f"  local build / /v1 fetch:     {med['local build'] / med['/v1 fetch']:.1f}x  (target >= 20x)")
        if base_agent:
            bmed = {k: statistics.median(v) for k, v in base.items()}
            bhit = bmed["local hit"]
            print(f"bench: the baseline agent ({args.baseline_bin_dir}, {os.path.getsize(base_agent) / 1e6:.1f} MB) beside this one ({os.path.getsize(agent) / 1e6:.1f} MB), same runs interleaved:")
            print(f"  {'':<13} {'baseline':>22}  {'this build':>22}")
            for k in base_kinds:
                old_extra = "" if k == "local hit" else f" {(bmed[k] - bhit) * 1000:+6.1f} ms"
                new_extra = "" if k == "local hit" else f" {(med[k] - hit) * 1000:+6.1f} ms"
                print(f"  {k:<13} {bmed[k] * 1000:8.1f} ms{old_extra:>12}  {med[k] * 1000:8.1f} ms{new_extra:>12}")
            print(f"  cold hit / local hit: baseline {bmed['cold hit'] / bhit:.3f}x, this build {med['cold hit'] / hit:.3f}x")
            bls = {k: statistics.median(v) for (who, k), v in LOAD_STARTS.items() if who == "base"}
            if "local hit" in bls and "local hit" in ls:
                print("  the agent's own part (to \"using\"), baseline vs this build:")
                for k in bls:
                    if k in ls:
                        print(f"    {k:<13} {bls[k] * 1000:8.1f} ms {(bls[k] - bls['local hit']) * 1000:+6.1f} ms   {ls[k] * 1000:8.1f} ms {(ls[k] - ls['local hit']) * 1000:+6.1f} ms")
            elif "local hit" in ls:
                print("  (the baseline agent printed no \"using\" line: its own part is not timed)")
        if args.breakdown:
            if base_agent:
                print("bench: the baseline agent's phases:")
                breakdown(base_agent, args.breakdown, base_hit, url, f"{work}/base", env)
                print("bench: this build's phases:")
            breakdown(agent, args.breakdown, hit_dir, url, work, env)
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.terminate()
                p.wait()
        shutil.rmtree(work, ignore_errors=True)


PHASES = ["client thread", "connect", "first byte", "last byte", "load starts", "attached"]


def phases(trace):
    """The phases of one agent run from an `strace -f -ttt` log, in ms from
    its exec."""
    t0 = None
    sock = None
    ev = {}
    for line in open(trace):
        parts = line.split(None, 2)
        if len(parts) < 3:
            continue
        t, call = float(parts[1]), parts[2]
        if t0 is None:
            t0 = t
        ms = (t - t0) * 1000
        if call.startswith("clone3(") and "client thread" not in ev and "load starts" not in ev:
            ev["client thread"] = ms
        m = re.match(r"connect\((\d+), \{sa_family=AF_INET", call)
        if m and sock is None:
            sock = m.group(1)
            ev["connect"] = ms
        if sock and call.startswith(f"recvfrom({sock},") and "EAGAIN" not in call:
            ev.setdefault("first byte", ms)
            ev["last byte"] = ms
        if call.startswith("bpf("):
            ev.setdefault("load starts", ms)
        if call.startswith("write(2") and "attached" in call:
            ev["attached"] = ms
            break
    return ev


def breakdown(agent, n, hit_dir, url, work, env):
    os.makedirs(work, exist_ok=True)
    strace = shutil.which("strace")
    if not strace:
        raise SystemExit("bench: --breakdown needs strace (ci/install-deps installs it)")
    calls = "execve,clone3,connect,recvfrom,bpf,write"
    runs = {"/v1 fetch": [], "local hit": []}
    for i in range(n):
        for kind in runs:
            trace = f"{work}/trace-{'fetch' if kind == '/v1 fetch' else 'hit'}{i}"
            where = ["--install-path", f"{work}/traced{i}", "--registry", url] if kind == "/v1 fetch" else ["--install-path", hit_dir]
            time.sleep(0.5)
            subprocess.run([strace, "-f", "-ttt", "--seccomp-bpf", "-e", f"trace={calls}", "-o", trace, agent, *where, "--build-policy", "never", "run", "--duration", "0.05"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, check=True)
            runs[kind].append(phases(trace))
    print(f"bench: phases of a start under strace (ms from exec, median of {n}; traced syscalls are slower, so compare phases, not totals), load {' '.join(open('/proc/loadavg').read().split()[:3])}")
    for kind, evs in runs.items():
        cells = []
        for p in PHASES:
            vals = [e[p] for e in evs if p in e]
            if vals:
                cells.append(f"{p} {statistics.median(vals):.1f}")
        print(f"  {kind:<10} " + ", ".join(cells))
    f, h = runs["/v1 fetch"], runs["local hit"]
    med = lambda evs, p: statistics.median([e[p] for e in evs if p in e])
    try:
        print(f"  fetch: TTFB (connect to first byte) {med(f, 'first byte') - med(f, 'connect'):.1f} ms, body {med(f, 'last byte') - med(f, 'first byte'):.1f} ms, "
              f"last byte to load {med(f, 'load starts') - med(f, 'last byte'):.1f} ms; load starts {med(f, 'load starts') - med(h, 'load starts'):+.1f} ms after a local hit's")
    except statistics.StatisticsError:
        print("  (a phase was missing from the traces)")


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
