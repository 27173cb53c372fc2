#!/usr/bin/env bash
# Soak test: many mixed syncs against one service; nothing may grow without bound.
#
#   cmd/soak.sh            2000 syncs, figures every 200 (release binary, built now)
#   cmd/soak.sh --quick    200 syncs, figures every 50: checks that everything works
#
# Environment:
#   SYNCS             how many requests in all (2000; 200 with --quick)
#   EVERY             print a row every this many requests (200; 50 with --quick)
#   WORKERS           requests in flight at once (4)
#   LAYER_SIZE        bytes per layer of the copied images (64 KiB; 16 KiB with --quick);
#                     the images that get cancelled have one layer 16 times as large
#   IMAGERSYNC_BIN    use this service binary instead of building the release one
#   CARGO_TARGET_DIR  where the release build goes (default target/)
#
# The mix, in turn: copies into new repositories (3 in 10), no-ops (the target already
# holds the image, 2 in 10), failures (a missing tag; a reference that does not parse),
# an asynchronous job followed to its end, a cancel (asynchronous job of a larger image,
# DELETE at once), and a copy to a new tag of an existing repository. Every answer is
# checked against what that kind must answer.
#
# Every EVERY requests one row: the service's RSS (VmRSS), its open file descriptors
# (/proc/PID/fd), the job database's size (SQLite file, and its -wal), and the latency
# of that window's requests (p50, p99; time to the answer, 202 for asynchronous ones).
# The verdict compares the last window with the second (the first includes warm-up):
# RSS, fds and the WAL must not have grown beyond noise, the database must grow by no
# more per job than it did then (it keeps every job's record until history_days), p99
# must not have grown beyond noise. Exits non-zero if any answer was wrong, or (full
# run only) the verdict fails. Everything runs on 127.0.0.1 in a temp dir removed at exit.
set -euo pipefail
cd "$(dirname "$0")/.."
. cmd/lib.sh

quick_flag "$@"
if $QUICK; then
    SYNCS="${SYNCS:-200}" EVERY="${EVERY:-50}" LAYER_SIZE="${LAYER_SIZE:-16384}"
else
    SYNCS="${SYNCS:-2000}" EVERY="${EVERY:-200}" LAYER_SIZE="${LAYER_SIZE:-65536}"
fi
WORKERS="${WORKERS:-4}"
for var in SYNCS EVERY WORKERS LAYER_SIZE; do
    [[ "${!var}" =~ ^[1-9][0-9]*$ ]] || { echo "$var must be a positive integer, not '${!var}'" >&2; exit 2; }
done
[ "$((SYNCS / EVERY))" -ge 3 ] || { echo "SYNCS must be at least 3 x EVERY (the verdict compares windows 2 and last)" >&2; exit 2; }

log() { printf '[%4ds] %s\n' "$SECONDS" "$*" >&2; }
die() {
    log "soak: ERROR: $*"
    exit 1
}

for tool in curl python3; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool is needed (apt-get install $tool)"
done
ensure_tools
service_bin || die "no service binary"

