#!/usr/bin/env bash
# Makes a bearer token for USER, appends its SHA-256 line to TOKENS_FILE and
# prints the token (shown once; traind stores only the digest).
#
#   deploy/add-token.sh TOKENS_FILE USER [admin]
# then `kill -HUP $(pidof traind)` to load it, and on the client:
#   export TRAINCTL_TOKEN=<the printed token>
set -euo pipefail
file=${1:?usage: add-token.sh TOKENS_FILE USER [admin]}
user=${2:?usage: add-token.sh TOKENS_FILE USER [admin]}
role=${3:-}
[[ -z $role || $role == admin ]] || { echo "add-token.sh: the role may only be admin" >&2; exit 1; }
[[ $user =~ ^[A-Za-z0-9._@-]+$ ]] || { echo "add-token.sh: user names are [A-Za-z0-9._@-]" >&2; exit 1; }
token=$(openssl rand -hex 32)
digest=$(printf '%s' "$token" | sha256sum | cut -d' ' -f1)
umask 077
echo "$digest $user${role:+ $role}" >> "$file"
echo "$token"
