#!/usr/bin/env bash
# Start one detached `meridian up` (called by terraform_data.node's create-time local-exec).
# In: NODE_* (below) and the node's MERIDIAN_* settings in the environment.
# Issues the node certificate from the cluster CA, starts the node with its own data dir,
# waits for GET /readyz, then reports which other regions it sees in the mesh. On failure it
# stops the node it started and exits non-zero with the node's log tail (never hangs:
# bounded by NODE_READY_S).
# When a node already runs on the data dir (a replacement: Terraform creates the new instance
# before it destroys the old one), the new one starts with `meridian up --takeover` and takes
# the running node's HTTP listener over in place (blue/green, no refused connection); this
# waits until the old process exited and the new one is ready (bounded by NODE_READY_S plus
# NODE_STOP_S, which covers the old node's game-server drain).
set -euo pipefail

: "${NODE_BIN:?}" "${NODE_NAME:?}" "${NODE_DATA_DIR:?}" "${NODE_CA_DIR:?}" "${NODE_CERT_DIR:?}"
: "${NODE_PROBE_HOST:?}" "${NODE_PROBE_PORT:?}"
NODE_READY_S="${NODE_READY_S:-60}"
NODE_CERT_DAYS="${NODE_CERT_DAYS:-365}"
NODE_PEER_COUNT="${NODE_PEER_COUNT:-0}"
here="$(cd "$(dirname "$0")" && pwd)"
log="$NODE_DATA_DIR/node.log"
pidfile="$NODE_DATA_DIR/node.pid"
inst_dir="$NODE_DATA_DIR/instances"
NODE_INSTANCE="${NODE_INSTANCE:-manual}"
NODE_STOP_S="${NODE_STOP_S:-60}"
say() { echo "[$NODE_NAME] $*"; }

# The node's log tail, short enough for Terraform's error message (it keeps about the last
# 8 KiB of a provisioner's output): its errors and warnings, then its last lines, each cut.
log_tail() {
  {
    echo "----- errors and warnings in $log -----"
    grep -E '"level":"(ERROR|WARN)"|^[a-z]+: ' "$log" 2>/dev/null | tail -n 8 | cut -c1-300 || true
    echo "----- last 15 lines of $log -----"
    tail -n 15 "$log" 2>/dev/null | cut -c1-200 || true
    echo "-----"
  } >&2
}

# GET a path on the node; prints "STATUS BODY" (HTTP/1.0 over bash's /dev/tcp: no curl needed).
http_get() {
  local path="$1" status body
  { exec 3<>"/dev/tcp/$NODE_PROBE_HOST/$NODE_PROBE_PORT"; } 2>/dev/null || return 1
  printf 'GET %s HTTP/1.0\r\nHost: %s\r\nConnection: close\r\n\r\n' "$path" "$NODE_PROBE_HOST" >&3
  local reply
  reply="$(timeout 3 cat <&3 || true)"
  exec 3<&- 3>&- || true
  status="$(printf '%s' "$reply" | head -n 1 | cut -d' ' -f2)"
  body="$(printf '%s' "$reply" | sed '1,/^\r\{0,1\}$/d')"
  printf '%s %s' "${status:-0}" "$body"
}

mkdir -p "$NODE_DATA_DIR" "$inst_dir"

# The pid of a live meridian on this data dir (from node.pid), if any.
alive() {
  local p="$1"
  [ -n "$p" ] && [ "$p" -gt 0 ] 2>/dev/null \
    && tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null | grep -q -- "--data-dir $NODE_DATA_DIR" \
    && ! grep -q '^State:.*Z' "/proc/$p/status" 2>/dev/null
}
old_pid="$(cat "$pidfile" 2>/dev/null || true)"
alive "$old_pid" || old_pid=""

if [ ! -x "$NODE_BIN" ]; then
  echo "[$NODE_NAME] meridian binary not found or not executable: $NODE_BIN (cargo build --release -p meridian)" >&2
  exit 1
fi

# The node certificate, from the cluster CA (reissued at every start: picks up a rotated CA).
if ! out="$("$NODE_BIN" certs issue --node "$NODE_NAME" --ca-dir "$NODE_CA_DIR" --out "$NODE_CERT_DIR" --days "$NODE_CERT_DAYS" 2>&1)"; then
  echo "[$NODE_NAME] issuing the node certificate failed: $out" >&2
  exit 1
fi
say "$out"

# The node's settings are exactly the MERIDIAN_* variables Terraform declared: drop any other
# MERIDIAN_* inherited from the shell running terraform (the node refuses unknown keys).
for v in $(compgen -e); do
  case "$v" in
    MERIDIAN_*) case " ${NODE_ENV_KEYS:-} " in *" $v "*) ;; *) unset "$v" ;; esac ;;
  esac
