#!/usr/bin/env bash
# Stop one node started by node-up.sh (destroy-time local-exec): SIGTERM, which makes the node
# stop taking requests, drain in-flight ones and leave the mesh gracefully; then wait up to
# NODE_STOP_S seconds before SIGKILL. The data dir is kept (docs/operations.md).
set -euo pipefail
: "${NODE_NAME:?}" "${NODE_DATA_DIR:?}"
NODE_STOP_S="${NODE_STOP_S:-60}"
pidfile="$NODE_DATA_DIR/node.pid"

if [ ! -f "$pidfile" ]; then
  echo "[$NODE_NAME] not running (no $pidfile)"
  exit 0
fi
pid="$(cat "$pidfile")"
# Only signal our own node: the pid must still be a meridian with this data dir.
if ! [ "$pid" -gt 0 ] 2>/dev/null || ! tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "--data-dir $NODE_DATA_DIR"; then
  echo "[$NODE_NAME] not running (pid $pid is gone or not this node)"
  rm -f "$pidfile"
  exit 0
fi

start=$(date +%s%N)
kill -TERM "$pid" 2>/dev/null || true
echo "[$NODE_NAME] SIGTERM sent to pid $pid: draining and leaving the mesh"
deadline=$(( $(date +%s) + NODE_STOP_S ))
while kill -0 "$pid" 2>/dev/null && [ -e "/proc/$pid" ] && ! grep -q '^State:.*Z' "/proc/$pid/status" 2>/dev/null; do
  if [ "$(date +%s)" -ge "$deadline" ]; then
    echo "[$NODE_NAME] still running after ${NODE_STOP_S}s: SIGKILL" >&2
    kill -KILL "$pid" 2>/dev/null || true
    break
  fi
  sleep 0.1
done
rm -f "$pidfile"
echo "[$NODE_NAME] stopped in $(( ($(date +%s%N) - start) / 1000000 )) ms"
