#!/usr/bin/env python3
"""Benchmark: bpfarm-registry at fleet scale, by simulation, on loopback.

  1. seed: a registry holding --kernels x --versions objects (synthetic
     kernel releases, default 10,000 x 10 = 100,000), written through the
     registry's own publish code in batched transactions
     (registry/examples/fleet_seed.rs), with their OCI forms;
  2. start: time from `bpfarm-registry serve` to listening (it checks every
     object's OCI form at start), RSS after start; with --compare-check,
     first the check alone both ways (set-based, one object at a time);
  3. lookup: `GET /v1/objects/<arch>/<version>/<release>` for random
     identities under wrk -c64: req/s and p99; then --token-rounds
     alternating runs without and with a read token (`Authorization:
     Bearer`, which the registry checks on every request that sends one):
     medians of req/s and of the registry's CPU time per request, and the
     token/plain ratio of each (the cost of the token check);
  4. list: every page of `GET /v1/objects?limit=1000` walked with `after`,
     and a search (`q=`) walked the same way: pages, p50/p99/max per page;
  5. the coverage page `GET /` (and a later page of a search) and
     `GET /v1/coverage` (and a page of a search), each first right after a
     change to the index (another process's commit) and then --repeat times
     again: time, the registry's CPU time per request, and size; then the
     peak RSS (with --rss-breakdown: file-backed vs anonymous, what malloc
     holds in use and keeps free, what sqlite holds);
  6. a burst of --agents simulated agents (at most --concurrency at once,
     each its own connection): look up its kernel's object, download the
     blob, check its digest. Completion time, p99 per agent, errors.
Ends with the registry's peak RSS (VmHWM), also printed after each phase
(which phase raised it). Baselines in the same run: the lookup's req/s
against `/healthz` (the server's floor for one request); with
--compare-bin OLD, every serving phase first with an older registry binary
on the same data, then the new/old ratio of each figure; with --rounds N
too, first both binaries serve the same data at once and are asked in turn
(who goes first alternates), N rounds of the coverage requests (first and
again), the list and search pages of each filter (`list_queries`): medians
per binary, new/old, the registry's CPU per page, the slowest pages by
where they start (--only-interleaved: just that). The older binary serves
a copy of the data without the list indexes (`old_copy`). Before serving,
sqlite's VM steps per page of each list query, now and as before the list
indexes (`fleet_seed --rows-read`: load-independent).

    bench/fleet.py [--kernels 10000] [--versions 10] [--agents 10000] [--concurrency 256] [--token-rounds 3] [--repeat 5] [--rss-breakdown] [--compare-check] [--compare-bin OLD [--rounds N [--only-interleaved]]] [--work DIR]
"""
import argparse
import asyncio
import hashlib
import json
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from registry import cpu_ticks, hwm_mib, load, proc_status  # noqa: E402


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p))] if xs else 0.0


def wrk_lua(url, paths, seconds, conns, work, headers=None, server_pid=None):
    """One wrk run over `paths` (each request one at random) with `headers`:
    req/s, p99 ms, non-2xx count, and the server's CPU time per request
    (µs; None without `server_pid`)."""
    script = os.path.join(work, "paths.lua")
    with open(script, "w") as f:
        f.write("paths = {" + ",".join(json.dumps(p) for p in paths) + "}\n")
        f.write("headers = {" + ",".join(f"[{json.dumps(k)}] = {json.dumps(v)}" for k, v in (headers or {}).items()) + "}\n")
        f.write("request = function() return wrk.format(nil, paths[math.random(#paths)], headers) end\n")
    before = cpu_ticks(server_pid) if server_pid else 0
    out = subprocess.run(["wrk", "-t2", f"-c{conns}", f"-d{seconds}s", "--latency", "-s", script, url], capture_output=True, text=True, check=True).stdout
    ticks = cpu_ticks(server_pid) - before if server_pid else 0
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    done = int(re.search(r"(\d+) requests in", out).group(1))
    m = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    p99 = float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    cpu_us = ticks / os.sysconf("SC_CLK_TCK") * 1e6 / done if server_pid and done else None
    return rps, p99, int(errors.group(1)) if errors else 0, cpu_us


def get(url):
    t = time.monotonic()
    with urllib.request.urlopen(url, timeout=120) as r:
        body = r.read()
    return time.monotonic() - t, body


