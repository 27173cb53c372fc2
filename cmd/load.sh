#!/usr/bin/env bash
# Load test: the health check stays fast while many syncs run at once.
#
#   cmd/load.sh            20 syncs of 20 different images (2 layers x 8 MiB) at once,
#                          while wrk hammers GET /check, from 1 s before the syncs start
#                          until the last one has answered
#   cmd/load.sh --quick    5 small images: checks that everything works
#
# Environment:
#   SYNCS             how many images, each synced by its own request, all at once (20)
#   LAYER_SIZE        bytes per layer, two layers per image (8 MiB; 64 KiB with --quick)
#   IMAGERSYNC_BIN    use this service binary instead of building the release one
#   CARGO_TARGET_DIR  where the release build goes (default target/)
#
# Prints the /check latency (p50, p99, max), its request rate and errors, every sync's
# answer and whether the target's digest equals the source's (skopeo), and the service's
# peak RSS (VmHWM). Exits non-zero if any sync or any /check request failed.
# Everything runs on 127.0.0.1 with data in a temp dir removed at exit.
set -euo pipefail
cd "$(dirname "$0")/.."
. cmd/lib.sh

quick_flag "$@"
if $QUICK; then
    SYNCS="${SYNCS:-5}" LAYER_SIZE="${LAYER_SIZE:-65536}"
else
    SYNCS="${SYNCS:-20}" LAYER_SIZE="${LAYER_SIZE:-8388608}"
fi
for var in SYNCS LAYER_SIZE; do
    [[ "${!var}" =~ ^[1-9][0-9]*$ ]] || { echo "$var must be a positive integer, not '${!var}'" >&2; exit 2; }
done

log() { printf '[%4ds] %s\n' "$SECONDS" "$*" >&2; }
die() {
    log "load: ERROR: $*"
    exit 1
}

for tool in curl python3 sha256sum; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool is needed (apt-get install $tool)"
done
ensure_tools
command -v wrk >/dev/null 2>&1 || die "wrk is needed (apt-get install wrk; cmd/test.sh installs it)"

service_bin || die "no service binary"

WORK="$(mktemp -d -t imagersync-load.XXXXXX)"
PIDS=()
cleanup() {
    local pid
    trap - EXIT INT TERM
    for pid in "${PIDS[@]}" $(jobs -p); do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}" $(jobs -p); do wait "$pid" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log "starting two registries and the service"
start_plain_registry src
start_plain_registry dst
SVC_PASS="load-$RANDOM$RANDOM"
cat >"$WORK/service.yaml" <<YAML
rsyncserver:
  logfile: $WORK/logs/rsync_analysis.log
  jobs:
    database: $WORK/jobs.sqlite3
  auth: {load: "$SVC_PASS"}
  rsyncconfig:
    auth:
      src: {registry: "$SRC_HOST", plain_http: true}
      dst: {registry: "$DST_HOST", plain_http: true}
YAML
start_service "$WORK/service.yaml"

# Images: SYNCS of them, two random layers each, pushed straight over the registry API.
log "pushing $SYNCS images of 2 x $LAYER_SIZE bytes to the source registry"
python3 - "$SRC_HOST" "$SYNCS" "$LAYER_SIZE" "$WORK/digests" <<'PY'
import hashlib, json, os, sys, urllib.request

host, count, size, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]

def call(method, url, data=b"", ctype="application/octet-stream"):
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": ctype})
    with urllib.request.urlopen(req) as resp:
        return resp.headers

def blob(repo, data):
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    location = call("POST", f"http://{host}/v2/{repo}/blobs/uploads/")["Location"]
    if location.startswith("/"):
        location = f"http://{host}{location}"
    sep = "&" if "?" in location else "?"
    call("PUT", f"{location}{sep}digest={digest}", data)
    return {"digest": digest, "size": len(data)}

with open(out, "w") as digests:
    for i in range(1, count + 1):
        repo = f"load/img{i:02d}"
        layers = [blob(repo, os.urandom(size)) for _ in range(2)]
        config = json.dumps({"architecture": "amd64", "os": "linux",
                             "rootfs": {"type": "layers", "diff_ids": [l["digest"] for l in layers]}}).encode()
        manifest = json.dumps({
            "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **blob(repo, config)},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", **l} for l in layers],
        }).encode()
        call("PUT", f"http://{host}/v2/{repo}/manifests/v1", manifest,
             "application/vnd.oci.image.manifest.v1+json")
        digests.write(f"img{i:02d} sha256:{hashlib.sha256(manifest).hexdigest()}\n")
