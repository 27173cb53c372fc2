#!/usr/bin/env bash
# Two imagersync replicas on one PostgreSQL job database, end to end on this machine:
#   starts a throw-away PostgreSQL 15 (Debian's binaries, in a temp dir, as an unprivileged
#   user), two registries (the source behind cmd/delay_proxy.py, which slows its answers),
#   and two replicas A and B sharing the database. It submits jobs through both and shows
#   the work spread, then sends one slow job to A, kills A with SIGKILL half-way through
#   the copy and shows B taking the job over once A's lease lapsed (the job's log line),
#   checks the copy with skopeo, and removes everything on exit. Takes about a minute.
#
#   cmd/demo-cluster.sh          run it (builds the release binary first)
#   IMAGERSYNC_BIN=path cmd/demo-cluster.sh   run it with that binary instead
set -euo pipefail
cd "$(dirname "$0")/.."
. cmd/lib.sh

case "${1:-}" in
    "") ;;
    -h | --help)
        sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
        exit 0
        ;;
    *)
        echo "unknown argument: $1 (try --help)" >&2
        exit 2
        ;;
esac

PG_BIN=/usr/lib/postgresql/15/bin
SMALL_JOBS=6
BIG_KIB=2048    # the slow job's one layer
RATE_KIB=192    # how fast the source's answers flow through the proxy, per connection
LEASE=5         # rsyncserver.jobs.lease_seconds: short, so the takeover comes quickly

step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
die() {
    echo "demo-cluster FAILED: $*" >&2
    exit 1
}

for tool in python3 curl; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool is needed"
done
ensure_tools
[ -x "$PG_BIN/postgres" ] || die "no PostgreSQL 15 in $PG_BIN (apt-get install postgresql-15)"
service_bin

WORK="$(mktemp -d -t imagersync-cluster.XXXXXX)"
PIDS=()
PG_PID=
cleanup() {
    local i
    # Replicas and registries first (newest first), then PostgreSQL with a fast shutdown.
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
        kill "${PIDS[i]}" 2>/dev/null || true
        wait "${PIDS[i]}" 2>/dev/null || true
    done
    if [ -n "$PG_PID" ]; then
        kill -INT "$PG_PID" 2>/dev/null || true
        wait "$PG_PID" 2>/dev/null || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

step "Starting PostgreSQL 15 in $WORK/pg"
# initdb and postgres refuse to run as root: as root, run them as the `postgres` user the
# Debian package creates (setpriv execs, so $! is the server itself).
as_pg=()
if [ "$(id -u)" -eq 0 ]; then
    id postgres >/dev/null 2>&1 || die "no postgres user to run PostgreSQL as (root is refused)"
    as_pg=(setpriv --reuid=postgres --regid=postgres --clear-groups)
    chmod 711 "$WORK"
fi
mkdir -p "$WORK/pg"
[ "${#as_pg[@]}" -eq 0 ] || chown postgres:postgres "$WORK/pg"
"${as_pg[@]}" "$PG_BIN/initdb" -D "$WORK/pg/data" -U postgres -A trust -E UTF8 \
    --no-locale --no-sync >"$WORK/pg/initdb.log" 2>&1 || {
    cat "$WORK/pg/initdb.log" >&2
    die "initdb failed"
}
PG_PORT="$(free_port)"
"${as_pg[@]}" "$PG_BIN/postgres" -D "$WORK/pg/data" -p "$PG_PORT" \
    -c listen_addresses=127.0.0.1 -c unix_socket_directories="$WORK/pg" \
    -c fsync=off -c synchronous_commit=off >"$WORK/pg/postgres.log" 2>&1 &
PG_PID=$!
for _ in $(seq 1 200); do
    "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT" && break
    kill -0 "$PG_PID" 2>/dev/null || break
    sleep 0.1
done
"$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT" || {
    tail -n 20 "$WORK/pg/postgres.log" >&2
    die "PostgreSQL did not start"
}
"$PG_BIN/createdb" -h 127.0.0.1 -p "$PG_PORT" -U postgres imagersync
DB_URL="postgres://postgres@127.0.0.1:$PG_PORT/imagersync"
psql_q() { "$PG_BIN/psql" -X -q -h 127.0.0.1 -p "$PG_PORT" -U postgres -d imagersync "$@"; }
echo "PostgreSQL: $DB_URL (pid $PG_PID)"

step "Starting two registries; the source answers through a slow proxy ($RATE_KIB KiB/s)"
start_plain_registry src
start_plain_registry dst
PROXY_PORT="$(free_port)"
DELAY_PROXY_KIB_PER_S="$RATE_KIB" python3 cmd/delay_proxy.py "$PROXY_PORT" "$SRC_HOST" 0 >"$WORK/proxy.log" 2>&1 &
PIDS+=($!)
wait_http "http://127.0.0.1:$PROXY_PORT/v2/" "$WORK/proxy.log" "$!" || die "the proxy did not start"
PROXY_HOST="127.0.0.1:$PROXY_PORT"
echo "source $SRC_HOST (read through $PROXY_HOST), target $DST_HOST"

step "Pushing $SMALL_JOBS small images and one of $BIG_KIB KiB to the source"
python3 - "$WORK/layout" "$SMALL_JOBS" "$BIG_KIB" <<'PY'
# An OCI image layout with tags small0.. (one 16 KiB layer each) and big (one layer of
# BIG_KIB KiB), all random, so no blob is shared.
import gzip, hashlib, io, json, os, sys, tarfile
root, small, big_kib = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
os.makedirs(f"{root}/blobs/sha256")
def blob(data):
    digest = hashlib.sha256(data).hexdigest()
    with open(f"{root}/blobs/sha256/{digest}", "wb") as f:
        f.write(data)
    return {"digest": f"sha256:{digest}", "size": len(data)}
def image(tag, size):
    payload = os.urandom(size)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("data.bin"); info.size = size
        tar.addfile(info, io.BytesIO(payload))
    layer_tar = buf.getvalue()
    layer = blob(gzip.compress(layer_tar, compresslevel=1))
    config = blob(json.dumps({
        "architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(layer_tar).hexdigest()]},
    }).encode())
    manifest = blob(json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **config},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", **layer}],
    }).encode())
    return {"mediaType": "application/vnd.oci.image.manifest.v1+json", **manifest,
            "annotations": {"org.opencontainers.image.ref.name": tag}}