def walk(base, query, starts=None):
    """Every page of /v1/objects?<query>; returns (page times, objects).
    `starts`, when given, gets each page's `after`."""
    times, n, after = [], 0, 0
    while True:
        took, body = get(f"{base}/v1/objects?{query}&limit=1000&after={after}")
        page = json.loads(body)
        times.append(took)
        if starts is not None:
            starts.append(after)
        n += len(page["objects"])
        if page.get("next") is None:
            return times, n
        after = page["next"]


async def agent(host, port, arch, version, release):
    """One simulated agent: its own connection, lookup then download."""
    t = time.monotonic()
    reader, writer = await asyncio.open_connection(host, port)
    try:
        async def request(path):
            writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            m = re.search(rb"(?i)content-length:\s*(\d+)", head)
            body = await reader.readexactly(int(m.group(1))) if m else b""
            return status, body

        status, body = await request(f"/v1/objects/{arch}/{version}/{release}")
        if status != 200:
            raise RuntimeError(f"lookup {release} {version}: {status}")
        meta = json.loads(body)
        status, blob = await request(meta["download"])
        if status != 200 or "sha256:" + hashlib.sha256(blob).hexdigest() != meta["digest"]:
            raise RuntimeError(f"download {meta['digest']}: {status}, {len(blob)} bytes")
    finally:
        writer.close()
    return time.monotonic() - t


async def burst(host, port, identities, concurrency):
    sem = asyncio.Semaphore(concurrency)
    times, errors = [], []

    async def one(ident):
        async with sem:
            try:
                times.append(await agent(host, port, *ident))
            except Exception as e:
                errors.append(str(e))

    t = time.monotonic()
    await asyncio.gather(*(one(i) for i in identities))
    return time.monotonic() - t, times, errors


COMPARED = [
    ("start_s", "start to listening (s)", "lower"),
    ("lookup_rps", "lookup (req/s)", "higher"),
    ("lookup_p99", "lookup p99 (ms)", "lower"),
    ("token_rps", "lookup with a read token (req/s)", "higher"),
    ("token_cpu_us", "  its CPU per request (µs)", "lower"),
    ("token_rps_ratio", "  with/without token, req/s", "higher"),
    ("token_cpu_ratio", "  with/without token, CPU", "lower"),
    ("list_s", "list, every page (s)", "lower"),
    ("list_p99", "list page p99 (ms)", "lower"),
    ("search_s", "search, every page (s)", "lower"),
    ("search_p99", "search page p99 (ms)", "lower"),
    ("page_first_ms", "coverage page, first (ms)", "lower"),
    ("page_ms", "coverage page, again (ms)", "lower"),
    ("json_first_ms", "GET /v1/coverage, first (ms)", "lower"),
    ("json_ms", "GET /v1/coverage, again (ms)", "lower"),
    ("coverage_cpu_first_ms", "  page + JSON first, registry CPU (ms)", "lower"),
    ("coverage_cpu_ms", "  page + JSON again, registry CPU (ms)", "lower"),
    ("coverage_hwm_mib", "peak RSS after coverage (MiB)", "lower"),
    ("mem_rss", "  RSS then (MiB)", "lower"),
    ("mem_file", "    file-backed (MiB)", "lower"),
    ("mem_anon", "    anonymous (MiB)", "lower"),
    ("mem_malloc_used", "    malloc in use (MiB)", "lower"),
    ("mem_sqlite", "      of which sqlite (MiB)", "lower"),
    ("mem_malloc_free", "    malloc free but kept (MiB)", "lower"),
    ("burst_s", "agents burst (s)", "lower"),
    ("burst_p99", "agent p99 (ms)", "lower"),
    ("hwm_mib", "peak RSS (MiB)", "lower"),
]


# The coverage requests measured: the page, a later page of a search, the
# JSON, a page of a search of it.
COVERAGE_PATHS = [("page", "/"), ("page q", "/?q=-fleet-&from=1000"), ("json", "/v1/coverage"), ("json q", "/v1/coverage?q=-fleet-&offset=5000&limit=1000")]


