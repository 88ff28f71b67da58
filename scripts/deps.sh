#!/usr/bin/env bash
# Installs the Debian packages consentd needs, only those missing, so that
# `make run` and `make test` work as one command on a fresh Debian 12 machine.
set -euo pipefail
pkgs=(gcc g++ make pkg-config clang libclang-rt-14-dev
      liburing-dev libxxhash-dev libjemalloc-dev libprotobuf-c-dev
      protobuf-c-compiler protobuf-compiler liburcu-dev libmicrohttpd-dev
      libssl-dev libjansson-dev libbenchmark-dev libsystemd-dev help2man
      dpkg-dev adduser systemd
      hyperfine redis-server redis-tools
      python3-protobuf python3-redis python3-pytest curl strace prometheus postfix
      nats-server libnats-dev libnghttp2-dev libcurl4-openssl-dev
      python3-grpcio python3-grpc-tools nghttp2-client)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' \
    || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
echo "deps: installing ${missing[*]}"
sudo_cmd=()
[ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
"${sudo_cmd[@]}" apt-get update -qq
# postfix (the policy e2e test runs its own instance in a temp directory):
# "No configuration" leaves /etc/postfix without a main.cf, so installing it
# neither asks questions nor starts a system mail daemon.
if printf '%s\n' "${missing[@]}" | grep -qx postfix; then
  echo "postfix postfix/main_mailer_type select No configuration" \
    | "${sudo_cmd[@]}" debconf-set-selections
fi
DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq \
  --no-install-recommends "${missing[@]}" >/dev/null