manifests = [image(f"small{n}", 16 * 1024) for n in range(small)]
manifests.append(image("big", big_kib * 1024))
with open(f"{root}/index.json", "w") as f:
    json.dump({"schemaVersion": 2, "manifests": manifests}, f)
with open(f"{root}/oci-layout", "w") as f:
    json.dump({"imageLayoutVersion": "1.0.0"}, f)
PY
for tag in $(seq -f 'small%g' 0 $((SMALL_JOBS - 1))) big; do
    skopeo --insecure-policy copy --quiet --dest-tls-verify=false \
        "oci:$WORK/layout:$tag" "docker://$SRC_HOST/demo/app:$tag"
done

step "Starting replicas A and B on the one database (lease $LEASE s)"
SVC_USER=demo
SVC_PASS="demo-$RANDOM$RANDOM"
declare -A PORT PID REPLICA
start_replica() {
    local name="$1" cfg="$WORK/$1.yaml"
    cat >"$cfg" <<YAML
config:
  tools: {source: "https://github.com/"}
rsyncserver:
  logfile: $WORK/logs/$name-analysis.log
  jobs:
    database: "$DB_URL"
    lease_seconds: $LEASE
  auth: {$SVC_USER: $SVC_PASS}
  rsyncconfig:
    auth:
      src: {registry: "$PROXY_HOST", insecure: true}
      dst: {registry: "$DST_HOST", insecure: true}
    task: {proc_num: 5, retries: 2}
YAML
    chmod 600 "$cfg" # it holds passwords
    PORT[$name]="$(free_port)"
    "$BIN" --address "127.0.0.1:${PORT[$name]}" --configFile "$cfg" >"$WORK/$name.log" 2>&1 &
    PID[$name]=$!
    PIDS+=("${PID[$name]}")
    wait_http "http://127.0.0.1:${PORT[$name]}/check" "$WORK/$name.log" "${PID[$name]}" ||
        die "replica $name did not start"
    # The id it writes into the job rows it holds, from its start-up line.
    REPLICA[$name]="$(grep -o 'replica=[^ ]*' "$WORK/$name.log" | head -n 1 | cut -d= -f2 | tr -d '"')"
    echo "replica $name: http://127.0.0.1:${PORT[$name]} (pid ${PID[$name]}, id ${REPLICA[$name]}," \
        "ready: $(curl -s "http://127.0.0.1:${PORT[$name]}/ready"))"
}
start_replica A
start_replica B