def touch_index(data):
    """One commit to the index by another process (a read token's creation
    time rewritten), so every registry on it counts afresh."""
    subprocess.run(["sqlite3", os.path.join(data, "index.sqlite"),
                    "UPDATE tokens SET created_at = strftime('%Y-%m-%dT%H:%M:%f', 'now') WHERE name LIKE 'fleet-bench-%';"], check=True)


# The indexes a list page reads by (registry/sql/list_indexes.sql): an
# older registry serves a copy of the data without them, as it left its
# index, since sqlite would pick them for its own queries too.
LIST_INDEXES = ["objects_by_arch", "objects_by_version", "objects_by_version_arch", "objects_by_uname_version", "objects_by_config_digest"]


def old_copy(work, data):
    """A copy of `data` for the older binary: the index copied whole (sqlite's
    backup: the WAL's pages in), the list indexes dropped, the blobs
    hard-linked (they are never written in place)."""
    old = os.path.join(work, "data-old")
    if not os.path.exists(old):
        os.makedirs(old + ".tmp", exist_ok=True)
        subprocess.run(["sqlite3", os.path.join(data, "index.sqlite"), f".backup '{os.path.join(old + '.tmp', 'index.sqlite')}'"], check=True)
        subprocess.run(["cp", "-al", os.path.join(data, "blobs"), os.path.join(old + ".tmp", "blobs")], check=True)
        os.rename(old + ".tmp", old)
    subprocess.run(["sqlite3", os.path.join(old, "index.sqlite"), "; ".join(f"DROP INDEX IF EXISTS {i}" for i in LIST_INDEXES) + ";"], check=True)
    return old


def coverage_requests(base, pid, path, repeat, data=None):
    """`path` asked once after a change to the index (made here when `data`
    is given: its index is touched), then `repeat` times more (again):
    (ms, registry CPU ms, bytes) of the first and (median ms, CPU ms per
    request) of the others."""
    if data:
        touch_index(data)
    before = cpu_ns(pid)
    took, body = get(f"{base}{path}")
    first = (took * 1000, (cpu_ns(pid) - before) / 1e6, len(body))
    before = cpu_ns(pid)
    times = [get(f"{base}{path}")[0] * 1000 for _ in range(repeat)]
    return first, (statistics.median(times), (cpu_ns(pid) - before) / 1e6 / repeat)


def rss_breakdown(pid, phase):
    """Where `pid`'s resident memory is, printed: file-backed (its code and
    data mapped from the executable) vs anonymous (heap, stacks), threads;
    with gdb (the process stops for a moment), what malloc got from the
    system (arenas, mmapped chunks), how much of it is free but kept, and
    what sqlite holds (its page caches, schema and statements:
    `sqlite3_memory_used`). Returns the figures (MiB)."""
    roll = {}
    for line in open(f"/proc/{pid}/smaps_rollup"):
        parts = line.split()
        if len(parts) == 3 and parts[2] == "kB":
            roll[parts[0].rstrip(":")] = int(parts[1]) / 1024
    out = {"rss": roll.get("Rss", 0.0), "anon": roll.get("Anonymous", 0.0)}
    out["file"] = out["rss"] - out["anon"]
    line = f"memory:  after {phase}: RSS {out['rss']:.1f} MiB = file-backed {out['file']:.1f} + anonymous {out['anon']:.1f}; {int(proc_status(pid, 'Threads') * 1024)} threads"
    if shutil.which("gdb"):
        xml = os.path.join(tempfile.gettempdir(), f"fleet-malloc-{pid}.xml")
        cmds = [f'set $f = (void*)fopen("{xml}", "w")', "call (int)malloc_info(0, $f)", "call (int)fclose($f)",
                "echo sqlite:\\n", "print (long long)sqlite3_memory_used()"]
        res = subprocess.run(["gdb", "-p", str(pid), "-batch", "-nx"] + [a for c in cmds for a in ("-ex", c)], capture_output=True, text=True)
        try:
            info = open(xml).read()
            os.unlink(xml)
            tail = info[info.rindex("</heap>"):]
            size = lambda tag, kind: int(re.search(rf'<{tag} type="{kind}"[^>]*size="(\d+)"', tail).group(1)) / 2**20  # noqa: E731
            out["malloc_system"], out["malloc_mmap"] = size("system", "current"), size("total", "mmap")
            out["malloc_free"] = size("total", "fast") + size("total", "rest")
            out["malloc_used"] = out["malloc_system"] - out["malloc_free"] + out["malloc_mmap"]
            arenas = info.count("<heap nr=")
            m = re.search(r"sqlite:\n\$\d+ = (\d+)", res.stdout)
            out["sqlite"] = int(m.group(1)) / 2**20 if m else float("nan")
            line += (f"; malloc: {out['malloc_system']:.1f} MiB in {arenas} arenas + {out['malloc_mmap']:.1f} mmapped, "
                     f"in use {out['malloc_used']:.1f} (of which sqlite {out['sqlite']:.1f}), free but kept {out['malloc_free']:.1f}")
        except (OSError, ValueError, AttributeError) as e:
            line += f"; malloc: not read ({e}; gdb: {res.stderr.strip()[-200:]})"
    else:
        line += "; malloc: not read (no gdb: ci/install-deps installs it)"
    print(line, flush=True)
    if "malloc: not read" in line and os.environ.get("CI") == "true":
        raise SystemExit("bench: --rss-breakdown could not read the registry's heap through gdb (CI=true: a check that did not run fails)")
    return out


