#!/usr/bin/env bash
# First-setup certificates for traind: a CA, a server certificate for the
# given names, and a client certificate (for mutual TLS).
#
#   deploy/make-certs.sh DIR [SERVER_NAME ...]     (default names: localhost 127.0.0.1)
#
# Then:
#   traind --listen=0.0.0.0:50051 --tls-cert=DIR/server.crt --tls-key=DIR/server.key \
#          [--tls-client-ca=DIR/ca.crt] --tokens-file=tokens
#   trainctl --tls-ca=DIR/ca.crt [--tls-cert=DIR/client.crt --tls-key=DIR/client.key] ...
set -euo pipefail
dir=${1:?usage: make-certs.sh DIR [SERVER_NAME ...]}
shift
names=("$@")
[[ ${#names[@]} -gt 0 ]] || names=(localhost 127.0.0.1)
mkdir -p "$dir"
cd "$dir"
san=""
for n in "${names[@]}"; do
  if [[ $n =~ ^[0-9.]+$ || $n == *:* ]]; then san+="IP:$n,"; else san+="DNS:$n,"; fi
done
san=${san%,}
umask 077
openssl req -x509 -newkey rsa:2048 -nodes -days 825 -subj "/CN=traind CA" \
  -keyout ca.key -out ca.crt 2> /dev/null
openssl req -newkey rsa:2048 -nodes -subj "/CN=${names[0]}" \
  -keyout server.key -out server.csr 2> /dev/null
openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 825 \
  -extfile <(printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth\n' "$san") \
  -out server.crt 2> /dev/null
openssl req -newkey rsa:2048 -nodes -subj "/CN=trainctl" \
  -keyout client.key -out client.csr 2> /dev/null
openssl x509 -req -in client.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 825 \
  -extfile <(printf 'extendedKeyUsage=clientAuth\n') -out client.crt 2> /dev/null
rm -f server.csr client.csr ca.srl
chmod 644 ca.crt server.crt client.crt
echo "wrote $dir/{ca,server,client}.{crt,key} (server names: ${names[*]})"
