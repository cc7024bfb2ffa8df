#!/usr/bin/env bash
# The README's first commands, as a user on a fresh machine types them: `make install`, then
# `make run` in one terminal and `troupe ctl …` in another; `kill -HUP` reloads. Run by
# `make smoke` (and CI). Every wait is bounded.
set -euo pipefail
cd "$(dirname "$0")/../.."

prefix=$(mktemp -d)
runtime=$(mktemp -d)
log="$runtime/node.log"
node=""
worker=""
cleanup() {
    if [ -n "$worker" ] && kill -0 "$worker" 2>/dev/null; then kill -KILL "$worker" 2>/dev/null || true; fi
    if [ -n "$node" ] && kill -0 "$node" 2>/dev/null; then kill -KILL "$node" 2>/dev/null || true; fi
    rm -rf "$prefix" "$runtime"
}
trap cleanup EXIT
fail() { echo "smoke: $*" >&2; echo "--- node log:" >&2; cat "$log" >&2 || true; exit 1; }

make install PREFIX="$prefix" >/dev/null
export PATH="$prefix/bin:$PATH"
export XDG_RUNTIME_DIR="$runtime"
command -v troupe | grep -q "^$prefix/bin/troupe$" || fail "troupe is not on PATH after make install"

# `make run` runs `troupe run` on the embedded default.
troupe run >"$log" 2>&1 &
node=$!
tries=0

until troupe ctl status >/dev/null 2>&1; do
    kill -0 "$node" 2>/dev/null || fail "the node exited"
    [ $((tries += 1)) -lt 300 ] || fail "ctl status never answered"
    sleep 0.1
done
troupe ctl status | grep -q "supervisor running" || fail "ctl status does not show the supervisor"

tries=0
until [ "$(troupe call echo hello 2>/dev/null)" = "hello" ]; do
    [ $((tries += 1)) -lt 100 ] || fail "troupe call echo hello never answered hello"
    sleep 0.1
done

# The node offers the broker under its own resource, with its endpoints.
tries=0
until troupe cluster lookup broker | grep -q "majordomo=tcp://127.0.0.1:7500"; do
    [ $((tries += 1)) -lt 100 ] || fail "cluster lookup broker does not show the broker's endpoints"
    sleep 0.1
done
[ "$(troupe call echo hello --beacon tcp://127.0.0.1:7400)" = "hello" ] || fail "call --beacon"

# A worker that finds the broker through the beacon joins it.
troupe echo-worker --service echo --beacon tcp://127.0.0.1:7400 >"$runtime/worker.log" 2>&1 &
worker=$!
tries=0
until [ "$(troupe ctl broker --json | python3 -c 'import json,sys; print(sum(len(s["worker_list"]) for s in json.load(sys.stdin)["services"]))')" -ge 2 ]; do
    [ $((tries += 1)) -lt 100 ] || fail "the discovering echo worker never joined the broker"
    sleep 0.1
done
kill -TERM "$worker"
wait "$worker" || fail "the discovering echo worker did not leave cleanly"
worker=""

before=$(troupe ctl service echo --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["pid"])')
troupe ctl restart echo | grep -q "echo: restarted (pid" || fail "ctl restart echo"
after=$(troupe ctl service echo --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["pid"])')
[ "$before" != "$after" ] || fail "restart kept pid $before"

tries=0
until [ "$(troupe ctl logs echo -n 5 | wc -l)" -ge 1 ]; do
    [ $((tries += 1)) -lt 100 ] || fail "ctl logs echo -n 5 printed nothing"
    sleep 0.1
done
[ "$(troupe ctl logs echo -n 5 | wc -l)" -le 5 ] || fail "ctl logs -n 5 printed more than 5 lines"

kill -HUP "$node"
tries=0
until grep -q "configuration reloaded" "$log"; do
    [ $((tries += 1)) -lt 100 ] || fail "SIGHUP did not reload"
    sleep 0.1
done
troupe ctl status >/dev/null || fail "the node does not answer after SIGHUP"

kill -TERM "$node"
status=0
wait "$node" || status=$?
node=""
[ "$status" = 0 ] || fail "the node exited with $status"
echo "smoke: README commands work"