WORK="$(mktemp -d -t imagersync-soak.XXXXXX)"
PIDS=()
cleanup() {
    local pid
    trap - EXIT INT TERM
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log "starting two registries and the service ($BIN)"
start_plain_registry src
start_plain_registry dst
SVC_PASS="soak-$RANDOM$RANDOM"
cat >"$WORK/service.yaml" <<YAML
rsyncserver:
  logfile: $WORK/logs/rsync_analysis.log
  jobs:
    database: $WORK/data/jobs.sqlite3
  auth: {soak: "$SVC_PASS"}
  rsyncconfig:
    task: {retries: 0}
    auth:
      src: {registry: "$SRC_HOST", plain_http: true}
      dst: {registry: "$DST_HOST", plain_http: true}
YAML
start_service "$WORK/service.yaml"

log "running $SYNCS requests, $WORKERS at once, a row every $EVERY"
echo "command: cmd/soak.sh$($QUICK && echo ' --quick') (SYNCS=$SYNCS EVERY=$EVERY WORKERS=$WORKERS LAYER_SIZE=$LAYER_SIZE)"
echo "machine: nproc $(nproc), $(grep -m1 '^model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), load average at start $(cut -d' ' -f1-3 /proc/loadavg)"
status=0
python3 - "$SRC_HOST" "$DST_HOST" "127.0.0.1:$SVC_PORT" "soak:$SVC_PASS" "$SVC_PID" \
    "$WORK/data/jobs.sqlite3" "$SYNCS" "$EVERY" "$WORKERS" "$LAYER_SIZE" "$QUICK" <<'PY' || status=$?
import base64, hashlib, json, os, sys, threading, time, urllib.error, urllib.request

src, dst, svc, login, pid, db = sys.argv[1:7]
total, every, workers, layer = (int(a) for a in sys.argv[7:11])
quick = sys.argv[11] == "true"
auth = "Basic " + base64.b64encode(login.encode()).decode()

def call(method, url, data=None, ctype="application/json", headers=None):
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", ctype)
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    try:
        with urllib.request.urlopen(req, timeout=600) as resp:
            return resp.status, resp.read(), resp.headers
    except urllib.error.HTTPError as e:
        return e.code, e.read(), e.headers

def blob(repo, data):
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    _, _, headers = call("POST", f"http://{src}/v2/{repo}/blobs/uploads/", b"")
    location = headers["Location"]
    if location.startswith("/"):
        location = f"http://{src}{location}"
    sep = "&" if "?" in location else "?"
    call("PUT", f"{location}{sep}digest={digest}", data, "application/octet-stream")
    return {"digest": digest, "size": len(data)}

def push(repo, sizes):
    layers = [blob(repo, os.urandom(s)) for s in sizes]
    config = json.dumps({"architecture": "amd64", "os": "linux",
                         "rootfs": {"type": "layers", "diff_ids": [l["digest"] for l in layers]}}).encode()
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **blob(repo, config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", **l} for l in layers],
    }).encode()
    call("PUT", f"http://{src}/v2/{repo}/manifests/v1", manifest, "application/vnd.oci.image.manifest.v1+json")

IMAGES = 8
for i in range(IMAGES):
    push(f"soak/img{i}", [layer, layer])
push("soak/big", [16 * layer])

def sync(source, target, asynchronous=False):
    body = {"rsync_config": {"source": source, "target": target}}
    if asynchronous:
        body["async"] = True
    code, raw, _ = call("POST", f"http://{svc}/v1/image/rsync", json.dumps(body).encode(),
                        headers={"Authorization": auth})
    try:
        return code, json.loads(raw)
    except ValueError:
        return code, {}

def job_of(jid):
    code, raw, _ = call("GET", f"http://{svc}/v1/image/rsync/jobs/{jid}", headers={"Authorization": auth})
    return json.loads(raw) if code == 200 else {}

def follow(jid, limit=600):
    deadline = time.time() + limit
    while time.time() < deadline:
        job = job_of(jid)
        if job.get("state") in ("succeeded", "failed", "cancelled"):
            return job
        time.sleep(0.02)
    return {}

def status(answer):
    return (answer.get("rsync_data") or {}).get("rsync_status")

# One request of kind `n % 10`; returns (kind, seconds to the answer, ok, note).
def run(n):
    img = f"soak/img{n % IMAGES}"
    kind = ["copy", "copy", "copy", "noop", "noop", "missing", "bad", "async", "cancel", "tag"][n % 10]
    t0 = time.perf_counter()
    if kind == "copy":
        code, a = sync(f"{src}/{img}:v1", f"{dst}/soak/c{n}/app:v1")
        ok = code == 200 and status(a) == "successfully"
    elif kind == "noop":
        code, a = sync(f"{src}/{img}:v1", f"{dst}/soak/noop/{img[5:]}:v1")
        ok = code == 200 and status(a) == "successfully"
    elif kind == "missing":
        code, a = sync(f"{src}/{img}:nope", f"{dst}/soak/m{n}/app:v1")
        ok = code >= 400 and status(a) == "failed"
    elif kind == "bad":
        code, a = sync(f"{src}/Soak/Bad:v1", f"{dst}/soak/b{n}/app:v1")
        ok = code == 400 and status(a) == "unusual"
    elif kind == "tag":
        code, a = sync(f"{src}/{img}:v1", f"{dst}/soak/tags/{img[5:]}:t{n}")
        ok = code == 200 and status(a) == "successfully"
    else:
        source = f"{src}/soak/big:v1" if kind == "cancel" else f"{src}/{img}:v1"
        code, a = sync(source, f"{dst}/soak/{kind}{n}/app:v1", asynchronous=True)
        took = time.perf_counter() - t0
        jid = a.get("id")
        if code != 202 or jid is None:
            return kind, took, False, f"HTTP {code} {a}"
        if kind == "cancel":
            dcode, _, _ = call("DELETE", f"http://{svc}/v1/image/rsync/jobs/{jid}", headers={"Authorization": auth})
            job = follow(jid)
            ok = dcode in (200, 202, 409) and job.get("state") in ("cancelled", "succeeded")
            return kind, took, ok, job.get("state")
        job = follow(jid)
        return kind, took, job.get("state") == "succeeded", job.get("state")
    return kind, time.perf_counter() - t0, ok, f"HTTP {code} {status(a)}"

