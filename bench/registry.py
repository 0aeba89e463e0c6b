#!/usr/bin/env python3
"""Benchmark: object download from bpfarm-registry against what the
machine can do (nginx serving the file with sendfile) and against Debian's
docker-registry (CNCF distribution 2.8) serving the same bytes as a blob.

All run on loopback in this one run; the same load client (wrk) hits each
URL with the same settings: nginx, bpfarm's static layout path, its /v1
blob, its /v2 blob, distribution's blob, for each object size. Prints
requests/s, p99 latency and the ratios against nginx and distribution (the
figures that mean anything on a shared machine), each server's own CPU
time per request (the figure other jobs move least), wrk's CPU share, and
the bound a size puts on "x distribution" when even nginx cannot reach it;
then the registry's peak RSS (VmHWM) including a run with 1,000
connections. --repeat N runs N interleaved rounds (every server once per
round) and shows the median, the best and the spread.

    bench/registry.py [--seconds 10] [--connections 64] [--sizes 100K,1M,10M] [--repeat 5] [--baseline-bin OLD] [--paths static,/v1 blob,/v2 blob] [--sched] [--perf] [--syscalls]

Beside each time, a measure of the work per request that other jobs on
the machine do not move: heap allocations per request (and bytes asked
for) on each of the registry's paths, counted by a preloaded counter
(bench/alloc_count.c, built with the system C compiler) in a separate
pass, on registries of their own, so the timed runs carry no counting.
--baseline-bin OLD serves the same objects from an older build too, in
the same interleaved rounds, and prints new/old for req/s, CPU per
request (all of it, and user space alone) and allocations per request.
--syscalls counts the registry's system calls per request on each path
(strace -c -f attached during a wrk run on a registry of its own, before
the timed runs: strace stops every call, so it gives a request's calls,
not their cost, and it inflates lock contention). --perf counts system
calls, futex calls and context switches per request in the kernel (perf
stat, nothing slowed down) during every timed run, beside req/s. --sched adds where each server's threads spent the timed runs: the
cores obtained, the run-queue delay (time runnable but not running, from
/proc/<pid>/task/*/schedstat) per CPU second and per request, context
switches per request, and 5 ms samples of every thread's state (running
or runnable; asleep in futex, i.e. a parked worker, or in epoll, waiting
for sockets) -- the way to tell why one server gets fewer of the shared
cores than another.

Soak: bpfarm-registry alone under mixed load for a while, with a slowloris
and unauthenticated uploads running against it the whole time: /v1
downloads (verified), /v1 publishes and replaces, /v2 pulls (tag -> index
-> manifest -> blob, verified). Prints the error count, requests per kind,
and the registry's RSS and open descriptors at the start and the end; ends
with `bpfarm-registry fsck`. Exits 1 on any error. CI runs a short one.

    bench/registry.py --soak 300 [--slowloris 300] [--registry-bin PATH]

Time to first byte of the agent's one-trip lookup (`GET /v1/objects/<arch>/
<version>/<release>` accepting the object itself): --ttfb N requests, each
on a new connection, 100 ms apart (a request arriving after a quiet gap,
as an agent's does) and back to back for reference; median and p90, from
the request's last byte sent to the answer's first byte received. With
--baseline-bin the same is measured on that binary, interleaved round by
round, and the ratio printed.

    bench/registry.py --ttfb 30 [--repeat 5] [--baseline-bin OLD] [--registry-bin NEW]
"""
import argparse
import hashlib
import http.client
import json
import os
import random
import re
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
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


def wrk(url, seconds, conns, server_pid=None):
    """One wrk run: requests/s, p99 ms, an error line or None, the server's
    CPU time per request (µs, its whole process tree; None without a pid),
    wrk's own CPU use as a share of the machine's cores, the requests
    done, and the server's user-space CPU time per request (µs)."""
    clk = os.sysconf("SC_CLK_TCK")
    before_srv = cpu_split(server_pid) if server_pid else (0, 0)
    before_wrk = os.times()
    out = subprocess.run(["wrk", "-t2", f"-c{conns}", f"-d{seconds}s", "--latency", url], capture_output=True, text=True, check=True).stdout
    after_wrk = os.times()
    after_srv = cpu_split(server_pid) if server_pid else (0, 0)
    srv_ticks = sum(after_srv) - sum(before_srv)
    user_ticks = after_srv[0] - before_srv[0]
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    done = int(re.search(r"(\d+) requests in", out).group(1))
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[p99.group(2)]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)|Socket errors: (.*)", out)
    cpu_us = srv_ticks / clk * 1e6 / done if server_pid and done else None
    user_us = user_ticks / clk * 1e6 / done if server_pid and done else None
    wrk_cpu = (after_wrk.children_user + after_wrk.children_system - before_wrk.children_user - before_wrk.children_system)
    wrk_share = wrk_cpu / (seconds * (os.cpu_count() or 1))
    return rps, float(p99.group(1)) * scale, errors.group(0) if errors else None, cpu_us, wrk_share, done, user_us


def cpu_split(pid):
    """User and system clock ticks of `pid` and its child processes
    (nginx's workers), 0 for a process that is gone."""
    user = system = 0
    try:
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        user += int(fields[11])
        system += int(fields[12])
        for task in os.listdir(f"/proc/{pid}/task"):
            for child in open(f"/proc/{pid}/task/{task}/children").read().split():
                u, k = cpu_split(int(child))
                user += u
                system += k
    except (FileNotFoundError, ProcessLookupError):
        pass
    return user, system


def cpu_ticks(pid):
    """User + system clock ticks of `pid` and its child processes (what
    bench/fleet.py charges a registry)."""
    return sum(cpu_split(pid))


