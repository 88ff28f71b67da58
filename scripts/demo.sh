#!/usr/bin/env bash
# make run: a 1M-record demo. Generates a synthetic snapshot into data/demo
# (once), builds the data directory from it (when missing, broken or older
# than the snapshot), starts consentd on the default ports, waits until it
# is ready, shows three example checks with their real answers (records
# picked from the snapshot), then serves in the foreground until Ctrl-C.
set -euo pipefail

build=${1:-build}
cd "$(dirname "$0")/.."
ctl=$build/consentctl
srv=$build/consentd
data=data/demo
snap=$data/snapshot.bin
dir=$data/dir
records=1000000
rpc=127.0.0.1:7700 resp_port=7701 http=127.0.0.1:7702

for b in "$ctl" "$srv"; do
  [ -x "$b" ] || { echo "demo: $b is not built (make BUILD=$build all)" >&2; exit 1; }
done
mkdir -p "$data"

if [ ! -s "$snap" ]; then
  echo "demo: generating $records synthetic records into $snap"
  "$ctl" gen --records "$records" --seed 1 --out "$snap.tmp"
  mv "$snap.tmp" "$snap"
fi
if [ ! -d "$dir" ] || [ "$snap" -nt "$dir" ] || ! "$ctl" verify "$dir" >/dev/null 2>&1; then
  echo "demo: building the data directory $dir"
  rm -rf "$dir"
  "$ctl" build --snapshot "$snap" --out "$dir"
  touch "$dir"
fi

# The default ports, so the commands below are the documented ones. No
# probe first: consentd's own bind says whether they are free (at once,
# --bind-wait-ms 0), and what it bound comes from its --ports-file.
ports=$data/ports
rm -f "$ports"
echo "demo: starting consentd (rpc $rpc, resp 127.0.0.1:$resp_port, http $http)"
"$srv" --data-dir "$dir" --rpc "$rpc" --resp "127.0.0.1:$resp_port" --http "$http" \
  --ports-file "$ports" --bind-wait-ms 0 &
pid=$!
# Background jobs of a script ignore SIGINT, so Ctrl-C is forwarded; the
# EXIT trap stops the server if this script fails before the final wait.
stop() { kill -TERM "$pid" 2>/dev/null || true; }
trap stop INT TERM EXIT

ready=0 bound=0
for _ in $(seq 1 600); do
  kill -0 "$pid" 2>/dev/null || { wait "$pid" || true
    echo "demo: consentd exited during start-up (a port in use? another consentd?)" >&2; exit 1; }
  if [ $bound -eq 0 ] && [ -s "$ports" ]; then
    rpc=$(awk '$1 == "rpc" { print $2 }' "$ports")
    http=$(awk '$1 == "http" { print $2 }' "$ports")
    resp_port=$(awk '$1 == "resp" { sub(/.*:/, "", $2); print $2 }' "$ports")
    bound=1
  fi
  if [ $bound -eq 1 ] && curl -fsS -o /dev/null "http://$http/readyz" 2>/dev/null; then ready=1; break; fi
  sleep 0.1
done
[ $ready -eq 1 ] || { echo "demo: consentd not ready after 60 s" >&2; exit 1; }

# Real ONAY records: a phone (MESAJ), an e-mail (EPOSTA).
mapfile -t picks < <(/usr/bin/python3 scripts/rpc_client.py sample "$snap" 1)
phone=() email=()
for line in "${picks[@]}"; do
  read -r -a f <<<"$line"
  case "${f[2]}" in
    MESAJ) phone=("${f[@]}") ;;
    EPOSTA) email=("${f[@]}") ;;
  esac
done
[ ${#phone[@]} -eq 4 ] && [ ${#email[@]} -eq 4 ] || {
  echo "demo: could not pick example records from $snap" >&2; exit 1; }

# Prints a command as one would type it (quoting what the shell would
# misread, like the '&' of a URL), then runs it.
show() {
  local a line='$'
  for a in "$@"; do
    if [[ $a =~ ^[A-Za-z0-9_./:@+=,-]+$ ]]; then line+=" $a"; else line+=" '$a'"; fi
  done
  printf '\n%s\n' "$line"
  "$@" || true
}
echo
echo "consentd is serving $records records. Try:"
show redis-cli -p "$resp_port" CHECK "${phone[0]}" "${phone[1]}" MESAJ
show curl -s "http://$http/v1/check?recipient=%2B${phone[0]#+}&brand_code=${phone[1]}&channel=MESAJ"
echo
show scripts/rpc_client.py --rpc "$rpc" check "${email[0]}" "${email[1]}" EPOSTA
echo
echo "metrics: curl -s http://$http/metrics    stats: scripts/rpc_client.py stats"
echo "consentd runs in the foreground (pid $pid); Ctrl-C stops it."

trap stop INT TERM
trap - EXIT
rc=0
while kill -0 "$pid" 2>/dev/null; do
  wait "$pid" && rc=0 || rc=$?
done
echo "demo: consentd exited $rc"
exit "$rc"
