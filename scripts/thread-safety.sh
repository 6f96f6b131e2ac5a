#!/usr/bin/env bash
# Checks the lock annotations (ABSL_GUARDED_BY, ABSL_EXCLUSIVE_LOCKS_REQUIRED,
# ...) with clang's -Wthread-safety -Werror, the leveldb way, over every
# target: each translation unit of the build in build/ (its
# compile_commands.json, from scripts/build.sh) whose own source or any
# project header it includes takes a lock or declares an annotation, with
# that unit's own flags (a unity batch's sources each with the batch's).
# Syntax only: the analysis runs on the syntax tree,
# so objects would add nothing but another half hour of compiling LibTorch
# code on two cores. Units with no lock anywhere in their include closure
# cannot have a finding; the count of each kind is printed.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build}
CLANG=${CLANG:-clang++}
[[ -f $BUILD/compile_commands.json ]] || { echo "thread-safety: run scripts/build.sh first" >&2; exit 1; }
/usr/bin/python3 - "$BUILD/compile_commands.json" "$CLANG" <<'PY'
import json, os, re, shlex, subprocess, sys
from concurrent.futures import ThreadPoolExecutor
commands, clang = json.load(open(sys.argv[1])), sys.argv[2]
root = os.getcwd()
LOCKY = re.compile(r"Mutex|GUARDED_BY|LOCKS_REQUIRED|LOCKS_EXCLUDED|LOCK_RETURNED|ACQUIRED_(BEFORE|AFTER)")
INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"', re.M)
cache = {}
def closure_has_locks(path, seen):
    # Whether `path` or a project header it includes (transitively) is about locks.
    if path in seen:
        return False
    seen.add(path)
    if path not in cache:
        try:
            text = open(path, errors="replace").read()
        except OSError:
            text = ""
        cache[path] = (bool(LOCKY.search(text)), INCLUDE.findall(text))
    locky, includes = cache[path]
    if locky:
        return True
    for inc in includes:
        header = os.path.join(root, inc)
        if os.path.isfile(header) and closure_has_locks(header, seen):
            return True
    return False
def wanted(f):
    rel = os.path.relpath(f, root)
    return not rel.startswith("build") and closure_has_locks(f, set())
def check(c):
    args = shlex.split(c["command"])
    # The compiler follows its launcher (cmake -E env ... ccache).
    first = next(i for i, a in enumerate(args)
                 if os.path.basename(a) in ("c++", "g++", "clang++") or re.fullmatch(r".*[gc]\+\+(-\d+)?", a))
    args = args[first:]
    keep, skip = [], False
    for i, a in enumerate(args[1:], 1):
        if skip:
            skip = False
            continue
        if a in ("-o", "-c"):
            skip = a == "-o"
            continue
        # GCC's precompiled LibTorch header (CMakeLists.txt): clang cannot
        # read it, and each source includes what it uses itself.
        if a == "-include" and i + 1 < len(args) and args[i + 1].endswith("cmake_pch.hxx"):
            skip = True
            continue
        keep.append(a)
    # Only the thread-safety findings: the build itself checks the rest.
    flags = [a for a in keep if a not in (c["file"], c.get("batch")) and not a.startswith("-W")]
    cmd = [clang, "-fsyntax-only"] + flags + [
        "-Wno-everything", "-Wthread-safety", "-Wthread-safety-beta",
        "-Werror=thread-safety", "-Werror=thread-safety-beta", c["file"]]
    p = subprocess.run(cmd, cwd=c["directory"], capture_output=True, text=True)
    return c["file"], p.returncode, p.stderr
# A unity build (CMakeLists.txt) compiles batches: build/.../Unity/unity_N_cxx.cxx
# includes its sources by absolute path. Each source is checked on its own,
# with its batch's flags.
UNITY_MEMBER = re.compile(r'^#include "(/[^"]+)"', re.M)
def members(c):
    if "/Unity/unity_" not in c["file"]:
        return [c]
    text = open(os.path.join(c["directory"], c["file"])).read()
    return [dict(c, file=f, batch=c["file"]) for f in UNITY_MEMBER.findall(text)]
everything = {m["file"]: m for c in commands for m in members(c)}
files = {f: c for f, c in everything.items() if wanted(f)}
with ThreadPoolExecutor(os.cpu_count()) as pool:
    results = list(pool.map(check, files.values()))
bad = [r for r in results if r[1] != 0]
for f, rc, err in bad:
    print(err, file=sys.stderr)
print(f"thread-safety: {len(results)} of {len(everything)} translation units hold locks in their "
      f"include closure and were checked; {len(bad)} with findings")
sys.exit(1 if bad else 0)
PY