# Syscall numbers (x86_64) a sleeping thread is found in, by what they mean
# for a server: parked on a futex (a tokio worker with nothing to do, a
# lock), or waiting for sockets (epoll, nginx's and tokio's I/O driver).
SLEEPS = {202: "futex", 232: "epoll", 281: "epoll", 441: "epoll", 7: "poll", 271: "poll", 0: "read", 17: "read"}


def tasks(pid):
    """(pid, tid) of every thread of `pid` and of its child processes."""
    out = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            out.append((pid, tid))
            for child in open(f"/proc/{pid}/task/{tid}/children").read().split():
                out += tasks(int(child))
    except (FileNotFoundError, ProcessLookupError):
        pass
    return out


def sched_counts(pid):
    """Per thread of `pid`'s tree: (name, ns on a CPU, ns waiting on a run
    queue, voluntary switches, involuntary switches)."""
    out = {}
    for p, t in tasks(pid):
        try:
            run, wait, _ = open(f"/proc/{p}/task/{t}/schedstat").read().split()
            status = dict(line.split(":", 1) for line in open(f"/proc/{p}/task/{t}/status") if ":" in line)
            out[t] = (status["Name"].strip(), int(run), int(wait), int(status["voluntary_ctxt_switches"]), int(status["nonvoluntary_ctxt_switches"]))
        except (FileNotFoundError, ProcessLookupError, ValueError, KeyError):
            pass
    return out


class Sched:
    """Where a server's threads spend a load run: from /proc's schedstat
    (time on a CPU, time runnable but waiting for one: the run-queue
    delay), context switches, and samples of each thread's state every
    `every` seconds (running or runnable; asleep, and in which system
    call). Started before a wrk run, stopped after it."""

    def __init__(self, pid, every=0.005):
        self.pid, self.every = pid, every
        self.samples = {}
        self.stop_flag = threading.Event()
        self.before = sched_counts(pid)
        self.t0 = time.monotonic()
        self.thread = threading.Thread(target=self.sample, daemon=True)
        self.thread.start()

    def sample(self):
        while not self.stop_flag.wait(self.every):
            for p, t in tasks(self.pid):
                try:
                    state = open(f"/proc/{p}/task/{t}/stat").read().rsplit(")", 1)[1].split()[0]
                    if state == "R":
                        where = "running"
                    else:
                        nr = open(f"/proc/{p}/task/{t}/syscall").read().split()[0]
                        where = SLEEPS.get(int(nr), f"syscall {nr}") if nr.lstrip("-").isdigit() else "other"
                except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
                    continue
                per = self.samples.setdefault(t, {})
                per[where] = per.get(where, 0) + 1

    def stop(self, requests):
        """The run's figures: cores obtained, run-queue delay per CPU
        second and per request, switches per request, how many threads
        did the work (more than 5 % of a core each) and, for those
        threads only, the share of samples in each state ("running" is
        on a CPU or waiting for one)."""
        self.stop_flag.set()
        self.thread.join()
        wall = time.monotonic() - self.t0
        after = sched_counts(self.pid)
        run = wait = vol = invol = 0
        busy = []
        for t, (name, r, w, v, i) in after.items():
            b = self.before.get(t, (name, 0, 0, 0, 0))
            run += r - b[1]
            wait += w - b[2]
            vol += v - b[3]
            invol += i - b[4]
            if (r - b[1]) / 1e9 / wall > 0.05:
                busy.append(t)
        n = max(requests, 1)
        states = {}
        for t in busy:
            for k, v in self.samples.get(t, {}).items():
                states[k] = states.get(k, 0) + v
        total = sum(states.values()) or 1
        return {
            "cores": run / 1e9 / wall,
            "wait/run": wait / run if run else 0.0,
            "wait us/req": wait / 1e3 / n,
            "vol cs/req": vol / n,
            "invol cs/req": invol / n,
            "threads >5%": len(busy),
            "states": {k: v / total for k, v in states.items()},
        }


def print_sched(sched_runs):
    """The median of each scheduling figure per server, and the share of
    thread samples in each state."""
    print("  where the cores went (/proc schedstat and thread-state samples every 5 ms, median of the rounds):")
    print(f"  {'server':18} {'cores':>5} {'wait/run':>8} {'wait us/req':>11} {'vol cs/req':>10} {'invol cs/req':>12} {'threads':>7}  the busy threads' samples")
    for name, rs in sched_runs.items():
        if not rs:
            continue
        m = lambda k: median([r[k] for r in rs])
        states = {}
        for r in rs:
            for k, v in r["states"].items():
                states[k] = states.get(k, 0) + v / len(rs)
        st = ", ".join(f"{k} {v * 100:.0f}%" for k, v in sorted(states.items(), key=lambda kv: -kv[1]) if v >= 0.01)
        print(f"  {name:18} {m('cores'):5.2f} {m('wait/run'):8.2f} {m('wait us/req'):11.1f} {m('vol cs/req'):10.3f} {m('invol cs/req'):12.3f} {m('threads >5%'):7.0f}  {st}")


# What --perf counts, in the kernel (tracepoints and a software event):
# nothing is slowed down, so a lock's contention shows as it is (strace
# stops every call, which makes locks held across calls collide).
PERF_EVENTS = {"raw_syscalls:sys_enter": "syscalls", "syscalls:sys_enter_futex": "futex", "context-switches": "cs"}