# api NAME METHOD PATH [BODY]: calls replica NAME as the demo user; prints the body.
api() {
    local url="http://127.0.0.1:${PORT[$1]}$3"
    if [ $# -ge 4 ]; then
        curl -s -u "$SVC_USER:$SVC_PASS" -X "$2" "$url" -H 'content-type: application/json' -d "$4"
    else
        curl -s -u "$SVC_USER:$SVC_PASS" -X "$2" "$url"
    fi
}
# submit NAME TAG: an async job copying demo/app:TAG, sent to replica NAME; prints its id.
submit() {
    local body="{\"async\":true,\"rsync_config\":{\"source\":\"$PROXY_HOST/demo/app:$2\",\"target\":\"$DST_HOST/demo/app:$2\"}}"
    api "$1" POST /v1/image/rsync "$body" | python3 -c 'import json, sys; print(json.load(sys.stdin)["id"])'
}
# field JSON EXPR: evaluates EXPR on the job JSON `j` (Python).
field() { python3 -c "import json, sys; j = json.loads(sys.argv[1]); print($2)" "$1"; }
# wait_done NAME ID: polls the job through replica NAME until it ended; prints its state.
wait_done() {
    local job state
    for _ in $(seq 1 1200); do
        job="$(api "$1" GET "/v1/image/rsync/jobs/$2")"
        state="$(field "$job" 'j["state"]')"
        case "$state" in succeeded | failed | cancelled)
            echo "$state"
            return 0
            ;;
        esac
        sleep 0.1
    done
    die "job $2 did not end: $job"
}

step "Submitting $SMALL_JOBS jobs, alternately to A and B"
IDS=()
for n in $(seq 0 $((SMALL_JOBS - 1))); do
    name=A
    [ $((n % 2)) -eq 1 ] && name=B
    id="$(submit "$name" "small$n")"
    IDS+=("$id")
    echo "job $id (demo/app:small$n) sent to $name"
done
for id in "${IDS[@]}"; do
    # Read through the other replica than the one that took it, for good measure.
    state="$(wait_done B "$id")"
    [ "$state" = succeeded ] || die "job $id ended $state"
done
echo "the job rows (who ran each):"
psql_q -c "SELECT id, state, owner, attempt FROM jobs ORDER BY id"
RAN_A="$(psql_q -tA -c "SELECT count(*) FROM jobs WHERE owner = '${REPLICA[A]}' AND state = 'succeeded'")"
RAN_B="$(psql_q -tA -c "SELECT count(*) FROM jobs WHERE owner = '${REPLICA[B]}' AND state = 'succeeded'")"
echo "spread: replica A ran $RAN_A jobs, replica B ran $RAN_B jobs"
[ "$RAN_A" -gt 0 ] && [ "$RAN_B" -gt 0 ] || die "the work did not spread"

step "A slow job ($BIG_KIB KiB at $RATE_KIB KiB/s) sent to A; A is killed half-way"
BIG="$(submit A big)"
echo "job $BIG sent to A"
for _ in $(seq 1 600); do
    job="$(api B GET "/v1/image/rsync/jobs/$BIG")"
    done_bytes="$(field "$job" '(j.get("progress") or {}).get("bytes_done", 0)')"
    [ "$done_bytes" -ge $((256 * 1024)) ] && break
    sleep 0.1
done
[ "$done_bytes" -ge $((256 * 1024)) ] || die "job $BIG never got going: $job"
echo "B shows A's progress from the job's row: $done_bytes bytes copied, state $(field "$job" 'j["state"]')"
kill -9 "${PID[A]}"
wait "${PID[A]}" 2>/dev/null || true
echo "killed replica A (kill -9, pid ${PID[A]}) mid-transfer"
psql_q -c "SELECT id, state, owner, attempt, lease_expires_at > now() AS lease_runs FROM jobs WHERE id = $BIG"
echo "B takes the job over once A's lease ($LEASE s) lapses..."
state="$(wait_done B "$BIG")"
job="$(api B GET "/v1/image/rsync/jobs/$BIG")"
[ "$state" = succeeded ] || die "job $BIG ended $state: $job"
psql_q -c "SELECT id, state, owner, attempt FROM jobs WHERE id = $BIG"
echo "job $BIG's log:"
field "$job" 'j["result"]["rsync_data"]["rsync_info"]' | sed 's/^/  /'
TAKEOVER="$(field "$job" 'j["result"]["rsync_data"]["rsync_info"].splitlines()[0]')"
echo "takeover: $TAKEOVER"
case "$TAKEOVER" in
    *"taken over from replica ${REPLICA[A]}"*) ;;
    *) die "the job's log does not say B took it over from A" ;;
esac

step "What landed: skopeo inspect of the slow job's target"
digest() { skopeo inspect --raw --tls-verify=false --no-creds "docker://$1" | sha256sum | cut -d' ' -f1; }
SRC_DIGEST="sha256:$(digest "$SRC_HOST/demo/app:big")"
DST_DIGEST="sha256:$(digest "$DST_HOST/demo/app:big")"
echo "source $SRC_DIGEST"
echo "target $DST_DIGEST"
[ "$SRC_DIGEST" = "$DST_DIGEST" ] || die "the target differs from the source"
echo "slow job: target digest equals the source's"

step "demo-cluster: OK (work spread A $RAN_A / B $RAN_B; job $BIG taken over by B after A was killed)"
