#!/usr/bin/env python3
"""Benchmark: air-gapped delivery of a registry with N objects.

Publishes N stand-in objects of SIZE random bytes to a fresh
bpfarm-registry through /v1, then measures, each with its wall time and
peak RSS (GNU time): `bundle` of the whole data folder (and the tar's
size against the blobs it carries), `import` of it into an empty folder,
the second `import` (nothing new), `mirror` from the registry's `/v1`
(the baseline) and from its `/v2` as an OCI registry (`oci://`, then again:
nothing new), and `gc --dry-run`. Prints one line
per step.

    bench/airgap.py [--objects 100] [--size 1048576] [--registry-bin PATH]
"""
import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_measured(args):
    with tempfile.NamedTemporaryFile() as rep:
        t0 = time.monotonic()
        out = subprocess.run(["/usr/bin/time", "-f", "%M", "-o", rep.name] + args, capture_output=True, text=True)
        wall = time.monotonic() - t0
        if out.returncode != 0:
            raise SystemExit(f"bench: {' '.join(args)} failed:\n{out.stdout}{out.stderr}")
        rss = int(open(rep.name).read().strip().splitlines()[-1]) / 1024
    return wall, rss, out.stdout.strip()


def request(method, url, body, token, content_type):
    req = urllib.request.Request(url, data=body, method=method)
    req.add_header("Authorization", f"Bearer {token}")
    req.add_header("Content-Type", content_type)
    with urllib.request.urlopen(req, timeout=60) as r:
        return r.status


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--objects", type=int, default=100)
    ap.add_argument("--size", type=int, default=1 << 20)
    ap.add_argument("--registry-bin", default=os.path.join(ROOT, "target/release/bpfarm-registry"))
    a = ap.parse_args()
    reg = a.registry_bin
    with tempfile.TemporaryDirectory() as tmp:
        data = os.path.join(tmp, "data")
        token = subprocess.run([reg, "token", "create", "--name", "b", "--scope", "push", "--data", data],
                               capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        srv = subprocess.Popen([reg, "serve", "--listen", "127.0.0.1:0", "--data", data],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        try:
            url = None
            for line in srv.stdout:
                if line.startswith("listening on "):
                    url = line.split()[-1]
                    break
            if url is None:
                raise SystemExit("bench: the registry did not start")
            for i in range(a.objects):
                release = f"6.1.0-{i}-amd64"
                body = os.urandom(a.size)
                digest = "sha256:" + hashlib.sha256(body).hexdigest()
                request("PUT", f"{url}/v1/blobs/{digest}", body, token, "application/octet-stream")
                meta = {
                    "kernel_release": release, "arch": "x86_64", "version": "v0.1.0",
                    "file_name": f"tracee.bpf.{release.replace('.', '_')}.v0_1_0.o",
                    "digest": digest, "size": len(body), "build_mode": "headers", "sources": [],
                    "program_digest": "sha256:" + hashlib.sha256(b"p").hexdigest(),
                    "compiler": {"clang": "clang"}, "flags": {"clang": [], "llc": []},
                    "built_at": "2026-11-27T00:00:00Z",
                }
                request("POST", f"{url}/v1/objects", json.dumps(meta).encode(), token, "application/json")
            # mirror from the registry's /v1 (the baseline) and from its /v2
            # as any OCI registry (oci://), each into an empty folder.
            w1, rss1, out1 = run_measured([reg, "mirror", "--data", os.path.join(tmp, "m1"), "--from", url])
            print(f"mirror --from http:// (baseline): {w1:.2f} s, peak RSS {rss1:.0f} MiB [{out1}]")
            oci = "oci://" + url.split("://", 1)[1] + "/bpfarm"
            w2, rss2, out2 = run_measured([reg, "mirror", "--data", os.path.join(tmp, "m2"), "--from", oci])
            print(f"mirror --from oci://: {w2:.2f} s ({w2 / w1:.2f}x the baseline), peak RSS {rss2:.0f} MiB [{out2}]")
            w3, rss3, out3 = run_measured([reg, "mirror", "--data", os.path.join(tmp, "m2"), "--from", oci])
            print(f"mirror --from oci:// again (nothing new): {w3:.2f} s, peak RSS {rss3:.0f} MiB [{out3}]")
        finally:
            srv.terminate()
            srv.wait()
        tar = os.path.join(tmp, "bundle.tar")
        w, rss, out = run_measured([reg, "bundle", "--data", data, "--out", tar])
        size = os.path.getsize(tar)
        carried = a.objects * a.size
        print(f"bundle: {a.objects} objects of {a.size} bytes: {w:.2f} s, peak RSS {rss:.0f} MiB; "
              f"tar {size / 2**20:.1f} MiB ({size / carried:.4f}x the objects' bytes) [{out}]")
        target = os.path.join(tmp, "target")
        w, rss, out = run_measured([reg, "import", "--data", target, tar])
        print(f"import (into an empty registry): {w:.2f} s, peak RSS {rss:.0f} MiB [{out}]")
        w, rss, out = run_measured([reg, "import", "--data", target, tar])
        print(f"import again (nothing new): {w:.2f} s, peak RSS {rss:.0f} MiB [{out}]")
        w, rss, out = run_measured([reg, "gc", "--data", target, "--dry-run", "--keep-versions", "1"])
        print(f"gc --dry-run: {w:.2f} s, peak RSS {rss:.0f} MiB [{out.splitlines()[-1]}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
