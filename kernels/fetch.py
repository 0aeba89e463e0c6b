#!/usr/bin/env python3
"""Fetch the Debian kernel header packages a matrix names, with `apt-get download`.

For every `[[kernel]]` entry of a matrix TOML this downloads the flavour
package and the packages it needs to compile against (its `linux-headers-*-common*`
and `linux-kbuild-*` dependencies, read from the archive's control data, never
guessed from names) into one cache folder. Files already there are kept, so a
second run downloads nothing. arm64 entries turn on `dpkg --add-architecture
arm64` (and refresh the package lists) the first time they are needed.

    kernels/fetch.py kernels/default.toml --cache ~/.cache/bpfarm/debs
"""
import argparse
import os
import re
import subprocess
import sys
import tomllib


def sh(*args, capture=True):
    proc = subprocess.run(args, capture_output=capture, text=True)
    if proc.returncode != 0:
        err = proc.stderr.strip() if capture else ""
        raise SystemExit(f"fetch: `{' '.join(args)}` failed ({proc.returncode}): {err}")
    return proc.stdout if capture else ""


def ensure_arch(arch, state):
    native = sh("dpkg", "--print-architecture").strip()
    if arch == native or arch in state["foreign"]:
        return
    foreign = sh("dpkg", "--print-foreign-architectures").split()
    if arch not in foreign:
        print(f"fetch: enabling dpkg architecture {arch}", file=sys.stderr)
        sh("dpkg", "--add-architecture", arch)
        sh("apt-get", "update", "-qq")
    state["foreign"].add(arch)


def control(pkg, arch):
    """The archive's control stanza of pkg for arch (newest candidate)."""
    out = sh("apt-cache", "show", "--no-all-versions", f"{pkg}:{arch}")
    if not out.strip():
        # Architecture: all packages (the -common ones) answer only as :all.
        out = sh("apt-cache", "show", "--no-all-versions", f"{pkg}:all")
    if not out.strip():
        raise SystemExit(f"fetch: {pkg} ({arch}) is not in the package lists; run apt-get update")
    fields, key = {}, None
    for line in out.splitlines():
        if not line.strip():
            break
        if line[0].isspace() and key:
            fields[key] += " " + line.strip()
        elif ":" in line:
            key, _, val = line.partition(":")
            fields[key] = val.strip()
    return fields


def header_deps(fields):
    """The -common and kbuild packages a flavour package depends on."""
    deps = []
    for alt in fields.get("Depends", "").split(","):
        # An alternative group: take its first member, without the version.
        name = alt.split("|")[0].strip().split(" ")[0]
        if re.match(r"^linux-headers-.*-common(-rt)?$", name) or name.startswith("linux-kbuild-"):
            deps.append(name)
    return deps


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("matrix", help="matrix TOML, e.g. kernels/debian-bookworm.toml")
    ap.add_argument("--cache", default=os.path.join(os.environ.get("BPFARM_CACHE", os.path.expanduser("~/.cache/bpfarm")), "debs"),
                    help="download folder (default: $BPFARM_CACHE/debs or ~/.cache/bpfarm/debs)")
    ap.add_argument("--arch", action="append", help="only entries of this Debian arch (repeatable)")
    args = ap.parse_args()

    with open(args.matrix, "rb") as f:
        matrix = tomllib.load(f)
    kernels = matrix.get("kernel", [])
    if not kernels:
        raise SystemExit(f"fetch: {args.matrix} has no [[kernel]] entries")
    os.makedirs(args.cache, exist_ok=True)
    have = set(os.listdir(args.cache))

    state = {"foreign": set()}
    wanted = {}  # (name, arch) -> (version, deb arch)
    for k in kernels:
        arch = k["arch"]
        if args.arch and arch not in args.arch:
            continue
        ensure_arch(arch, state)
        fields = control(k["package"], arch)
        wanted[(k["package"], arch)] = (fields["Version"], fields["Architecture"])
        for dep in header_deps(fields):
            dep_fields = control(dep, arch)
            wanted[(dep, arch)] = (dep_fields["Version"], dep_fields["Architecture"])

    todo = []
    for (name, arch), (version, deb_arch) in sorted(wanted.items()):
        # apt-get names files <name>_<version with ':' as %3a>_<arch>.deb
        fname = f"{name}_{version.replace(':', '%3a')}_{deb_arch}.deb"
        if fname not in have:
            todo.append(f"{name}:{deb_arch}" if deb_arch != "all" else name)
            have.add(fname)
    print(f"fetch: {len(wanted)} packages for {len(kernels)} kernels; {len(todo)} to download into {args.cache}", file=sys.stderr)
    # One apt-get call per batch keeps it fast; apt-get download writes into the cwd.
    for i in range(0, len(todo), 20):
        batch = todo[i:i + 20]
        proc = subprocess.run(["apt-get", "download", "-q", *batch], cwd=args.cache)
        if proc.returncode != 0:
            raise SystemExit(f"fetch: apt-get download failed for {batch}")
    print("fetch: done", file=sys.stderr)


if __name__ == "__main__":
    main()