done

# Start detached: own session, no inherited pipes (Terraform waits for those to close).
# $1: empty, or --takeover to replace the running node in place.
start() {
  echo "=== $(date -u +%FT%TZ) terraform: starting $NODE_NAME (release ${NODE_RELEASE:-?})${1:+ with $1 of pid $old_pid} ===" >>"$log"
  setsid "$NODE_BIN" up $1 --region "$NODE_NAME" --data-dir "$NODE_DATA_DIR" </dev/null >>"$log" 2>&1 &
  pid=$!
  echo "$pid" >"$inst_dir/$NODE_INSTANCE.pid"
  # node.pid names the data dir's current process: after a takeover, once the old one exited.
  [ -n "$1" ] || echo "$pid" >"$pidfile"
  say "started pid $pid${1:+ ($1 of pid $old_pid)}, data dir $NODE_DATA_DIR, log $log"
}

# Stop only the process this run started (never the node it was to take over).
fail() {
  log_tail
  if alive "$pid"; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do alive "$pid" || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$inst_dir/$NODE_INSTANCE.pid"
  [ "$(cat "$pidfile" 2>/dev/null)" != "$pid" ] || rm -f "$pidfile"
  echo "[$NODE_NAME] $* (full log: $log)" >&2
  exit 1
}

mode=""
[ -z "$old_pid" ] || mode="--takeover"
start "$mode"
deadline=$(( $(date +%s) + NODE_READY_S ))
[ -z "$mode" ] || deadline=$(( deadline + NODE_STOP_S ))
while :; do
  if ! kill -0 "$pid" 2>/dev/null; then
    wait "$pid" 2>/dev/null && rc=0 || rc=$?
    if [ -n "$mode" ] && { [ "$rc" = 3 ] || [ "$rc" = 4 ]; }; then
      # 3: nothing to take over (the old node stopped meanwhile, or it is a release from
      # before takeovers, without a takeover socket); 4: refused (e.g. the HTTP address
      # changed). A still running old node is stopped (drain, leave), then this one starts.
      if alive "$old_pid"; then
        say "takeover not possible (exit $rc, see $log); stopping pid $old_pid, then starting"
        NODE_INSTANCE="" NODE_STOP_S="$NODE_STOP_S" "$here/node-down.sh" || true
      else
        say "takeover: no running node any more; starting normally"
      fi
      mode="" && start ""
      continue
    fi
    fail "meridian exited during start-up (exit code $rc)"
  fi
  if [ -n "$mode" ] && alive "$old_pid"; then
    : # the old node still serves (and answers /readyz) while it hands over
  elif [ "$(http_get /readyz 2>/dev/null | cut -d' ' -f1)" = "200" ]; then
    break
  fi
  if [ "$(date +%s)" -ge "$deadline" ]; then
    fail "not ready within ${NODE_READY_S}s (GET http://$NODE_PROBE_HOST:$NODE_PROBE_PORT/readyz)"
  fi
  sleep 0.1
done
echo "$pid" >"$pidfile"
say "ready: http://$NODE_PROBE_HOST:$NODE_PROBE_PORT${mode:+ (took over from pid $old_pid)}"
# Forget the pid files of instances whose process is gone (Terraform runs no destroy-time
# provisioner for the instance a create_before_destroy replacement deposed).
for f in "$inst_dir"/*.pid; do
  if [ -e "$f" ] && [ "$f" != "$inst_dir/$NODE_INSTANCE.pid" ] && ! alive "$(cat "$f")"; then rm -f "$f"; fi
done

# Mesh: wait (bounded, never failing) until every seed region is seen alive, then say which
# regions are not reachable so an apply during an outage names them.
[ "$NODE_PEER_COUNT" -gt 0 ] || exit 0
statuses=""
for _ in $(seq 1 30); do
  body="$(http_get /regions || true)"
  body="${body#* }"
  statuses="$(printf '%s' "$body" | grep -o '"region":"[^"]*"[^{}]*"status":"[^"]*"' \
    | sed -E 's/"region":"([^"]*)".*"status":"([^"]*)"/\1=\2/' || true)"
  alive="$(printf '%s\n' "$statuses" | grep -c '=alive$' || true)"
  [ "$alive" -ge "$NODE_PEER_COUNT" ] && break
  sleep 0.2
done
unreachable="$(printf '%s\n' "$statuses" | grep -v -e '=alive$' -e '=self$' -e '^$' || true)"
say "mesh: $(printf '%s' "$statuses" | tr '\n' ' ')"
if [ -n "$unreachable" ]; then
  say "WARNING: region(s) not reachable in the mesh yet: $(printf '%s' "$unreachable" | tr '\n' ' ')(this node keeps retrying its seeds)"
fi
