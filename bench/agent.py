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

--breakdown N runs N /v1 fetches, N static-layout fetches and N local
hits under `strace -f --seccomp-bpf` (only the syscalls that mark a phase
are stopped on) and prints the median time of each phase from the agent's
exec: the HTTP client's thread, the first connect, the first and the last
byte read from the registry, the first bpf() call (load starts: everything
before it is the agent's own work) and the "attached" line. strace slows
what it traces, so read the phases against each other, not as absolute
times. Beside them, what does not depend on the load: TCP connections,
HTTP requests, socket reads (with bytes, and empty ones) before the load,
and the run's system calls (one more run of each under `strace -c`).

--cold N measures cold starts instead (the fetch comparison is not run):
N rounds, each a warm local hit then a cold one (the executable and the
object evicted) of every agent given with --variant NAME=PATH (default:
this build's), interleaved, the variants' order turning each round. Per
variant it prints the executable's size and its mapped image (PT_LOAD), the
median time to attached and to "using", warm and cold, the cold/warm ratio,
the CPU time of a warm start (user + system, every thread, to its exit:
what a smaller but slower build would cost on every start),
and what a cold start reads: major faults and bytes read from storage (from
/proc/<pid>/stat and /proc/<pid>/io at the "attached" line), the bytes of
the executable in the page cache by then (mincore), which of its sections
those are, and the code by crate (nm); what a warm start maps of the image (its Rss in
/proc/<pid>/smaps: the pages it touches, at fault-around granularity);
with strace, the phases of one cold and one warm start (exec done, the
dynamic loader done, the object opened, load starts, attached). It also
times a sequential read of an evicted file, so bytes read can be turned
into the time they cost on this machine's disk, and, in the same rounds
after the same eviction, the disk floor: plain reads of the executable's
mapped image (and of the whole file) and the object, timed and with the
bytes they read from storage, beside each variant's cold - warm (how much
of a cold start's cost is the disk and how much the start adds). And in
the same rounds, after the same eviction, a reference: bench/reference-
loader (built here: libbpf-rs alone, built for size, ~0.5 MB), which reads
the same object, opens, loads and attaches it and prints a line -- the
least a Rust program doing the agent's last step can be, so its cold -
warm is what any such loader pays on this machine's disk, and the agent's
cold - warm is printed against it.

    bench/agent.py [--runs 10] [--no-build] [--bin-dir target/release]
                   [--baseline-bin-dir DIR] [--breakdown 5]
                   [--cold 10 [--variant NAME=PATH]...]
"""
import argparse
import ctypes
import os
import re
import shutil
import socket
import statistics
import struct
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


# Of the last timed run: its CPU seconds, user and system (all threads,
# to its exit after the "attached" line).
LAST_CPU = [None]
# Of the last timed run: what `at_attached` returned.
LAST_PROBE = [None]


def timed(argv, env=None, at_attached=None):
    """Seconds from start until the agent reports its programs attached (it
    is then stopped: teardown, which waits for RCU grace periods, is not
    part of getting a program loaded). `at_attached(pid)`, if given, runs
    at that line, before the agent is stopped (its answer in LAST_PROBE)."""
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
            LAST_PROBE[0] = at_attached(p.pid) if at_attached else None
            p.terminate()
            # Reaped here for its CPU time (every thread, start to exit).
            _, status, usage = os.wait4(p.pid, 0)
            p.returncode = os.waitstatus_to_exitcode(status)
            LAST_CPU[0] = (usage.ru_utime, usage.ru_stime)
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
    ap.add_argument("--cold", type=int, default=0, metavar="N", help="instead of the fetch comparison: N rounds of a warm and a cold local hit of each --variant, and what a cold start reads")
    ap.add_argument("--variant", action="append", default=[], metavar="NAME=PATH", help="with --cold: an agent executable to compare (repeatable; default: this build's bpfarm-agent)")
    args = ap.parse_args()
    if args.cold < 0 or args.runs < 1:
        ap.error("--runs is at least 1 and --cold is not negative")
    variants = []
    for v in args.variant:
        name, sep, path = v.partition("=")
        if not sep or not name or not os.access(path, os.X_OK):
            ap.error(f"--variant {v}: expected NAME=PATH of an executable")
        variants.append((name, os.path.abspath(path)))
    if variants and not args.cold:
        ap.error("--variant needs --cold")
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
        if args.cold:
            cold_starts(variants or [("this build", agent)], hit_dir, args.cold, work, env, reference_loader())
            return
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
                breakdown(base_agent, args.breakdown, base_hit, url, f"{work}/base", env, static_url)
                print("bench: this build's phases:")
            breakdown(agent, args.breakdown, hit_dir, url, work, env, static_url)
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.terminate()
                p.wait()
        shutil.rmtree(work, ignore_errors=True)


def reference_loader():
    """bench/reference-loader built here (release, its own profile: small):
    the least a Rust program can be that does the agent's last step."""
    manifest = os.path.join(ROOT, "bench/reference-loader/Cargo.toml")
    target = os.path.join(ROOT, "target/reference-loader")
    subprocess.run(["cargo", "build", "--release", "-q", "--locked", "--manifest-path", manifest, "--target-dir", target], check=True)
    return os.path.join(target, "release/bpfarm-reference-loader")


def cold_starts(variants, hit_dir, rounds, work, env, reference):
    """--cold: warm and cold local hits of each variant, interleaved, and
    what a cold start reads; and the same of `reference` (a minimal loader
    of the same object), in the same rounds."""
    objects = [os.path.join(hit_dir, f) for f in os.listdir(hit_dir) if os.path.isfile(os.path.join(hit_dir, f))]
    obj = [o for o in objects if o.endswith(".o")]
    if len(obj) != 1:
        raise SystemExit(f"bench: expected one object in {hit_dir}, found {obj}")
    ref = {"warm": [], "cold": [], "read": []}
    keys = ["warm", "cold", "warm own", "cold own", "majflt", "read", "cached", "touched", "warm majflt",
            "floor image", "floor image read", "floor file", "floor file read", "warm cpu", "warm user"]
    res = {name: {k: [] for k in keys} for name, _ in variants}
    sections = {}
    argv = lambda exe: [exe, "--install-path", hit_dir, "--build-policy", "never", "run", "--duration", "30"]
    image_end = {name: elf_layout(exe)[2] for name, exe in variants}
    for _, exe in variants:
        timed(argv(exe), env)  # untimed: every variant's first warm start is warm
    loads = [os.getloadavg()[0]]
    for r in range(rounds):
        k = r % len(variants)
        for name, exe in variants[k:] + variants[:k]:
            # At "attached": the process's counters, its mapped image, and
            # which pages of the executable are cached by then.
            probe = lambda pid, exe=exe: (proc_counts(pid), mapped_rss(pid, exe), resident(exe))
            v = res[name]
            v["warm"].append(timed(argv(exe), env, probe))
            v["warm own"].append(LAST_LOAD_START[0])
            v["warm cpu"].append(sum(LAST_CPU[0]))
            v["warm user"].append(LAST_CPU[0][0])
            (majflt, _), touched, _ = LAST_PROBE[0]
            v["warm majflt"].append(majflt)
            v["touched"].append(touched)
            evict([exe, *objects])
            v["cold"].append(timed(argv(exe), env, probe))
            v["cold own"].append(LAST_LOAD_START[0])
            (majflt, read), _, (pages, page) = LAST_PROBE[0]
            v["majflt"].append(majflt)
            v["read"].append(read)
            v["cached"].append(sum(pages) * page)
            sections[name] = (pages, page)
            # The disk floor, same round, same eviction: plain reads of what
            # any cold start must read (the mapped image and the object),
            # then of the whole file and the object.
            for what, end in (("image", image_end[name]), ("file", os.path.getsize(exe))):
                evict([exe, *objects])
                took, read = floor_read(exe, end, objects)
                v[f"floor {what}"].append(took)
                v[f"floor {what} read"].append(read)
        # The reference, same round: warm, then cold after the same eviction.
        ref_probe = lambda pid: proc_counts(pid)
        ref["warm"].append(timed([reference, obj[0]], env))
        evict([reference, *objects])
        ref["cold"].append(timed([reference, obj[0]], env, ref_probe))
        ref["read"].append(LAST_PROBE[0][1])
        loads.append(os.getloadavg()[0])
    med = lambda name, key: statistics.median(x for x in res[name][key] if x is not None)
    mb = lambda b: b / 1e6
    print(f"bench: cold starts of a local hit, median of {rounds} rounds (each a warm then a cold start of every variant, interleaved; "
          f"cold = the executable and the object evicted from the page cache), {os.cpu_count()} cores, load {min(loads):.1f}-{max(loads):.1f}")
    print(f"  {'variant':<16} {'file':>8} {'image':>8} {'warm':>8} {'cold':>8} {'cold/warm':>9} {'own warm':>9} {'own cold':>9} {'warm CPU':>9} {'user':>7} {'majflt':>7} {'read':>8} {'exe read':>9} {'touched':>8}")
    for name, exe in variants:
        _, image, _ = elf_layout(exe)
        warm, cold = med(name, "warm"), med(name, "cold")
        print(f"  {name:<16} {mb(os.path.getsize(exe)):6.1f}MB {mb(image):6.1f}MB {warm * 1000:6.1f}ms {cold * 1000:6.1f}ms {cold / warm:8.2f}x "
              f"{med(name, 'warm own') * 1000:7.1f}ms {med(name, 'cold own') * 1000:7.1f}ms {med(name, 'warm cpu') * 1000:7.1f}ms {med(name, 'warm user') * 1000:5.1f}ms {med(name, 'majflt'):7.0f} {mb(med(name, 'read')):6.1f}MB "
              f"{mb(med(name, 'cached')):7.1f}MB {mb(med(name, 'touched')):6.1f}MB")
    print("  (file: the executable's size; image: its PT_LOAD bytes; own: start to the \"using\" line; warm CPU: user + system time of a warm start, "
          "every thread, to its exit after \"attached\" (the kernel's load and verifier included, the same for every variant), and of it in user space (the agent's and libbpf's code: what an opt-level changes); majflt and read: the cold start's major faults "
          "and bytes read from storage, at \"attached\"; exe read: the executable's bytes in the page cache by then; touched: the image pages a warm start maps, 64 KB fault-around included)")
    print("  the disk floor, same rounds: plain reads of the mapped image (or the whole file) and the object after the same eviction; "
          "beyond: what cold - warm costs over the image floor (each round's difference, median)")
    print(f"  {'variant':<16} {'cold-warm':>9} {'own c-w':>8} {'read':>8} {'image floor':>17} {'file floor':>17} {'beyond':>8} {'own beyond':>10}")

    def per_round(v, f):
        rows = zip(v["cold"], v["warm"], v["cold own"], v["warm own"], v["floor image"])
        return statistics.median(f(*r) for r in rows if None not in r) * 1000

    for name, _ in variants:
        v = res[name]
        print(f"  {name:<16} {per_round(v, lambda c, w, co, wo, fl: c - w):7.1f}ms {per_round(v, lambda c, w, co, wo, fl: co - wo):6.1f}ms "
              f"{mb(med(name, 'read')):6.1f}MB {med(name, 'floor image') * 1000:6.1f}ms {mb(med(name, 'floor image read')):6.1f}MB "
              f"{med(name, 'floor file') * 1000:6.1f}ms {mb(med(name, 'floor file read')):6.1f}MB "
              f"{per_round(v, lambda c, w, co, wo, fl: c - w - fl):+6.1f}ms {per_round(v, lambda c, w, co, wo, fl: co - wo - fl):+8.1f}ms")
    print("  (cold-warm: each round's cold minus warm time to attached, median; own c-w: the same to the \"using\" line (exec, loader and the "
          "agent's checks: where a cold start waits on the disk); read: bytes the cold start read from storage; floors: time and bytes read "
          "from storage of the plain reads; a negative beyond: the start overlaps the reads with its own work)")
    rwarm, rcold = statistics.median(ref["warm"]), statistics.median(ref["cold"])
    rdiff = statistics.median(c - w for c, w in zip(ref["cold"], ref["warm"]))
    print(f"  reference, same rounds: bench/reference-loader ({mb(os.path.getsize(reference)):.2f} MB: libbpf-rs only, read the object, "
          f"open, load, attach, print; what any Rust loader of this object pays): warm {rwarm * 1000:.1f} ms, cold {rcold * 1000:.1f} ms, "
          f"{rcold / rwarm:.2f}x, cold-warm {rdiff * 1000:.1f} ms, read {mb(statistics.median(ref['read'])):.1f} MB")
    for name, _ in variants:
        diff = per_round(res[name], lambda c, w, co, wo, fl: c - w) / 1000
        print(f"    {name}: cold-warm {diff * 1000:.1f} ms = the reference's {rdiff * 1000:.1f} ms {(diff - rdiff) * 1000:+.1f} ms; "
              f"the 10 % target allows {med(name, 'warm') * 100:.1f} ms over this variant's warm start")
    for name, exe in variants:
        pages, page = sections[name]
        print(f"  {name}: what a cold start read of the executable, by section (MB): {read_by_section(exe, pages, page)}")
        if shutil.which("nm"):
            print(f"  {name}: code by crate (MB of function symbols): {code_by_crate(exe)}")
    base = variants[0][0]
    for name, _ in variants[1:]:
        print(f"  {name} vs {base}: cold {med(name, 'cold') / med(base, 'cold'):.2f}x, warm {med(name, 'warm') / med(base, 'warm'):.2f}x, "
              f"warm CPU {med(name, 'warm cpu') / med(base, 'warm cpu'):.2f}x (user {med(name, 'warm user') / med(base, 'warm user'):.2f}x), "
              f"executable read cold {med(name, 'cached') / med(base, 'cached'):.2f}x")
    try:
        rate = disk_rate(max((exe for _, exe in variants), key=os.path.getsize))
    except OSError as e:  # e.g. a file system without O_DIRECT
        rate = None
        print(f"  disk: rate not measured ({e})")
    ra = read_ahead_kb(variants[0][1])
    if rate:
        print(f"  disk: {rate / 1e6:.0f} MB/s in 8 MiB direct reads here (read_ahead_kb {ra}); at that rate:")
    for name, _ in variants if rate else []:
        read = med(name, "read")
        print(f"    {name}: the cold start's {mb(read):.1f} MB cost {read / rate * 1000:.1f} ms; its cold - warm is {(med(name, 'cold') - med(name, 'warm')) * 1000:.1f} ms")
    strace = shutil.which("strace")
    if strace:
        print("  phases of one warm and one cold start under strace (ms from exec; traced syscalls are slower: compare, do not add up):")
        for name, exe in variants:
            for kind in ("warm", "cold"):
                ev = start_phases(strace, exe, hit_dir, objects, work, env, kind == "cold")
                print(f"    {name:<16} {kind}: " + ", ".join(f"{p} {ev[p]:.1f}" for p in START_PHASES if p in ev))


def self_read_bytes():
    """Bytes this process has read from storage so far (/proc/self/io)."""
    with open("/proc/self/io") as f:
        for line in f:
            if line.startswith("read_bytes:"):
                return int(line.split()[1])
    return 0


def floor_read(exe, end, objects):
    """Seconds and bytes from storage to read, with plain reads in 8 MiB
    chunks and read-ahead off (POSIX_FADV_RANDOM: only the bytes asked
    for), the executable's first `end` bytes (its mapped image: up to the
    end of its last PT_LOAD segment; or the whole file), then the objects:
    the disk's share of a cold start, without the start. Nothing else of
    the file may be read in between its eviction and this (the ELF
    headers' read would bring read-ahead)."""
    before = self_read_bytes()
    t = time.monotonic()
    for path, size in [(exe, end)] + [(o, os.path.getsize(o)) for o in objects]:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
            n = 0
            while n < size:
                got = os.pread(fd, min(8 << 20, size - n), n)
                if not got:
                    break
                n += len(got)
        finally:
            os.close(fd)
    return time.monotonic() - t, self_read_bytes() - before


def strace_calls(trace):
    """(ms since the first traced call, the call's text) for each line of
    an `strace -f -ttt` log."""
    t0 = None
    for line in open(trace):
        parts = line.split(None, 2)
        if len(parts) < 3:
            continue
        t, call = float(parts[1]), parts[2]
        if t0 is None:
            t0 = t
        yield (t - t0) * 1000, call


START_PHASES = ["exec done", "loader done", "object opened", "checks done", "load starts", "attached"]


def start_phases(strace, exe, hit_dir, objects, work, env, cold):
    """The phases of one local hit, from an strace of it: the exec, the
    dynamic loader's work (to the Rust runtime's first poll), the object's
    open, the "using" line, the first bpf() and "attached"."""
    trace = os.path.join(work, "start-trace")
    time.sleep(0.5)
    if cold:
        evict([exe, *objects])
    subprocess.run([strace, "-f", "-ttt", "-T", "--seccomp-bpf", "-e", "trace=execve,poll,openat,bpf,write", "-o", trace,
                    exe, "--install-path", hit_dir, "--build-policy", "never", "run", "--duration", "0.05"],
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, check=True)
    names = [os.path.basename(o) for o in objects if o.endswith(".o")]
    ev = {}
    for ms, call in strace_calls(trace):
        took = re.search(r"<([\d.]+)>\s*$", call)
        if call.startswith("execve(") and took:
            ev["exec done"] = ms + float(took.group(1)) * 1000
        elif call.startswith("poll("):
            ev.setdefault("loader done", ms)
        elif call.startswith("openat(") and any(f'/{n}"' in call or f'"{n}"' in call for n in names):
            ev.setdefault("object opened", ms)
        elif call.startswith("write(2") and "bpfarm-agent: using" in call:
            ev.setdefault("checks done", ms)
        elif call.startswith("bpf("):
            ev.setdefault("load starts", ms)
        elif call.startswith("write(2") and "attached" in call:
            ev["attached"] = ms
            break
    os.unlink(trace)
    return ev


def proc_counts(pid):
    """Major faults and bytes read from storage so far by the process (all
    its threads)."""
    with open(f"/proc/{pid}/stat") as f:
        majflt = int(f.read().rsplit(")", 1)[1].split()[9])
    read = None
    with open(f"/proc/{pid}/io") as f:
        for line in f:
            if line.startswith("read_bytes:"):
                read = int(line.split()[1])
    return majflt, read


def mapped_rss(pid, exe):
    """Bytes of the executable's file mapped into the process (Rss of its
    mappings): the pages it touched, plus the kernel's fault-around."""
    exe = os.path.realpath(exe)
    total, mine = 0, False
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            head = line.split()
            if head and "-" in head[0] and len(head) >= 5 and not head[0].endswith(":"):
                mine = len(head) >= 6 and head[5] == exe
            elif mine and head[0] == "Rss:":
                total += int(head[1]) * 1024
    return total


def resident(path):
    """Which pages of the file are in the page cache (mincore on a mapping
    of it, which reads nothing)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    size = os.path.getsize(path)
    page = os.sysconf("SC_PAGE_SIZE")
    fd = os.open(path, os.O_RDONLY)
    try:
        addr = libc.mmap(None, size, 1, 1, fd, 0)  # PROT_READ, MAP_SHARED
        if addr is None or addr == ctypes.c_void_p(-1).value:
            raise OSError(ctypes.get_errno(), f"mmap {path}")
        try:
            vec = (ctypes.c_ubyte * ((size + page - 1) // page))()
            if libc.mincore(addr, size, vec) != 0:
                raise OSError(ctypes.get_errno(), f"mincore {path}")
        finally:
            libc.munmap(addr, size)
    finally:
        os.close(fd)
    return [b & 1 for b in vec], page


def elf_layout(path):
    """An ELF64 file's sections with file bytes (name, offset, size), its
    mapped image's size (the PT_LOAD segments' file bytes) and where that
    image ends in the file."""
    with open(path, "rb") as f:
        head = f.read(64)
        if head[:4] != b"\x7fELF" or head[4] != 2:
            raise SystemExit(f"bench: {path} is not a 64-bit ELF file")
        phoff, shoff = struct.unpack_from("<QQ", head, 0x20)
        phentsize, phnum, shentsize, shnum, shstrndx = struct.unpack_from("<HHHHH", head, 0x36)
        f.seek(phoff)
        ph = f.read(phentsize * phnum)
        image, image_end = 0, 0
        for i in range(phnum):
            p_type, _, p_offset, _, _, p_filesz = struct.unpack_from("<IIQQQQ", ph, i * phentsize)
            if p_type == 1:  # PT_LOAD
                image += p_filesz
                image_end = max(image_end, p_offset + p_filesz)
        f.seek(shoff)
        sh = f.read(shentsize * shnum)
        raw = [struct.unpack_from("<IIQQQQ", sh, i * shentsize) for i in range(shnum)]
        f.seek(raw[shstrndx][4])
        strtab = f.read(raw[shstrndx][5])
    secs = []
    for name, typ, _, _, off, size in raw:
        if typ != 8 and size:  # not SHT_NOBITS
            secs.append((strtab[name:strtab.index(b"\0", name)].decode(), off, size))
    return sorted(secs, key=lambda s: s[1]), image, image_end


def read_by_section(path, pages, page):
    """The resident bytes of the file, by the section each page starts in."""
    secs, _, image_end = elf_layout(path)
    by = {}
    for i, r in enumerate(pages):
        if not r:
            continue
        off = i * page
        name = next((n for n, o, s in secs if o <= off < o + s), None)
        if name is None:
            name = "(headers, padding)" if off < image_end else "(other)"
        if off >= image_end:
            name += " [not mapped]"
        by[name] = by.get(name, 0) + page
    top = sorted(by.items(), key=lambda kv: -kv[1])
    shown = [f"{n} {b / 1e6:.2f}" for n, b in top if b >= 100_000]
    rest = sum(b for _, b in top if b < 100_000)
    beyond = sum(b for n, b in top if n.endswith("[not mapped]"))
    return ", ".join(shown) + (f", other sections {rest / 1e6:.2f}" if rest else "") + f"; beyond the mapped image: {beyond / 1e6:.2f}"


# C libraries linked into the agent, by their symbols' prefixes.
C_LIBS = [(r"aws_lc|L(p\d+|edwards)|ml[dk][se]m?\d|(ec|pkey|p\d+|chacha20|x25519|sha\d+|aes)_", "aws-lc (C)"),
          (r"(ZSTD|HUF|FSE|ZSTDv|HIST|COVER|ZDICT|POOL)", "zstd (C)"), (r"lzma", "liblzma (C)"),
          (r"(bpf|btf|libbpf|perf_buffer|ring_buffer|ringbuf|user_ring|elf_|bpf_|gen_|linker|usdt|hashmap|strset)", "libbpf (C)")]


def code_by_crate(path, top=12):
    """The executable's function bytes by the crate each symbol's path starts
    with (nm's demangled names; generic code counts for the crate that
    defines it), the biggest first."""
    out = subprocess.run(["nm", "-C", "-S", "--defined-only", path], capture_output=True, text=True).stdout
    by = {}
    for line in out.splitlines():
        parts = line.split(None, 3)
        if len(parts) < 4 or parts[2] not in "tTwW":
            continue
        name = parts[3].lstrip("<&*_ ").removeprefix("impl ").removeprefix("dyn ").removeprefix("mut ")
        m = re.match(r"[A-Za-z_][A-Za-z0-9_]*(?=::)", name)
        crate = m.group(0) if m else next((c for p, c in C_LIBS if re.match(p, name)), "(other C, asm)")
        by[crate] = by.get(crate, 0) + int(parts[1], 16)
    total = sum(by.values())
    if not total:
        return "no symbol table"
    top_n = sorted(by.items(), key=lambda kv: -kv[1])[:top]
    return f"{total / 1e6:.2f} in all; " + ", ".join(f"{c} {b / 1e6:.2f}" for c, b in top_n)


def disk_rate(path, limit=64 << 20):
    """Bytes per second the disk under this file delivers in 8 MiB reads
    (the size of the kernel's read-around on a page fault here when
    read_ahead_kb is 8192): O_DIRECT reads of its first `limit` bytes, so
    the page cache plays no part; median of 3."""
    import mmap
    buf = mmap.mmap(-1, 8 << 20)  # page-aligned, as O_DIRECT needs
    rates = []
    for _ in range(3):
        fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
        try:
            n, t = 0, time.monotonic()
            while n < limit:
                got = os.preadv(fd, [buf], n)
                if got <= 0:
                    break
                n += got
            rates.append(n / (time.monotonic() - t))
        finally:
            os.close(fd)
    buf.close()
    return statistics.median(rates)


def read_ahead_kb(path):
    """The read-ahead of the block device holding the file, if found."""
    dev = os.stat(path).st_dev
    try:
        with open(f"/sys/dev/block/{os.major(dev)}:{os.minor(dev)}/uevent") as f:
            name = dict(l.strip().split("=", 1) for l in f if "=" in l).get("DEVNAME", "")
        for q in (f"/sys/block/{name}/queue/read_ahead_kb", f"/sys/class/block/{name}/../queue/read_ahead_kb"):
            if os.path.exists(q):
                return open(q).read().strip()
    except OSError:
        pass
    return "unknown"


PHASES = ["client thread", "connect", "first byte", "last byte", "load starts", "attached"]
# Counted per run, beside the phases (load-independent).
COUNTS = ["connections", "requests", "socket reads", "empty reads", "syscalls"]


def phases(trace):
    """The phases of one agent run from an `strace -f -ttt` log, in ms from
    its exec (first connect; first and last byte read on any of its
    connections), and what it did on the network before the load: TCP
    connections opened, HTTP requests sent, socket reads that brought bytes
    and those that found none (EAGAIN)."""
    socks = set()
    ev = {"connections": 0, "requests": 0, "socket reads": 0, "empty reads": 0}
    for ms, call in strace_calls(trace):
        if call.startswith("clone3(") and "client thread" not in ev and "load starts" not in ev:
            ev["client thread"] = ms
        m = re.match(r"connect\((\d+), \{sa_family=AF_INET", call)
        if m:
            socks.add(m.group(1))
            ev.setdefault("connect", ms)
            ev["connections"] += 1
        m = re.match(r"(sendto|writev|write|recvfrom)\((\d+),", call)
        if m and m.group(2) in socks:
            if m.group(1) == "recvfrom":
                if "EAGAIN" in call:
                    ev["empty reads"] += 1
                else:
                    ev.setdefault("first byte", ms)
                    ev["last byte"] = ms
                    ev["socket reads"] += 1
            elif re.search(r'"(GET|HEAD|POST|PUT) /', call):
                ev["requests"] += 1
        if call.startswith("bpf("):
            ev.setdefault("load starts", ms)
        if call.startswith("write(2") and "attached" in call:
            ev["attached"] = ms
            break
    return ev


def syscall_count(strace, argv, work, env):
    """All system calls of one run, every thread (`strace -f -c`)."""
    out = os.path.join(work, "count")
    subprocess.run([strace, "-f", "-c", "-o", out, *argv], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, check=True)
    total = None
    for line in open(out):
        parts = line.split()
        if parts and parts[-1] == "total":
            total = int(parts[3]) if len(parts) >= 5 else int(parts[2])
    os.unlink(out)
    return total


def breakdown(agent, n, hit_dir, url, work, env, static_url=None):
    os.makedirs(work, exist_ok=True)
    strace = shutil.which("strace")
    if not strace:
        raise SystemExit("bench: --breakdown needs strace (ci/install-deps installs it)")
    calls = "execve,clone3,connect,sendto,writev,write,recvfrom,bpf"
    where = {"/v1 fetch": lambda i: ["--install-path", f"{work}/traced{i}", "--registry", url],
             "local hit": lambda i: ["--install-path", hit_dir]}
    if static_url:
        where["static fetch"] = lambda i: ["--install-path", f"{work}/traced-static{i}", "--registry", static_url]
    runs = {kind: [] for kind in where}
    for i in range(n):
        for kind, place in where.items():
            trace = f"{work}/trace-{i}"
            argv = [agent, *place(i), "--build-policy", "never", "run", "--duration", "0.05"]
            time.sleep(0.5)
            subprocess.run([strace, "-f", "-ttt", "--seccomp-bpf", "-e", f"trace={calls}", "-o", trace, *argv], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, check=True)
            ev = phases(trace)
            os.unlink(trace)
            if i == 0:
                ev["syscalls"] = syscall_count(strace, [agent, *place(f"c{i}"), "--build-policy", "never", "run", "--duration", "0.05"], work, env)
            runs[kind].append(ev)
    print(f"bench: phases of a start under strace (ms from exec, median of {n}; traced syscalls are slower, so compare phases, not totals), load {' '.join(open('/proc/loadavg').read().split()[:3])}")
    for kind, evs in runs.items():
        cells = []
        for p in PHASES:
            vals = [e[p] for e in evs if p in e]
            if vals:
                cells.append(f"{p} {statistics.median(vals):.1f}")
        print(f"  {kind:<12} " + ", ".join(cells))
    print("  to the load, per run (median): TCP connections, HTTP requests, socket reads with bytes, empty socket reads (EAGAIN); system calls of the whole run (one run, every thread)")
    for kind, evs in runs.items():
        cells = []
        for c in COUNTS:
            vals = [e[c] for e in evs if e.get(c) is not None]
            if vals:
                cells.append(f"{c} {statistics.median(vals):g}")
        print(f"  {kind:<12} " + ", ".join(cells))
    med = lambda evs, p: statistics.median([e[p] for e in evs if p in e])
    h = runs["local hit"]
    for kind in [k for k in runs if k != "local hit"]:
        f = runs[kind]
        try:
            print(f"  {kind}: TTFB (first connect to first byte) {med(f, 'first byte') - med(f, 'connect'):.1f} ms, first to last byte {med(f, 'last byte') - med(f, 'first byte'):.1f} ms, "
                  f"last byte to load {med(f, 'load starts') - med(f, 'last byte'):.1f} ms; load starts {med(f, 'load starts') - med(h, 'load starts'):+.1f} ms after a local hit's")
        except statistics.StatisticsError:
            print(f"  {kind}: (a phase was missing from the traces)")


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
