#!/usr/bin/env python3
"""Benchmark: object download from bpfarm-registry against Debian's
docker-registry (CNCF distribution 2.8) serving the same bytes as a blob.

Both run on loopback in this one run; the same load client (wrk) hits
each blob URL with the same settings. Prints requests/s, p99 latency, the
ratio, and each server's peak RSS (VmHWM) under the load.

    bench/registry.py [--seconds 10] [--connections 64] [--object PATH]

Soak: bpfarm-registry alone under mixed load for a while, with a slowloris
and unauthenticated uploads running against it the whole time: /v1
downloads (verified), /v1 publishes and replaces, /v2 pulls (tag -> index
-> manifest -> blob, verified). Prints the error count, requests per kind,
and the registry's RSS and open descriptors at the start and the end; ends
with `bpfarm-registry fsck`. Exits 1 on any error. CI runs a short one.

    bench/registry.py --soak 300 [--slowloris 300] [--registry-bin PATH]
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


def wrk(url, seconds, conns):
    out = subprocess.run(["wrk", "-t2", f"-c{conns}", f"-d{seconds}s", "--latency", url], capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[p99.group(2)]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)|Socket errors: (.*)", out)
    return rps, float(p99.group(1)) * scale, errors.group(0) if errors else None


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


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--object", help="object file to serve (default: 132 KiB of pseudo-random bytes, a tracer object's size)")
    ap.add_argument("--registry-bin", default=os.path.join(ROOT, "target/release/bpfarm-registry"))
    ap.add_argument("--soak", type=int, metavar="SECONDS", help="run the soak for this long instead of the comparison")
    ap.add_argument("--slowloris", type=int, default=300, help="slowloris connections during the soak")
    args = ap.parse_args()
    if args.soak:
        return soak(args)
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