PY

# wrk reports through this script: one parseable line, latencies in microseconds.
cat >"$WORK/report.lua" <<'LUA'
done = function(summary, latency, requests)
    local e = summary.errors
    io.write(string.format("WRK requests=%d seconds=%.3f p50=%d p99=%d max=%d connect=%d read=%d write=%d status=%d timeout=%d\n",
        summary.requests, summary.duration / 1e6, latency:percentile(50), latency:percentile(99),
        latency.max, e.connect, e.read, e.write, e.status, e.timeout))
end
LUA

log "wrk on /check; after 1 s, $SYNCS syncs at once; wrk stops when the last has answered"
echo 5 >"/proc/$SVC_PID/clear_refs" 2>/dev/null || true
# Stopped with SIGINT below, on which wrk prints its report: its window is the syncs'.
wrk -t2 -c16 -d3600s -s "$WORK/report.lua" "http://127.0.0.1:$SVC_PORT/check" >"$WORK/wrk.out" 2>&1 &
WRK_PID=$!
sleep 1
t0="$EPOCHREALTIME"
sync_pids=()
while read -r name digest; do
    curl -sS -o "$WORK/resp-$name.json" -w '%{http_code} %{time_total}' --max-time 600 \
        -u "load:$SVC_PASS" -H 'Content-Type: application/json' \
        -X POST "http://127.0.0.1:$SVC_PORT/v1/image/rsync" \
        -d "{\"rsync_config\":{\"source\":\"$SRC_HOST/load/$name:v1\",\"target\":\"$DST_HOST/load/$name:v1\"}}" \
        >"$WORK/curl-$name.out" 2>&1 &
    sync_pids+=($!)
done <"$WORK/digests"
for pid in "${sync_pids[@]}"; do wait "$pid" || true; done
syncs_wall="$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN {printf "%.2f", b - a}')"
kill -INT "$WRK_PID" 2>/dev/null || die "wrk stopped early: $(cat "$WORK/wrk.out")"
wait "$WRK_PID" || die "wrk failed: $(cat "$WORK/wrk.out")"
peak_kib="$(awk '/^VmHWM:/ {print $2}' "/proc/$SVC_PID/status")"

# Every sync: HTTP 200, "successfully", and the target's manifest digest is the source's.
correct=0
while read -r name digest; do
    code="" took=""
    read -r code took <"$WORK/curl-$name.out" || true # curl's -w line has no newline
    status="$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["rsync_data"]["rsync_status"])' \
        "$WORK/resp-$name.json" 2>/dev/null || echo "unreadable")"
    got="$(skopeo inspect --raw --tls-verify=false --no-creds "docker://$DST_HOST/load/$name:v1" 2>/dev/null |
        sha256sum | sed 's/ .*//; s/^/sha256:/')"
    verdict=WRONG
    if [ "$code" = 200 ] && [ "$status" = successfully ] && [ "$got" = "$digest" ]; then
        verdict=ok
        correct=$((correct + 1))
    fi
    echo "sync $name: HTTP $code $status in ${took:-?} s, target digest $got: $verdict"
done <"$WORK/digests"

read -r requests seconds p50 p99 max errs <<<"$(awk '/^WRK / {
    for (i = 2; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
    print v["requests"], v["seconds"], v["p50"], v["p99"], v["max"],
          v["connect"] + v["read"] + v["write"] + v["status"] + v["timeout"] }' "$WORK/wrk.out")"
[ -n "${requests:-}" ] || die "wrk printed no report: $(cat "$WORK/wrk.out")"
ms() { awk -v us="$1" 'BEGIN {printf "%.2f", us / 1000}'; }
echo "/check under load: $requests requests in $seconds s, $(awk -v n="$requests" -v s="$seconds" 'BEGIN {printf "%.0f", n / s}') req/s; latency p50 $(ms "$p50") ms, p99 $(ms "$p99") ms, max $(ms "$max") ms; failed requests: $errs"
echo "syncs: $correct of $SYNCS correct, all $SYNCS done in $syncs_wall s (wrk ran from 1 s before them to the end)"
echo "service peak RSS (VmHWM): $(awk -v k="$peak_kib" 'BEGIN {printf "%.1f", k / 1024}') MiB"
echo "machine: nproc $(nproc), $(grep -m1 '^model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), load average at end $(cut -d' ' -f1-3 /proc/loadavg)"
[ "$correct" = "$SYNCS" ] || die "$((SYNCS - correct)) of $SYNCS syncs were not correct"
[ "$errs" = 0 ] || die "$errs /check requests failed under load"