class PerfCounts:
    """System calls, futex calls and context switches of a server's
    processes (every thread) during one load run, from `perf stat`
    attached before the run and stopped after it."""

    def __init__(self, pid, out):
        pids = sorted({p for p, _ in tasks(pid)}) or [pid]
        self.out = out
        self.proc = subprocess.Popen(["perf", "stat", "-x,", "-o", out, "-e", ",".join(PERF_EVENTS), "-p", ",".join(map(str, pids))], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # perf attaches to every thread before the load starts.
        time.sleep(0.3)

    def stop(self, requests):
        """{counter: count per request}."""
        self.proc.send_signal(2)
        self.proc.wait(timeout=30)
        got = {}
        for line in open(self.out):
            f = line.strip().split(",")
            if len(f) >= 3 and f[2] in PERF_EVENTS and f[0].replace(".", "").isdigit():
                got[PERF_EVENTS[f[2]]] = float(f[0]) / max(requests, 1)
        if len(got) != len(PERF_EVENTS):
            raise SystemExit(f"bench: perf stat counted {sorted(got)} of {sorted(PERF_EVENTS.values())} (see {self.out}; perf needs root or perf_event_paranoid <= 0)")
        return got


def print_perf(perf_runs):
    """The median of each kernel counter per request, per server."""
    print("  kernel counters per request (perf stat on every thread during the timed runs, median of the rounds):")
    print(f"  {'server':18} " + " ".join(f"{v + '/req':>13}" for v in PERF_EVENTS.values()))
    for name, rs in perf_runs.items():
        if rs:
            print(f"  {name:18} " + " ".join(f"{median([r[v] for r in rs]):13.3f}" for v in PERF_EVENTS.values()))


def median(xs):
    xs = sorted(xs)
    n = len(xs)
    return xs[n // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) / 2


def proc_status(pid, key):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


class Client:
    """One keep-alive HTTP/1.1 connection; a request that fails on a reused
    connection (the server closed it while idle) is retried once on a fresh
    one, as HTTP clients do."""

    def __init__(self, host, port, token=None):
        self.host, self.port, self.token = host, port, token
        self.conn = None

    def request(self, method, path, body=None, headers=None, auth=True):
        h = dict(headers or {})
        if auth and self.token:
            h["Authorization"] = f"Bearer {self.token}"
        for attempt in (0, 1):
            fresh = self.conn is None
            if fresh:
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
            try:
                self.conn.request(method, path, body=body, headers=h)
                r = self.conn.getresponse()
                data = r.read()
                if r.getheader("connection", "").lower() == "close":
                    self.conn.close()
                    self.conn = None
                return r.status, data, r
            except (ConnectionError, http.client.HTTPException, socket.timeout, OSError):
                self.conn.close()
                self.conn = None
                if fresh or attempt == 1:
                    raise
        raise AssertionError("unreachable")


def sample_meta(release, arch, data):
    version = "v0.1.0"
    name = "tracee.bpf." + release.replace(".", "_") + "." + version.replace(".", "_") + ".o"
    return {
        "kernel_release": release, "arch": arch, "version": version, "file_name": name,
        "digest": "sha256:" + hashlib.sha256(data).hexdigest(), "size": len(data),
        "kernel": {}, "build_mode": "headers", "sources": [],
        "program_digest": "sha256:" + hashlib.sha256(b"p").hexdigest(),
        "compiler": {"clang": "clang"}, "flags": [], "built_at": "2026-11-25T00:00:00Z",
    }


def publish(c, meta, data, replace=False):
    st, body, _ = c.request("PUT", f"/v1/blobs/{meta['digest']}", body=data)
    if st not in (200, 201):
        raise RuntimeError(f"blob upload: {st} {body[:200]!r}")
    q = "?replace=true" if replace else ""
    st, body, _ = c.request("POST", f"/v1/objects{q}", body=json.dumps(meta), headers={"Content-Type": "application/json"})
    if st not in (200, 201):
        raise RuntimeError(f"publish: {st} {body[:200]!r}")


def oci_tag(release, version="v0.1.0"):
    clean = lambda s: re.sub(r"[^A-Za-z0-9._-]", "_", s)
    return f"{clean(release)}.{clean(version)}"


def soak(args):
    if not os.path.exists(args.registry_bin):
        subprocess.run(["cargo", "build", "--release", "-p", "bpfarm-registry"], cwd=ROOT, check=True)
    work = tempfile.mkdtemp(prefix="bpfarm-soak-")
    data_dir = os.path.join(work, "data")
    token = subprocess.run([args.registry_bin, "token", "create", "--data", data_dir, "--name", "soak", "--scope", "push"],
                           capture_output=True, text=True, check=True).stdout.split()[-1]
    reg = subprocess.Popen([args.registry_bin, "serve", "--listen", "127.0.0.1:0", "--data", data_dir, "--header-timeout", "5"],
                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env={**os.environ, "BPFARM_LOG": "error"})
    try:
        base = reg.stdout.readline().decode().strip().removeprefix("listening on http://")
        host, port = base.rsplit(":", 1)
        port = int(port)
        seed = Client(host, port, token)
        objects = {}
        for i in range(20):
            release = f"6.1.0-{i}-amd64"
            blob = hashlib.sha256(f"seed{i}".encode()).digest() * (132 * 1024 // 32)
            meta = sample_meta(release, "x86_64", blob)
            publish(seed, meta, blob)
            objects[release] = blob
        lock = threading.Lock()
        counts, errors = {}, []
        stop = threading.Event()

        def count(kind):
            with lock:
                counts[kind] = counts.get(kind, 0) + 1

        def fail(kind, e):
            with lock:
                errors.append(f"{kind}: {e}")

        def downloader():
            c = Client(host, port)
            while not stop.is_set():
                release, blob = random.choice(list(objects.items()))
                digest = "sha256:" + hashlib.sha256(blob).hexdigest()
                try:
                    st, body, _ = c.request("GET", f"/v1/blobs/{digest}")
                    if st != 200 or hashlib.sha256(body).hexdigest() != digest[7:]:
                        raise RuntimeError(f"status {st}, {len(body)} bytes")
                    count("v1 download")
                except Exception as e:
                    fail("v1 download", e)

        def v2_puller():
            c = Client(host, port)
            while not stop.is_set():
                release = random.choice(list(objects))
                try:
                    st, body, _ = c.request("GET", f"/v2/bpfarm/tracee-bpf/manifests/{oci_tag(release)}")
                    if st != 200:
                        raise RuntimeError(f"index: {st}")
                    child = json.loads(body)["manifests"][0]["digest"]
                    st, body, _ = c.request("GET", f"/v2/bpfarm/tracee-bpf/manifests/{child}")
                    layer = json.loads(body)["layers"][0]["digest"]
                    st, body, _ = c.request("GET", f"/v2/bpfarm/tracee-bpf/blobs/{layer}")
                    if st != 200 or hashlib.sha256(body).hexdigest() != layer[7:]:
                        raise RuntimeError(f"blob: {st}")
                    count("v2 pull")
                except Exception as e:
                    fail("v2 pull", e)

        def publisher(n):
            c = Client(host, port, token)
            k = 0
            while not stop.is_set():
                k += 1
                release = f"6.12.{n}-{k % 50}-amd64"
                blob = os.urandom(64 * 1024)
                try:
                    publish(c, sample_meta(release, "x86_64", blob), blob, replace=True)
                    st, body, _ = c.request("GET", f"/v1/objects/x86_64/v0.1.0/{release}")
                    if st != 200 or json.loads(body)["digest"] != "sha256:" + hashlib.sha256(blob).hexdigest():
                        raise RuntimeError(f"lookup after publish: {st}")
                    count("publish")
                except Exception as e:
                    fail("publish", e)

        def unauthenticated():
            junk = b"x" * (1 << 20)
            while not stop.is_set():
                try:
                    s = socket.create_connection((host, port), timeout=10)
                    s.sendall(b"POST /v1/objects HTTP/1.1\r\nHost: x\r\nContent-Length: 268435456\r\n\r\n")
                    try:
                        for _ in range(4):
                            s.sendall(junk)
                    except OSError:
                        pass
                    reply = s.recv(64)
                    s.close()
                    if not reply.startswith(b"HTTP/1.1 401"):
                        raise RuntimeError(repr(reply))
                    count("unauthenticated 256 MiB POST refused")
                except Exception as e:
                    fail("unauthenticated POST", e)
                time.sleep(0.05)

        def slowloris():
            socks = []
            while not stop.is_set():
                while len(socks) < args.slowloris and not stop.is_set():
                    try:
                        s = socket.create_connection((host, port), timeout=5)
                        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: slow\r\n")
                        s.setblocking(False)
                        socks.append(s)
                    except OSError:
                        break
                alive = []
                for s in socks:
                    try:
                        if s.recv(1) == b"":
                            raise OSError("closed")
                    except BlockingIOError:
                        try:
                            s.send(b"X-Slow: 1\r\n")
                            alive.append(s)
                            continue
                        except OSError:
                            pass
                    except OSError:
                        pass
                    s.close()
                    count("slowloris connection cut")
                socks = alive
                time.sleep(1)
            for s in socks:
                s.close()

        threads = [threading.Thread(target=downloader) for _ in range(8)]
        threads += [threading.Thread(target=v2_puller) for _ in range(2)]
        threads += [threading.Thread(target=publisher, args=(n,)) for n in range(2)]
        threads += [threading.Thread(target=unauthenticated), threading.Thread(target=slowloris)]
        for t in threads:
            t.start()
        time.sleep(min(5, args.soak / 3))
        fds = lambda: len(os.listdir(f"/proc/{reg.pid}/fd"))
        start = (proc_status(reg.pid, "VmRSS"), fds(), time.monotonic())
        print(f"soak: {args.soak} s of mixed load, {args.slowloris} slowloris connections, {os.cpu_count()} cores", flush=True)
        print(f"  start: RSS {start[0]:.1f} MiB, {start[1]} descriptors", flush=True)
        time.sleep(args.soak)
        end = (proc_status(reg.pid, "VmRSS"), fds())
        peak = proc_status(reg.pid, "VmHWM")
        stop.set()
        for t in threads:
            t.join()
        print(f"  end:   RSS {end[0]:.1f} MiB, {end[1]} descriptors (peak RSS {peak:.1f} MiB)")
        for kind in sorted(counts):
            print(f"  {counts[kind]:8d}  {kind}")
        print(f"  errors: {len(errors)}")
        for e in errors[:10]:
            print(f"    {e}")
        reg.terminate()
        reg.wait(timeout=30)
        fsck = subprocess.run([args.registry_bin, "fsck", "--data", data_dir], capture_output=True, text=True)
        print("  " + (fsck.stdout.strip().splitlines() or ["fsck: no output"])[-1])
        if errors or fsck.returncode != 0 or reg.returncode != 0:
            sys.exit(1)
    finally:
        if reg.poll() is None:
            reg.kill()
            reg.wait()
        shutil.rmtree(work, ignore_errors=True)


NGINX_CONF = """daemon off;
master_process on;
user root;
worker_processes auto;
pid {work}/nginx.pid;
error_log {work}/nginx.err error;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 1000000;
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


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def load():
    return open("/proc/loadavg").read().split()[:3]


def fetch(url):
    return urllib.request.urlopen(url, timeout=30).read()


def start_registry(binary, data, env=None):
    """A bpfarm-registry serving `data` on a free loopback port: the
    process, its base URL and a push token."""
    token = subprocess.run([binary, "token", "create", "--data", data, "--name", "bench", "--scope", "push"], capture_output=True, text=True, check=True).stdout.split()[-1]
    reg = subprocess.Popen([binary, "serve", "--listen", "127.0.0.1:0", "--data", data], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env={**os.environ, "BPFARM_LOG": "error", **(env or {})})
    base = reg.stdout.readline().decode().strip().removeprefix("listening on ")
    if not base.startswith("http://"):
        reg.kill()
        raise SystemExit(f"bench: {binary} did not start")
    return reg, base, token


def seed(base, token, objects):
    """Publishes every (meta, bytes) of `objects` through /v1."""
    host, port = base.removeprefix("http://").rsplit(":", 1)
    pusher = Client(host, int(port), token)
    for meta, data in objects:
        publish(pusher, meta, data)


# The registry's three object paths, as row names: `<label> <path>`.
PATHS = ("static", "/v1 blob", "/v2 blob")


def registry_urls(label, base, meta, paths=PATHS):
    urls = {
        "static": f"{base}/{meta['version']}/x86_64/{meta['file_name']}",
        "/v1 blob": f"{base}/v1/blobs/{meta['digest']}",
        "/v2 blob": f"{base}/v2/bpfarm/tracee-bpf/blobs/{meta['digest']}",
    }
    return {f"{label} {path}": urls[path] for path in paths}


def build_counter(work):
    """bench/alloc_count.c as a preloadable library."""
    cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if not cc:
        raise SystemExit("bench: no C compiler for the allocation counter (run ci/install-deps, or pass --no-work)")
    so = os.path.join(work, "alloc_count.so")
    subprocess.run([cc, "-O2", "-shared", "-fPIC", "-o", so, os.path.join(ROOT, "bench", "alloc_count.c")], check=True)
    return so


def read_counter(path):
    """(allocation calls, bytes asked for, frees) so far."""
    with open(path, "rb") as f:
        return struct.unpack("=QQQ", f.read(24))


def work_per_request(args, work, bins, objects):
    """Heap allocations and bytes asked for per request, on each path of
    each binary, at each size: {row name: {size: (allocs, bytes)}}. Each
    binary runs under the counter on a data folder of its own, apart from
    the timed runs; every URL is fetched first (the hot cache and the
    index memo filled, as in the timed runs), then loaded with wrk."""
    so = build_counter(work)
    counter = lambda label: os.path.join(work, f"allocs-{label}")
    env = lambda label: {"LD_PRELOAD": so, "BPFARM_ALLOC_COUNT": counter(label)}
    out = {}
    for label, name, url, size, _ in each_warm_path(args, work, bins, objects, "work", env):
        before = read_counter(counter(label))
        r = wrk(url, args.work_seconds, args.connections)
        after = read_counter(counter(label))
        done = r[5]
        if after[0] == before[0] or not done:
            raise SystemExit(f"bench: the allocation counter counted nothing for {name} (LD_PRELOAD not applied?)")
        out.setdefault(name, {})[size] = ((after[0] - before[0]) / done, (after[1] - before[1]) / done)
    return out


def each_warm_path(args, work, bins, objects, what, env=lambda label: None):
    """For each binary, a registry of its own (with `env(label)` added to
    its environment) holding `objects`; yields (label, row name, URL,
    size, process) for each path, once every URL was fetched five times
    (the hot cache and the index memo filled, as in the timed runs). The
    registry is stopped when its paths are done."""
    for label, binary in bins:
        reg, base, token = start_registry(binary, os.path.join(work, f"{what}-{label}"), env(label))
        try:
            seed(base, token, objects)
            for meta, data in objects:
                for name, url in registry_urls(label, base, meta, args.paths).items():
                    for _ in range(5):
                        if fetch(url) != data:
                            raise SystemExit(f"bench: {name} served wrong bytes ({what} pass)")
                    yield label, name, url, meta["size"], reg
        finally:
            reg.terminate()
            reg.wait(timeout=30)


def strace_counts(path):
    """{syscall: calls} from an `strace -c` summary."""
    out = {}
    for line in open(path):
        parts = line.split()
        if len(parts) >= 5 and parts[-1] != "total" and re.fullmatch(r"[\d.]+", parts[0]) and parts[3].isdigit():
            out[parts[-1]] = int(parts[3])
    return out


def syscalls_per_request(args, work, bins, objects):
    """System calls per request on each path of each binary, from
    `strace -c -f` attached to a registry of its own during a wrk run
    (strace slows every call down, so a request's calls are what this
    gives, not its time). Printed as a table, old and new side by side."""
    strace = shutil.which("strace")
    if not strace:
        raise SystemExit("bench: --syscalls needs strace (run ci/install-deps)")
    counts = {}
    for _, name, url, size, reg in each_warm_path(args, work, bins, objects, "strace"):
        out = os.path.join(work, "strace.txt")
        tracer = subprocess.Popen([strace, "-c", "-f", "-o", out, "-p", str(reg.pid)], stderr=subprocess.DEVNULL)
        time.sleep(0.5)
        r = wrk(url, args.work_seconds, min(args.connections, 16))
        tracer.send_signal(2)
        tracer.wait(timeout=30)
        counts.setdefault(size, {})[name] = {k: v / r[5] for k, v in strace_counts(out).items()}
    print(f"system calls per request (strace -c -f on the registry during a {args.work_seconds} s wrk run, -c{min(args.connections, 16)}; load {' '.join(load())}):")
    for size, by_name in counts.items():
        names = sorted({k for calls in by_name.values() for k, v in calls.items() if v >= 0.01})
        print(f"  {human(size):>16}" + "".join(f"{n:>16}" for n in by_name))
        for call in sorted(names, key=lambda c: -max(v.get(c, 0) for v in by_name.values())):
            print(f"  {call:>16}" + "".join(f"{v.get(call, 0):16.3f}" for v in by_name.values()))
        print(f"  {'all':>16}" + "".join(f"{sum(v.values()):16.3f}" for v in by_name.values()), flush=True)


def compare(args):
    """The same objects served by nginx (sendfile), bpfarm-registry's three
    object paths (and an older build's, with --baseline-bin) and
    distribution, with the same wrk load, side by side."""
    # The peers come from Debian (ci/install-deps installs them).
    missing = [exe for exe in ("docker-registry", "wrk", "nginx") if not shutil.which(exe) and not os.path.exists(f"/usr/sbin/{exe}")]
    if missing:
        raise SystemExit(f"bench: missing {', '.join(missing)} (run ci/install-deps)")
    if not os.path.exists(args.registry_bin):
        subprocess.run(["cargo", "build", "--release", "-p", "bpfarm-registry"], cwd=ROOT, check=True)
    if args.baseline_bin and not os.path.isfile(args.baseline_bin):
        raise SystemExit(f"bench: no binary {args.baseline_bin} (--baseline-bin takes a bpfarm-registry executable)")
    bins = [("bpfarm", args.registry_bin)] + ([("old", args.baseline_bin)] if args.baseline_bin else []) + args.variant
    sizes = [parse_size(s) for s in args.sizes.split(",")]
    objects = []
    for i, size in enumerate(sizes):
        block = hashlib.sha256(f"object{i}".encode()).digest()
        data = (block * (size // 32 + 1))[:size]
        objects.append((sample_meta(f"6.1.0-{i}-amd64", "x86_64", data), data))
    work = tempfile.mkdtemp(prefix="bpfarm-regbench-")
    procs = []
    try:
        # Allocations per request first, on registries of their own that
        # are gone before the timed runs start.
        allocs = {} if args.no_work else work_per_request(args, work, bins, objects)
        if args.syscalls:
            syscalls_per_request(args, work, bins, objects)
        # nginx with sendfile: what the machine can do for a static file.
        www = os.path.join(work, "www")
        os.makedirs(www)
        nport = free_port()
        with open(os.path.join(work, "nginx.conf"), "w") as f:
            f.write(NGINX_CONF.format(work=work, port=nport, root=www))
        nginx = subprocess.Popen([shutil.which("nginx") or "/usr/sbin/nginx", "-c", os.path.join(work, "nginx.conf")], stderr=subprocess.DEVNULL)
        procs.append(nginx)
        # distribution 2.8, minimal config, filesystem storage on loopback.
        dport = free_port()
        cfg = os.path.join(work, "distribution.yml")
        with open(cfg, "w") as f:
            f.write(f"version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {work}/distribution\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{dport}\n")
        dist = subprocess.Popen(["docker-registry", "serve", cfg], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(dist)
        # bpfarm-registry (and the baseline build), each on its own data.
        regs = {}
        for label, binary in bins:
            reg, base, token = start_registry(binary, os.path.join(work, label))
            procs.append(reg)
            seed(base, token, objects)
            regs[label] = (reg, base)
        wait_http(f"http://127.0.0.1:{nport}/")
        wait_http(f"http://127.0.0.1:{dport}/v2/")

        targets = []  # (size, {server: url})
        pids = {"nginx sendfile": nginx.pid, "distribution 2.8": dist.pid}
        for meta, data in objects:
            digest = meta["digest"]
            with open(os.path.join(www, meta["file_name"]), "wb") as f:
                f.write(data)
            req = urllib.request.Request(f"http://127.0.0.1:{dport}/v2/bench/tracee-bpf/blobs/uploads/", method="POST")
            loc = urllib.request.urlopen(req).headers["Location"]
            sep = "&" if "?" in loc else "?"
            put = urllib.request.Request(f"{loc}{sep}digest={digest}", data=data, method="PUT", headers={"Content-Type": "application/octet-stream"})
            urllib.request.urlopen(put)
            urls = {"nginx sendfile": f"http://127.0.0.1:{nport}/{meta['file_name']}"}
            for label, (reg, base) in regs.items():
                for name, url in registry_urls(label, base, meta, args.paths).items():
                    urls[name] = url
                    pids[name] = reg.pid
            urls["distribution 2.8"] = f"http://127.0.0.1:{dport}/v2/bench/tracee-bpf/blobs/{digest}"
            for name, url in urls.items():
                if hashlib.sha256(fetch(url)).hexdigest() != digest[7:]:
                    raise SystemExit(f"bench: {name} served wrong bytes for {url}")
            targets.append((meta["size"], urls))

        print(f"bench: wrk -t2 -c{args.connections} -d{args.seconds}s, {args.repeat} interleaved rounds (every server once per round, so load drift hits all alike), median (best, spread); {os.cpu_count()} cores, load {' '.join(load())}", flush=True)
        print("  CPU us/req: the server's own CPU time per request (its whole process tree), the figure least moved by other jobs on the machine; user us: its user-space part; cores: the cores it obtained (req/s x CPU per request)")
        if allocs:
            print(f"  alloc/req, KB/req: heap allocations and bytes asked for per request, counted in a separate {args.work_seconds} s run per path (bench/alloc_count.c): the work per request no load moves")
        for size, urls in targets:
            runs = {name: [] for name in urls}
            loads = []
            sched_runs = {name: [] for name in urls}
            perf_runs = {name: [] for name in urls}
            for _ in range(args.repeat):
                loads.append(float(load()[0]))
                for name, url in urls.items():
                    counter = PerfCounts(pids[name], os.path.join(work, "perf.txt")) if args.perf else None
                    sampler = Sched(pids[name]) if args.sched else None
                    runs[name].append(wrk(url, args.seconds, args.connections, pids[name]))
                    if sampler:
                        sched_runs[name].append(sampler.stop(runs[name][-1][5]))
                    if counter:
                        perf_runs[name].append(counter.stop(runs[name][-1][5]))
            results = {}
            for name, rs in runs.items():
                rps = [r[0] for r in rs]
                best = max(rps)
                cpu = [r[3] for r in rs if r[3] is not None]
                user = [r[6] for r in rs if r[6] is not None]
                errs = [r[2] for r in rs if r[2]]
                results[name] = (median(rps), best, (best - min(rps)) / best if best else 0.0, median([r[1] for r in rs]), median(cpu) if cpu else 0.0, errs[0] if errs else None, median([r[4] for r in rs]), median(user) if user else 0.0)
            n_rps, _, _, n_p99, n_cpu = results["nginx sendfile"][:5]
            d_rps = results["distribution 2.8"][0]
            print(f"\n{human(size)} object (load {min(loads):.1f}-{max(loads):.1f}):")
            print(f"  {'server':18} {'req/s':>8} {'best':>8} {'spread':>6} {'p99 ms':>8} {'x nginx':>8} {'x distr':>8} {'p99/nginx':>9} {'CPU us/req':>10} {'/nginx':>6} {'user us':>7} {'cores':>5} {'alloc/req':>9} {'KB/req':>6} {'wrk CPU':>7}")
            for name, (rps, best, spread, p99, cpu, err, wrk_share, user) in results.items():
                a = allocs.get(name, {}).get(size)
                work_cols = f"{a[0]:9.1f} {a[1] / 1e3:6.1f}" if a else f"{'-':>9} {'-':>6}"
                print(f"  {name:18} {rps:8.0f} {best:8.0f} {spread * 100:5.0f}% {p99:8.2f} {rps / n_rps:8.2f} {rps / d_rps:8.2f} {p99 / n_p99:9.2f} {cpu:10.0f} {cpu / n_cpu if n_cpu else 0:6.2f} {user:7.1f} {rps * cpu / 1e6:5.2f} {work_cols} {wrk_share * 100:6.0f}%{'   ' + err if err else ''}", flush=True)
            if args.baseline_bin:
                for path in args.paths:
                    new, old = results[f"bpfarm {path}"], results[f"old {path}"]
                    ratio = lambda x, y: f"x{x / y:.2f}" if y else "n/a"
                    a_new, a_old = allocs.get(f"bpfarm {path}", {}).get(size), allocs.get(f"old {path}", {}).get(size)
                    alloc_txt = f", alloc/req {a_old[0]:.1f} -> {a_new[0]:.1f} ({ratio(a_new[0], a_old[0])})" if a_new and a_old else ""
                    print(f"  new/old {path:9}: req/s {ratio(new[0], old[0])}, CPU/req {ratio(new[4], old[4])}, user CPU/req {ratio(new[7], old[7])}, p99 {ratio(new[3], old[3])}{alloc_txt}")
            if args.sched:
                print_sched(sched_runs)
            if args.perf:
                print_perf(perf_runs)
            # What "x distribution" can reach at all: when even nginx is not
            # 4x distribution, the load client is the bound, not the server.
            bound = n_rps / d_rps if d_rps else 0.0
            if bound < 4 and "bpfarm /v1 blob" in results:
                print(f"  bound: nginx itself is {bound:.2f}x distribution here, so >= 4x distribution would need {4 / bound:.2f}x nginx: every server waits on the load client reading {human(size)} per response (wrk had {results['nginx sendfile'][6] * 100:.0f}% of the cores during nginx's runs, the rest went to the server and to other jobs); by CPU per request bpfarm /v1 is {results['distribution 2.8'][4] / results['bpfarm /v1 blob'][4] if results['bpfarm /v1 blob'][4] else 0:.1f}x cheaper than distribution")
        # Peak RSS with 1,000 connections downloading the largest object.
        size, urls = targets[-1]
        reg = regs["bpfarm"][0]
        wrk(urls.get("bpfarm /v1 blob") or next(u for n, u in urls.items() if n.startswith("bpfarm ")), args.seconds, 1000, reg.pid)
        print(f"\nbpfarm-registry peak RSS (VmHWM) over the bench, incl. wrk -c1000 on the {human(size)} object: {hwm_mib(reg.pid):.1f} MiB")
        print(f"distribution peak RSS: {hwm_mib(dist.pid):.1f} MiB; load at the end {' '.join(load())}")
    finally:
        # SIGTERM: nginx's master then stops its workers (SIGKILL would
        # leave them running).
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        shutil.rmtree(work, ignore_errors=True)


def parse_size(s):
    s = s.strip().upper()
    mult = {"K": 1000, "M": 1000 * 1000}.get(s[-1:], 1)
    return int(float(s.rstrip("KM")) * mult)


def human(n):
    return f"{n / 1e6:g} MB" if n >= 1e6 else f"{n / 1e3:g} KB"


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p / 100 * len(xs)))]


def ttfb_one(port, path, digest):
    """One lookup on a new connection: seconds from the request sent to
    the first byte back. The answer is checked whole (status, media type,
    metadata header, body digest) after the clock stops."""
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        req = (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: {OBJECT_MEDIA_TYPE}\r\nConnection: close\r\n\r\n").encode()
        t0 = time.perf_counter()
        s.sendall(req)
        first = s.recv(65536)
        t1 = time.perf_counter()
        chunks = [first]
        while True:
            b = s.recv(1 << 20)
            if not b:
                break
            chunks.append(b)
    finally:
        s.close()
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    head = head.decode("latin-1").lower()
    if not head.startswith("http/1.1 200") or OBJECT_MEDIA_TYPE not in head or "x-bpfarm-metadata:" not in head:
        raise SystemExit(f"bench: unexpected answer: {head[:300]!r}")
    if "sha256:" + hashlib.sha256(body).hexdigest() != digest:
        raise SystemExit("bench: the answer's bytes do not match the object")
    return t1 - t0


OBJECT_MEDIA_TYPE = "application/vnd.bpfarm.tracee.bpf.object.v1+elf"


def ttfb(args):
    """Quiet-gap and back-to-back TTFB of the one-trip lookup, for the
    registry binary and (interleaved) a baseline binary."""
    bins = [("new", args.registry_bin)] + ([("old", args.baseline_bin)] if args.baseline_bin else [])
    for _, b in bins:
        if not os.path.exists(b):
            raise SystemExit(f"bench: no binary {b} (cargo build --release -p bpfarm-registry)")
    work = tempfile.mkdtemp(prefix="bpfarm-ttfb-")
    procs, ports = [], {}
    release = "6.1.0-28-amd64"
    blob = hashlib.sha256(b"ttfb").digest() * (132 * 1024 // 32)
    meta = sample_meta(release, "x86_64", blob)
    path = f"/v1/objects/x86_64/{meta['version']}/{release}"
    try:
        for name, b in bins:
            data = os.path.join(work, name)
            token = subprocess.run([b, "token", "create", "--data", data, "--name", "bench", "--scope", "push"], capture_output=True, text=True, check=True).stdout.split()[-1]
            reg = subprocess.Popen([b, "serve", "--listen", "127.0.0.1:0", "--data", data], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env={**os.environ, "BPFARM_LOG": "error"})
            procs.append(reg)
            host, port = reg.stdout.readline().decode().strip().removeprefix("listening on http://").rsplit(":", 1)
            ports[name] = int(port)
            publish(Client(host, int(port), token), meta, blob)
            for _ in range(3):
                ttfb_one(ports[name], path, meta["digest"])
        got = {(name, mode): [] for name, _ in bins for mode in ("quiet", "b2b")}
        for _ in range(args.repeat):
            for name, _ in bins:
                for _ in range(args.ttfb):
                    time.sleep(0.1)
                    got[(name, "quiet")].append(ttfb_one(ports[name], path, meta["digest"]))
                for _ in range(args.ttfb):
                    got[(name, "b2b")].append(ttfb_one(ports[name], path, meta["digest"]))
        print(f"ttfb: one-trip lookup of a {len(blob) // 1024} KiB object, {args.ttfb} requests x {args.repeat} rounds, each on a new connection; load {' '.join(load())}")
        for mode, what in (("quiet", "100 ms apart"), ("b2b", "back to back")):
            line = f"  {what:13s}"
            for name, _ in bins:
                xs = got[(name, mode)]
                line += f"  {name}: median {median(xs) * 1e3:.2f} ms, p90 {pct(xs, 90) * 1e3:.2f} ms"
            if len(bins) == 2:
                n, o = got[("new", mode)], got[("old", mode)]
                line += f"  (new/old median x{median(n) / median(o):.2f}, p90 x{pct(n, 90) / pct(o, 90):.2f})"
            print(line, flush=True)
    finally:
        for p in procs:
            p.terminate()
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(work, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--sizes", default="100K,1M,10M", help="object sizes, comma-separated (K = 1000 bytes, M = 10^6)")
    ap.add_argument("--repeat", type=int, default=1, help="interleaved rounds: of wrk runs per size, or with --ttfb of N requests each (the median is shown, with the best and the spread)")
    ap.add_argument("--registry-bin", default=os.path.join(ROOT, "target/release/bpfarm-registry"))
    ap.add_argument("--soak", type=int, metavar="SECONDS", help="run the soak for this long instead of the comparison")
    ap.add_argument("--slowloris", type=int, default=300, help="slowloris connections during the soak")
    ap.add_argument("--ttfb", type=int, metavar="N", help="time to first byte of the one-trip lookup: N requests per round, quiet and back to back")
    ap.add_argument("--baseline-bin", metavar="PATH", help="the bpfarm-registry executable of an older checkout (a file, not a folder), measured in the same interleaved rounds (the comparison and --ttfb; not the soak)")
    ap.add_argument("--work-seconds", type=int, default=2, help="length of each path's allocation-counting run (default 2)")
    ap.add_argument("--no-work", action="store_true", help="skip the allocations-per-request pass (it needs a C compiler)")
    ap.add_argument("--variant", action="append", default=[], metavar="NAME=PATH", help="one more bpfarm-registry executable (or a script that execs one with other settings) measured in the same interleaved rounds, its rows labelled NAME; repeatable")
    ap.add_argument("--syscalls", action="store_true", help="also count the registry's system calls per request on each path (strace -c -f, on registries of their own, before the timed runs)")
    ap.add_argument("--perf", action="store_true", help="also count each server's system calls, futex calls and context switches per request during the timed runs (perf stat: kernel counters, which slow nothing down, unlike --syscalls' strace)")
    ap.add_argument("--sched", action="store_true", help="also show where each server's threads spent the timed runs: cores, run-queue delay (/proc schedstat), context switches per request, and samples of each thread's state (running, asleep in futex or epoll)")
    ap.add_argument("--paths", default=",".join(PATHS), help=f"the registry's paths to measure, comma-separated (default: {','.join(PATHS)})")
    args = ap.parse_args()
    args.paths = [p.strip() for p in args.paths.split(",") if p.strip()]
    variants = []
    for v in args.variant:
        name, _, path = v.partition("=")
        if not name or not os.path.isfile(path) or name in ("bpfarm", "old"):
            ap.error(f"--variant takes NAME=PATH of an executable (not named bpfarm or old), not {v!r}")
        variants.append((name, path))
    args.variant = variants
    if args.perf and not shutil.which("perf"):
        ap.error("--perf needs perf (linux-perf; run ci/install-deps)")
    if not args.paths or any(p not in PATHS for p in args.paths):
        ap.error(f"--paths takes some of: {', '.join(PATHS)}")
    if args.ttfb is not None and args.ttfb < 1:
        ap.error("--ttfb N needs N >= 1")
    if args.work_seconds < 1:
        ap.error("--work-seconds needs at least 1")
    if args.baseline_bin and args.soak:
        ap.error("--baseline-bin is for the comparison and --ttfb, not the soak")
    if args.ttfb:
        return ttfb(args)
    if args.soak:
        return soak(args)
    return compare(args)


if __name__ == "__main__":
    main()