def rss_kib():
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0

def size(path):
    try:
        return os.path.getsize(path)
    except OSError:
        return 0

def pct(values, p):
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))] if s else 0.0

lock = threading.Lock()
next_n = 0
window = []
rows = []
wrong = []
kinds = {}
cancelled = 0

print(f"{'requests':>8} {'rss_mib':>8} {'fds':>5} {'sqlite_kib':>10} {'wal_kib':>8} {'p50_ms':>8} {'p99_ms':>8} {'wrong':>5}", flush=True)

def worker():
    global next_n, window, cancelled
    while True:
        with lock:
            if next_n >= total:
                return
            n = next_n
            next_n += 1
        kind, took, ok, note = run(n)
        with lock:
            kinds[kind] = kinds.get(kind, 0) + 1
            if kind == "cancel" and note == "cancelled":
                cancelled += 1
            if not ok:
                wrong.append(f"#{n} {kind}: {note}")
            window.append(took)
            done = sum(kinds.values())
            if done % every == 0:
                row = {
                    "requests": done, "rss": rss_kib(), "fds": len(os.listdir(f"/proc/{pid}/fd")),
                    "db": size(db), "wal": size(db + "-wal"),
                    "p50": pct(window, 50) * 1000, "p99": pct(window, 99) * 1000,
                }
                rows.append(row)
                window = []
                print(f"{done:>8} {row['rss'] / 1024:>8.1f} {row['fds']:>5} {row['db'] / 1024:>10.0f} "
                      f"{row['wal'] / 1024:>8.0f} {row['p50']:>8.1f} {row['p99']:>8.1f} {len(wrong):>5}", flush=True)

threads = [threading.Thread(target=worker) for _ in range(workers)]
for t in threads:
    t.start()
for t in threads:
    t.join()

print("mix: " + ", ".join(f"{k} {v}" for k, v in sorted(kinds.items())) + f"; cancels that stopped a job: {cancelled}")
for w in wrong[:20]:
    print("wrong answer: " + w)
second, last = rows[1], rows[-1]
per_job = lambda a, b: (b["db"] - a["db"]) / max(1, b["requests"] - a["requests"])
checks = [
    ("RSS", last["rss"] <= second["rss"] * 1.25 + 8 * 1024, f"{second['rss'] / 1024:.1f} -> {last['rss'] / 1024:.1f} MiB"),
    ("open fds", last["fds"] <= second["fds"] + 16, f"{second['fds']} -> {last['fds']}"),
    ("SQLite WAL", last["wal"] <= max(2 * second["wal"], 8 << 20), f"{second['wal'] / 1024:.0f} -> {last['wal'] / 1024:.0f} KiB"),
    ("SQLite bytes per job", per_job(rows[-2], last) <= 2 * max(per_job(rows[0], second), 1024), f"{per_job(rows[0], second):.0f} -> {per_job(rows[-2], last):.0f} B/job"),
    ("p99 latency", last["p99"] <= 2 * second["p99"] + 100, f"{second['p99']:.1f} -> {last['p99']:.1f} ms"),
]
grew = [name for name, fine, _ in checks if not fine]
for name, fine, what in checks:
    print(f"verdict {name}: {what}: {'bounded' if fine else 'GREW'}")
print("verdict: " + ("nothing grew without bound (last window vs the second)" if not grew else "grew: " + ", ".join(grew)))
if wrong:
    sys.exit(1)
if grew and not quick:
    sys.exit(3)
PY
kill -0 "$SVC_PID" 2>/dev/null || die "the service died: $(tail -n 20 "$WORK/service.log")"
curl -sf -o /dev/null "http://127.0.0.1:$SVC_PORT/check" || die "/check fails after the soak"
echo "service still healthy; peak RSS (VmHWM) $(awk '/^VmHWM:/ {printf "%.1f MiB", $2 / 1024}' "/proc/$SVC_PID/status")"
case "$status" in
    0) ;;
    1) die "some answers were wrong (listed above)" ;;
    3) die "something grew (verdict above)" ;;
    *) die "the soak driver failed (exit $status)" ;;
esac
