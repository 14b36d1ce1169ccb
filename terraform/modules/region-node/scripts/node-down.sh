#!/usr/bin/env bash
# Stop one node started by node-up.sh (destroy-time local-exec): SIGTERM, which makes the node
# stop taking requests, drain in-flight ones and leave the mesh gracefully; then wait up to
# NODE_STOP_S seconds before SIGKILL. The data dir is kept (docs/operations.md).
#
# Each Terraform instance records its own process in instances/NODE_INSTANCE.pid; node.pid
# names the data dir's current process. After a blue/green replacement the old instance's
# process has already exited (the new one took its listener over), so its destroy stops
# nothing and never the new process.
set -euo pipefail
: "${NODE_NAME:?}" "${NODE_DATA_DIR:?}"
NODE_STOP_S="${NODE_STOP_S:-60}"
NODE_INSTANCE="${NODE_INSTANCE:-}"
inst_dir="$NODE_DATA_DIR/instances"

if [ -n "$NODE_INSTANCE" ] && [ -f "$inst_dir/$NODE_INSTANCE.pid" ]; then
  pidfile="$inst_dir/$NODE_INSTANCE.pid"
else
  # No per-instance file (an instance from before them, or a manual stop): the data dir's
  # current process, unless another instance owns it (it took this one's place).
  pidfile="$NODE_DATA_DIR/node.pid"
  if [ -n "$NODE_INSTANCE" ] && [ -f "$pidfile" ] \
    && cat "$inst_dir"/*.pid 2>/dev/null | grep -qx "$(cat "$pidfile")"; then
    echo "[$NODE_NAME] not running (its process was taken over by a newer instance)"
    exit 0
  fi
fi

if [ ! -f "$pidfile" ]; then
  echo "[$NODE_NAME] not running (no $pidfile)"
  exit 0
fi
pid="$(cat "$pidfile")"
forget() {
  rm -f "$pidfile"
  if [ -f "$NODE_DATA_DIR/node.pid" ] && [ "$(cat "$NODE_DATA_DIR/node.pid")" = "$pid" ]; then
    rm -f "$NODE_DATA_DIR/node.pid"
  fi
}
# Only signal our own node: the pid must still be a live meridian with this data dir.
if ! [ "$pid" -gt 0 ] 2>/dev/null || ! tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "--data-dir $NODE_DATA_DIR" \
  || grep -q '^State:.*Z' "/proc/$pid/status" 2>/dev/null; then
  echo "[$NODE_NAME] not running (pid $pid is gone or not this node)"
  forget
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
forget
echo "[$NODE_NAME] stopped in $(( ($(date +%s%N) - start) / 1000000 )) ms"