def hwm_line(pid, phase):
    print(f"         peak RSS after {phase}: {hwm_mib(pid):.1f} MiB", flush=True)


def serve_phases(args, binary, data, releases, versions, n, work, token):
    """Start `binary` on `data`, run every phase, stop it; the figures."""
    r = {"errors": 0}
    reg = None
    try:
        t = time.monotonic()
        reg, base = start(binary, data)
        host, port = base.removeprefix("http://").rsplit(":", 1)
        r["start_s"] = time.monotonic() - t
        print(f"start:   {r['start_s']:.2f} s to listening, RSS {proc_status(reg.pid, 'VmRSS'):.1f} MiB, peak {hwm_mib(reg.pid):.1f} MiB", flush=True)

        rnd = random.Random(1)
        paths = [f"/v1/objects/x86_64/{rnd.choice(versions)}/{rnd.choice(releases)}" for _ in range(2000)]
        h_rps, h_p99, _, _ = wrk_lua(base, ["/healthz"], args.seconds, 64, work)
        l_rps, l_p99, l_err, _ = wrk_lua(base, paths, args.seconds, 64, work)
        print(f"lookup:  {l_rps:8.0f} req/s  p99 {l_p99:7.2f} ms  non-2xx {l_err}   (/healthz {h_rps:.0f} req/s, p99 {h_p99:.2f} ms: lookup/healthz {l_rps / h_rps:.2f}x)", flush=True)
        r["lookup_rps"], r["lookup_p99"] = l_rps, l_p99
        if args.token_rounds:
            plain, tok = [], []
            for _ in range(args.token_rounds):
                plain.append(wrk_lua(base, paths, args.seconds, 64, work, server_pid=reg.pid))
                tok.append(wrk_lua(base, paths, args.seconds, 64, work, headers={"Authorization": f"Bearer {token}"}, server_pid=reg.pid))
            refused = sum(t[2] for t in tok)
            if refused:
                raise SystemExit(f"fleet: {refused} lookups with the read token were refused")
            med = lambda runs, i: statistics.median(x[i] for x in runs)  # noqa: E731
            r["token_rps"], r["token_p99"], r["token_cpu_us"] = med(tok, 0), med(tok, 1), med(tok, 3)
            r["token_rps_ratio"], r["token_cpu_ratio"] = r["token_rps"] / med(plain, 0), r["token_cpu_us"] / med(plain, 3)
            print(f"token:   lookup with a read token {r['token_rps']:8.0f} req/s  p99 {r['token_p99']:7.2f} ms  {r['token_cpu_us']:.0f} µs CPU/request; "
                  f"without {med(plain, 0):.0f} req/s, {med(plain, 3):.0f} µs: with/without {r['token_rps_ratio']:.2f}x req/s, {r['token_cpu_ratio']:.2f}x CPU "
                  f"(medians of {args.token_rounds} alternating runs; load {' '.join(load())})", flush=True)
        hwm_line(reg.pid, "lookups")

        times, count = walk(base, "arch=x86_64")
        print(f"list:    {count} objects in {len(times)} pages of 1000, {sum(times):.2f} s; per page p50 {statistics.median(times) * 1000:.1f} ms  p99 {pct(times, 0.99) * 1000:.1f} ms  max {max(times) * 1000:.1f} ms", flush=True)
        if count != n:
            raise SystemExit(f"fleet: the list walked {count} objects, not {n}")
        r["list_s"], r["list_p99"] = sum(times), pct(times, 0.99) * 1000
        times, count = walk(base, "q=-fleet-")
        print(f"search:  {count} objects in {len(times)} pages, {sum(times):.2f} s; per page p50 {statistics.median(times) * 1000:.1f} ms  p99 {pct(times, 0.99) * 1000:.1f} ms", flush=True)
        r["search_s"], r["search_p99"] = sum(times), pct(times, 0.99) * 1000
        hwm_line(reg.pid, "list and search")

        for what, path in COVERAGE_PATHS:
            first, again = coverage_requests(base, reg.pid, path, args.repeat, data)
            print(f"{what + ':':8} GET {path} first {first[0]:.0f} ms (registry CPU {first[1]:.0f} ms), again {again[0]:.1f} ms "
                  f"(median of {args.repeat}; CPU {again[1]:.1f} ms each), {first[2] / 1e6:.2f} MB", flush=True)
            if what in ("page", "json"):
                r[f"{what}_first_ms"], r[f"{what}_ms"] = first[0], again[0]
                r["coverage_cpu_first_ms"] = r.get("coverage_cpu_first_ms", 0) + first[1]
                r["coverage_cpu_ms"] = r.get("coverage_cpu_ms", 0) + again[1]
        r["coverage_hwm_mib"] = hwm_mib(reg.pid)
        hwm_line(reg.pid, "coverage")
        if args.rss_breakdown:
            for key, mib in rss_breakdown(reg.pid, "coverage").items():
                r[f"mem_{key}"] = mib

        identities = [("x86_64", rnd.choice(versions), rnd.choice(releases)) for _ in range(args.agents)]
        wall, times, errors = asyncio.run(burst(host, int(port), identities, args.concurrency))
        print(f"agents:  {args.agents} in one burst (at most {args.concurrency} at once): {wall:.2f} s, {len(times) / wall:.0f} agents/s, per agent p50 {statistics.median(times) * 1000 if times else 0:.1f} ms  p99 {pct(times, 0.99) * 1000:.1f} ms, errors {len(errors)}", flush=True)
        for e in errors[:5]:
            print(f"    {e}")
        r["burst_s"], r["burst_p99"], r["errors"] = wall, pct(times, 0.99) * 1000, len(errors)
        r["hwm_mib"] = hwm_mib(reg.pid)
        print(f"rss:     peak {r['hwm_mib']:.1f} MiB, now {proc_status(reg.pid, 'VmRSS'):.1f} MiB; load at the end {' '.join(load())}", flush=True)
    finally:
        if reg is not None:
            reg.kill()
            reg.wait()
    return r


