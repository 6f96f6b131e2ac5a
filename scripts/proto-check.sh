#!/usr/bin/env bash
# The API's own rule, checked: `buf lint` over proto/, and `buf breaking`
# (WIRE_JSON: nothing renumbered, re-typed, renamed or removed without
# `reserved`) of proto/ against
#   - the last commit (HEAD), for changes not yet committed, and
#   - the proto as it was before its last committed change,
# so that a commit that breaks trainer.v1 (as re-typing device and precision
# did) fails here. buf comes from the npm registry (tests/proto, installed by
# scripts/install-deps.sh --test). Exit 77: no git history to compare with.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
buf="$root/tests/proto/node_modules/.bin/buf"
if [[ ! -x $buf ]]; then
  echo "proto-check: $buf is missing: run scripts/install-deps.sh --test" >&2
  exit 1
fi
cd "$root/proto"
"$buf" lint
echo "proto-check: buf lint: clean"
if ! git -C "$root" rev-parse --verify -q HEAD >/dev/null; then
  echo "proto-check: SKIPPED buf breaking: $root is not a git checkout with history" >&2
  exit 77
fi
"$buf" breaking --against "$root/.git#ref=HEAD,subdir=proto"
echo "proto-check: buf breaking against HEAD: compatible"
last="$(git -C "$root" log -1 --format=%H -- proto)"
before="$(git -C "$root" rev-parse -q --verify "$last~1" || true)"
if [[ -z $before ]]; then
  echo "proto-check: SKIPPED buf breaking against the previous proto: the history stops at $last" >&2
  exit 77
fi
"$buf" breaking --against "$root/.git#ref=$before,depth=1000,subdir=proto"
echo "proto-check: buf breaking of ${last:0:12} against ${before:0:12}: compatible"
