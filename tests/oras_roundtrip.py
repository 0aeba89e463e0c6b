#!/usr/bin/env python3
"""The oras Python SDK against a bpfarm registry (used by tests/tests/oci.rs).

    oras_roundtrip.py push HOST REPO:TAG FILE TOKEN   # push FILE as bpfarm's layer
    oras_roundtrip.py pull HOST REF OUTDIR [TOKEN]    # pull; prints the files written
"""
import os
import sys

import oras.client


def client(host, token):
    c = oras.client.OrasClient(hostname=host, insecure=True, auth_backend="basic")
    if token:
        c.login(username="bpfarm", password=token, hostname=host, tls_verify=False)
    return c


def main():
    cmd, host = sys.argv[1], sys.argv[2]
    if cmd == "push":
        ref, path, token = sys.argv[3], sys.argv[4], sys.argv[5]
        c = client(host, token)
        os.chdir(os.path.dirname(os.path.abspath(path)))
        resp = c.push(
            target=f"{host}/{ref}",
            files=[f"{os.path.basename(path)}:application/vnd.bpfarm.tracee.bpf.object.v1+elf"],
            disable_path_validation=True,
        )
        print(resp.status_code)
    elif cmd == "pull":
        ref, outdir = sys.argv[3], sys.argv[4]
        c = client(host, sys.argv[5] if len(sys.argv) > 5 else None)
        for f in c.pull(target=f"{host}/{ref}", outdir=outdir):
            print(f)
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main()
