#!/usr/bin/env bash
# Checks the lock annotations (ABSL_GUARDED_BY, ABSL_EXCLUSIVE_LOCKS_REQUIRED,
# ...) with clang's -Wthread-safety -Werror over the code that takes locks:
# the job core, the RPC layer, the daemon, the shared code and the tests'
# fake engine. Syntax only (no objects): it reuses the flags of the build in
# build/ (scripts/build.sh writes its compile_commands.json).
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build}
CLANG=${CLANG:-clang++}
[[ -f $BUILD/compile_commands.json ]] || { echo "thread-safety: run scripts/build.sh first" >&2; exit 1; }
/usr/bin/python3 - "$BUILD/compile_commands.json" "$CLANG" <<'PY'
import json, os, shlex, subprocess, sys
from concurrent.futures import ThreadPoolExecutor
commands, clang = json.load(open(sys.argv[1])), sys.argv[2]
root = os.getcwd()
dirs = ("server/jobs/", "server/rpc/", "server/", "common/", "tests/jobs/fake_engine")
def wanted(f):
    rel = os.path.relpath(f, root)
    return rel.startswith(dirs) and not rel.startswith("server/train/")
def check(c):
    args = shlex.split(c["command"])
    keep, skip = [], False
    for a in args[1:]:
        if skip:
            skip = False
            continue
        if a in ("-o", "-c"):
            skip = a == "-o"
            continue
        keep.append(a)
    # Only the thread-safety findings: the build itself checks the rest.
    flags = [a for a in keep if a != c["file"] and not a.startswith("-W")]
    cmd = [clang, "-fsyntax-only"] + flags + [
        "-Wno-everything", "-Wthread-safety", "-Wthread-safety-beta",
        "-Werror=thread-safety", "-Werror=thread-safety-beta", c["file"]]
    p = subprocess.run(cmd, cwd=c["directory"], capture_output=True, text=True)
    return c["file"], p.returncode, p.stderr
files = {c["file"]: c for c in commands if wanted(c["file"])}
with ThreadPoolExecutor(os.cpu_count()) as pool:
    results = list(pool.map(check, files.values()))
bad = [r for r in results if r[1] != 0]
for f, rc, err in bad:
    print(err, file=sys.stderr)
print(f"thread-safety: {len(results)} files checked, {len(bad)} with findings")
sys.exit(1 if bad else 0)
PY