def start(binary, data):
    """`binary` serving `data` on a free loopback port: (process, base URL)."""
    reg = subprocess.Popen([binary, "serve", "--listen", "127.0.0.1:0", "--data", data], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env={**os.environ, "BPFARM_LOG": "error"})
    base = reg.stdout.readline().decode().strip().removeprefix("listening on ")
    if not base.startswith("http://"):
        reg.kill()
        raise SystemExit(f"fleet: {binary} did not start")
    return reg, base


def cpu_ns(pid):
    """CPU time of every thread of `pid` so far (ns, from schedstat: finer
    than clock ticks for a page of a few milliseconds)."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            total += int(open(f"/proc/{pid}/task/{task}/schedstat").read().split()[0])
        except (OSError, ValueError, IndexError):
            pass  # a thread that ended between the listing and the read
    return total


def list_queries(releases):
    """The list and search pages walked: every object, a search matching
    every one, one release's ten by search and by name with a version,
    none (an arch nothing is built for, a `uname -v` no object has), one
    version, one version of one arch."""
    narrow = urllib.parse.quote(releases[len(releases) // 2])
    return [("list", "arch=x86_64"), ("search", "q=-fleet-"), ("narrow search", f"q={narrow}"), ("empty list", "arch=aarch64"),
            ("version", "version=v1.1.0"), ("version+arch", "version=v1.1.0&arch=x86_64"),
            ("release+version", f"kernel_release={narrow}&version=v1.1.0"), ("no uname", "uname_version=none"),
            ("search+version", f"q={narrow}&version=v1.1.0")]


def interleaved(args, binaries, releases):
    """Both registries serving the same data at once, asked in turn (who goes
    first alternates by round), so the machine's load falls on both alike:
    per round, after one change to the index, the coverage page and
    `/v1/coverage` first and again (each binary's own CPU time), then every
    page of the list and of the search. Medians over the rounds, per binary,
    and new/old; the slowest list and search pages by where they start."""
    regs = {}
    try:
        for label, binary, data in binaries:
            regs[label] = start(binary, data)
        res = {label: {} for label in regs}
        add = lambda label, key, x: res[label].setdefault(key, []).append(x)  # noqa: E731
        slow = {label: [] for label in regs}
        for n in range(args.rounds):
            order = list(regs) if n % 2 == 0 else list(reversed(regs))
            for what, path in COVERAGE_PATHS[::2]:
                for _, _, data in binaries:
                    touch_index(data)
                for label in order:
                    reg, base = regs[label]
                    first, again = coverage_requests(base, reg.pid, path, args.repeat)
                    add(label, f"{what} first ms", first[0])
                    add(label, f"{what} first CPU ms", first[1])
                    add(label, f"{what} again ms", again[0])
                    add(label, f"{what} again CPU ms", again[1])
            for what, query in list_queries(releases):
                for label in order:
                    starts, times = [], []
                    before = cpu_ns(regs[label][0].pid)
                    # A walk of few pages is walked again, to 10 pages.
                    while len(times) < 10:
                        took, _ = walk(regs[label][1], query, starts)
                        times.extend(took)
                    add(label, f"{what} page p50 ms", statistics.median(times) * 1000)
                    add(label, f"{what} page max ms", max(times) * 1000)
                    add(label, f"{what} CPU ms a page", (cpu_ns(regs[label][0].pid) - before) / 1e6 / len(times))
                    slow[label].extend((t * 1000, what, a, n) for t, a in zip(times, starts))
            print(f"round {n + 1}/{args.rounds} done, load {' '.join(load())}", flush=True)
        print(f"--- interleaved, {args.rounds} rounds, both serving the same data at once; medians of the rounds", flush=True)
        labels = list(regs)
        print(f"{'':34}" + "".join(f"{label:>12}" for label in labels) + ("   new/old" if len(labels) == 2 else ""))
        for key in res[labels[0]]:
            meds = [statistics.median(res[label][key]) for label in labels]
            ratio = f"   {meds[1] / meds[0]:.2f}x" if len(meds) == 2 and meds[0] else ""
            print(f"{key:34}" + "".join(f"{m:12.1f}" for m in meds) + ratio)
        for label in labels:
            worst = sorted(slow[label], reverse=True)[:5]
            print(f"slowest pages, {label}: " + "; ".join(f"{w} after={a} {t:.0f} ms (round {n + 1})" for t, w, a, n in worst))
            print(f"peak RSS, {label}: {hwm_mib(regs[label][0].pid):.1f} MiB")
    finally:
        for reg, _ in regs.values():
            reg.kill()
            reg.wait()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kernels", type=int, default=10_000)
    ap.add_argument("--versions", type=int, default=10)
    ap.add_argument("--agents", type=int, default=10_000)
    ap.add_argument("--concurrency", type=int, default=256)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=0, help="with --compare-bin: rounds of the coverage requests, list and search asked of both binaries in turn, both serving at once (0: none)")
    ap.add_argument("--only-interleaved", action="store_true", help="with --compare-bin and --rounds: skip the phases of one binary at a time")
    ap.add_argument("--rss-breakdown", action="store_true", help="after the coverage requests, break the registry's RSS down (smaps_rollup; malloc and sqlite through gdb)")
    ap.add_argument("--repeat", type=int, default=5, help="coverage requests asked again after the first (the median is printed)")
    ap.add_argument("--token-rounds", type=int, default=3, help="alternating wrk runs of the lookup without and with a read token (0: none)")
    ap.add_argument("--compare-check", action="store_true", help="before serving, time the start-up faces check set-based and one object at a time (the old way) on the same data")
    ap.add_argument("--registry-bin", default=os.path.join(ROOT, "target/release/bpfarm-registry"))
    ap.add_argument("--seed-bin", default=os.path.join(ROOT, "target/release/examples/fleet_seed"))
    ap.add_argument("--compare-bin", help="also run every serving phase with this (older) registry binary first, on the same data, and print new/old ratios")
    ap.add_argument("--work", help="keep the seeded registry here (reused when it exists; default: a fresh folder in /dev/shm, removed)")
    args = ap.parse_args()
    if not os.path.exists(args.registry_bin) or not os.path.exists(args.seed_bin):
        subprocess.run(["cargo", "build", "--release", "--locked", "-p", "bpfarm-registry", "--bin", "bpfarm-registry", "--example", "fleet_seed"], cwd=ROOT, check=True)
    # tmpfs by default: the blob store fsyncs every manifest it writes,
    # which would make the seed, not what is measured, take the time.
    shm = "/dev/shm" if os.path.isdir("/dev/shm") else None
    work = args.work or tempfile.mkdtemp(prefix="bpfarm-fleet-", dir=shm)
    os.makedirs(work, exist_ok=True)
    data = os.path.join(work, "data")
    n = args.kernels * args.versions
    print(f"fleet: {args.kernels} kernels x {args.versions} versions = {n} objects, {os.cpu_count()} cores, load {' '.join(load())}", flush=True)
    try:
        releases_file = os.path.join(work, "releases")
        if not os.path.exists(releases_file):
            t = time.monotonic()
            with open(releases_file + ".tmp", "w") as out:
                subprocess.run([args.seed_bin, "--data", data, "--kernels", str(args.kernels), "--versions", str(args.versions)], stdout=out, check=True, env={**os.environ, "BPFARM_LOG": "error"})
            os.rename(releases_file + ".tmp", releases_file)
            print(f"seed:    {n} objects in {time.monotonic() - t:.1f} s", flush=True)
        releases = open(releases_file).read().split()
        versions = [f"v1.{v}.0" for v in range(args.versions)]


        # A read token, created once with the registry's own CLI.
        token_file = os.path.join(work, "read-token")
        if not os.path.exists(token_file):
            out = subprocess.run([args.registry_bin, "token", "create", "--data", data, "--name", f"fleet-bench-{os.getpid()}", "--scope", "read"], capture_output=True, text=True, check=True, env={**os.environ, "BPFARM_LOG": "error"})
            with open(token_file, "w") as f:
                f.write(out.stdout.strip().splitlines()[-1])
        token = open(token_file).read().strip()


        if args.compare_check:
            out = subprocess.run([args.seed_bin, "--data", data, "--time-check"], capture_output=True, text=True, check=True, env={**os.environ, "BPFARM_LOG": "error"}).stdout
            print(f"check:   {out.strip()}", flush=True)

        results = {}
        old_data = old_copy(work, data) if args.compare_bin else None
        # sqlite's VM steps per page of each list query (load-independent),
        # now and as before the list indexes.
        rows = subprocess.run([args.seed_bin, "--data", data, "--rows-read"] + [q for _, q in list_queries(releases)]
                              + (["--old-data", old_data] if old_data else []), capture_output=True, text=True, check=True,
                              env={**os.environ, "BPFARM_LOG": "error"}).stdout
        print(rows.strip(), flush=True)
        if args.compare_bin and args.rounds:
            interleaved(args, [("old", args.compare_bin, old_data), ("new", args.registry_bin, data)], releases)
            if args.only_interleaved:
                return
        for label, binary, where in ([("old", args.compare_bin, old_data)] if args.compare_bin else []) + [("new", args.registry_bin, data)]:
            if args.compare_bin:
                print(f"--- {label}: {binary}", flush=True)
            results[label] = serve_phases(args, binary, where, releases, versions, n, work, token)
        if args.compare_bin:
            old, new = results["old"], results["new"]
            print("--- old -> new (same data, same run; for times new/old < 1 is better, for rates > 1)")
            for key, what, better in COMPARED:
                if key in old and key in new and old[key]:
                    print(f"{what:34} {old[key]:10.2f} -> {new[key]:10.2f}   new/old {new[key] / old[key]:.2f}x ({better})")
        if any(r["errors"] for r in results.values()):
            sys.exit(1)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
