#!/usr/bin/env bash
# Benchmark: imagersync against skopeo on the same images, and against a plain-curl floor.
#
#   cmd/bench.sh            full run: RUNS (default 3) runs of every scenario, ~3 GiB of images
#   RUNS=5 cmd/bench.sh     more runs per tool and scenario
#   cmd/bench.sh --quick    one run, tiny images: checks that everything works (< 1 minute)
#
# Environment:
#   RUNS              runs per tool and scenario (default 3; 1 with --quick)
#   SCENARIOS         which scenarios to run (default "big many multi noop fanin huge mirror wan")
#   WAN_DELAYS        wan: milliseconds each request is held (default "20 50"; "20" with --quick)
#   PROC_NUM          the service's task.proc_num (default 6 = skopeo's parallel blob copies)
#   IMAGERSYNC_BIN    use this service binary instead of building the release one
#   CARGO_TARGET_DIR  where the release build goes (default target/)
#
# Everything runs on 127.0.0.1: two docker-registry instances (source, target) and the
# service, on free ports, with their data in one temp dir that is removed at exit. The
# images are deterministic (AES-CTR of zeros with fixed keys), so digests are identical on
# every run and every machine. The target registry is restarted with empty storage before
# every measured run (except in noop, where the target must already have the image).
# doc/perf.md explains the scenarios and columns and holds the numbers of one full run.
set -euo pipefail
cd "$(dirname "$0")/.."
. cmd/lib.sh

quick_flag "$@"

if $QUICK; then RUNS="${RUNS:-1}"; else RUNS="${RUNS:-3}"; fi
PROC_NUM="${PROC_NUM:-6}"
ALL_SCENARIOS="big many multi noop fanin huge mirror wan"
SCENARIOS="${SCENARIOS:-$ALL_SCENARIOS}"
for s in $SCENARIOS; do
    case " $ALL_SCENARIOS " in *" $s "*) ;; *)
        echo "unknown scenario '$s' in SCENARIOS (known: $ALL_SCENARIOS)" >&2
        exit 2
        ;;
    esac
done
wants() { case " $SCENARIOS " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }
[[ "$RUNS" =~ ^[1-9][0-9]*$ ]] || { echo "RUNS must be a positive integer, not '$RUNS'" >&2; exit 2; }
[[ "$PROC_NUM" =~ ^[1-9][0-9]*$ ]] || { echo "PROC_NUM must be a positive integer, not '$PROC_NUM'" >&2; exit 2; }
if $QUICK; then WAN_DELAYS="${WAN_DELAYS:-20}"; else WAN_DELAYS="${WAN_DELAYS:-20 50}"; fi
for d in $WAN_DELAYS; do
    [[ "$d" =~ ^[1-9][0-9]*$ ]] || { echo "WAN_DELAYS must hold positive integers (ms), not '$d'" >&2; exit 2; }
done

KIB=1024
MIB=$((1024 * 1024))
if $QUICK; then
    BIG_LAYERS=8 BIG_SIZE=$((256 * KIB))
    MANY_LAYERS=20 MANY_SIZE=$((16 * KIB))
    MULTI_PLATFORMS=4 MULTI_LAYERS=3 MULTI_SIZE=$((256 * KIB))
    FANIN_IMAGES=8 FANIN_LAYERS=2 FANIN_SIZE=$((256 * KIB))
    HUGE_SIZE=$((8 * MIB))
    MIRROR_TAGS=12
else
    BIG_LAYERS=8 BIG_SIZE=$((128 * MIB))
    MANY_LAYERS=200 MANY_SIZE=$((256 * KIB))
    MULTI_PLATFORMS=4 MULTI_LAYERS=3 MULTI_SIZE=$((32 * MIB))
    FANIN_IMAGES=8 FANIN_LAYERS=2 FANIN_SIZE=$((32 * MIB))
    HUGE_SIZE=$((1024 * MIB))
    MIRROR_TAGS=300
fi
# mirror: every tag shares one base layer and has its own small layer and config.
MIRROR_BASE=$((1 * MIB)) MIRROR_OWN=$((16 * KIB))

log() { printf '[%4ds] %s\n' "$SECONDS" "$*" >&2; }
die() {
    log "bench: ERROR: $*"
    exit 1
}

# ---------------------------------------------------------------------------------------
# Tools
for tool in curl python3 openssl sha256sum ps awk; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool is needed (apt-get install $tool)"
done
ensure_tools
if [ ! -x /usr/bin/time ]; then
    command -v apt-get >/dev/null 2>&1 || die "GNU time (/usr/bin/time) is needed: install the 'time' package"
    log "installing time (apt-get) for /usr/bin/time"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq time >&2 ||
        die "could not install the 'time' package (GNU time, /usr/bin/time)"
fi
/usr/bin/time -f '%e' true 2>/dev/null || die "/usr/bin/time is not GNU time (needs -f)"

service_bin || die "no service binary"
if [ -n "${IMAGERSYNC_BIN:-}" ]; then
    BIN_WHAT="$BIN (IMAGERSYNC_BIN, not built here)"
else
    BIN_WHAT="$BIN (release)"
fi

# ---------------------------------------------------------------------------------------
# Processes and clean-up
WORK="$(mktemp -d -t imagersync-bench.XXXXXX)"
SRC_PID="" DST_PID="" SVC_PID="" PROXY_PIDS=""

# kill_tree PID: PID and everything it started (background pipelines of the floor).
kill_tree() {
    local pid="$1" child
    for child in $(ps -o pid= --ppid "$pid" 2>/dev/null || true); do
        kill_tree "$child"
    done
    kill "$pid" 2>/dev/null || true
}
cleanup() {
    local pid
    trap - EXIT INT TERM
    for pid in $SVC_PID $PROXY_PIDS $DST_PID $SRC_PID $(jobs -p); do
        kill_tree "$pid"
    done
    for pid in $SVC_PID $PROXY_PIDS $DST_PID $SRC_PID $(jobs -p); do
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# start_registry NAME PORT: a docker-registry with filesystem storage in $WORK/NAME/data;
# prints its pid. Storage is wiped by stopping it and removing the data dir.
write_registry_config() {
    local name="$1" port="$2" dir="$WORK/$1"
    mkdir -p "$dir"
    cat >"$dir/config.yml" <<YAML
version: 0.1
log: {level: error, accesslog: {disabled: true}}
storage: {filesystem: {rootdirectory: $dir/data}, delete: {enabled: true}}
http: {addr: 127.0.0.1:$port, secret: bench-$name}
YAML
}
start_src() {
    write_registry_config src "$SRC_PORT"
    docker-registry serve "$WORK/src/config.yml" >>"$WORK/src/registry.log" 2>&1 &
    SRC_PID=$!
    wait_http "http://$SRC_HOST/v2/" "$WORK/src/registry.log" "$SRC_PID" || die "the source registry did not start"
}
# reset_target: stop the target registry, remove its storage, start it again, empty.
reset_target() {
    if [ -n "$DST_PID" ]; then
        kill "$DST_PID" 2>/dev/null || true
        wait "$DST_PID" 2>/dev/null || true
        DST_PID=""
    fi
    rm -rf "$WORK/dst/data"
    docker-registry serve "$WORK/dst/config.yml" >>"$WORK/dst/registry.log" 2>&1 &
    DST_PID=$!
    wait_http "http://$DST_HOST/v2/" "$WORK/dst/registry.log" "$DST_PID" || die "the target registry did not start"
}

SRC_PORT="$(free_port)"
SRC_HOST="127.0.0.1:$SRC_PORT"
DST_PORT="$(free_port)"
while [ "$DST_PORT" = "$SRC_PORT" ]; do DST_PORT="$(free_port)"; done
DST_HOST="127.0.0.1:$DST_PORT"
write_registry_config dst "$DST_PORT"

# wan: both registries behind cmd/delay_proxy.py, which holds every request D ms before
# passing it on (one round trip of a distant registry; see doc/perf.md). One pair of
# proxies per delay, started once; both tools go through the same ones.
declare -A WAN_SRC WAN_DST
wan_entries=""
if wants wan; then
    for d in $WAN_DELAYS; do
        for side in src dst; do
            port="$(free_port)"
            if [ "$side" = src ]; then up="$SRC_HOST"; WAN_SRC[$d]="127.0.0.1:$port"; else up="$DST_HOST"; WAN_DST[$d]="127.0.0.1:$port"; fi
            python3 cmd/delay_proxy.py "$port" "$up" "$d" >>"$WORK/proxy.log" 2>&1 &
            PROXY_PIDS="$PROXY_PIDS $!"
            wan_entries+="      wan${d}_$side: {registry: \"127.0.0.1:$port\", plain_http: true}"$'\n'
        done
    done
fi
# The hosts the measured requests name: the registries themselves, or wan's proxies.
REQ_SRC="$SRC_HOST" REQ_DST="$DST_HOST"

SVC_USER=bench
SVC_PASS="bench-$RANDOM$RANDOM"
cat >"$WORK/service.yaml" <<YAML
rsyncserver:
  logfile: $WORK/logs/rsync_analysis.log
  jobs:
    database: $WORK/jobs.sqlite3
  auth: {$SVC_USER: "$SVC_PASS"}
  rsyncconfig:
    auth:
      src: {registry: "$SRC_HOST", plain_http: true}
      dst: {registry: "$DST_HOST", plain_http: true}
${wan_entries}    task: {proc_num: $PROC_NUM, retries: 2, max_transfers: 16}
YAML
chmod 600 "$WORK/service.yaml"

start_service() {
    SVC_PORT="$(free_port)"
    "$BIN" --address "127.0.0.1:$SVC_PORT" --configFile "$WORK/service.yaml" >>"$WORK/service.log" 2>&1 &
    SVC_PID=$!
    wait_http "http://127.0.0.1:$SVC_PORT/check" "$WORK/service.log" "$SVC_PID" || die "the service did not start"
}
stop_service() {
    kill "$SVC_PID" 2>/dev/null || true
    wait "$SVC_PID" 2>/dev/null || true
    SVC_PID=""
}
# Each scenario starts with a fresh service process, so what one scenario leaves in the
# service's memory (the allocator keeps freed memory) does not count in the next one.
restart_service() {
    stop_service
    start_service
}

# ---------------------------------------------------------------------------------------
# Machine facts
git_commit="$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)"
[ -n "$(git status --porcelain 2>/dev/null)" ] && git_commit="$git_commit (+ uncommitted changes)"
cpu_model="$(grep -m1 '^model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
mem_total="$(awk '/^MemTotal:/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo)"
echo "# imagersync benchmark"
echo
echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC')"
echo "- commit: $git_commit"
echo "- binary: $BIN_WHAT"
echo "- mode: $($QUICK && echo 'quick (tiny images)' || echo full), RUNS=$RUNS, service task.proc_num=$PROC_NUM, max_transfers=16"
echo "- nproc: $(nproc); CPU: ${cpu_model:-unknown}; memory: $mem_total"
echo "- kernel: $(uname -sr)"
echo "- $(docker-registry --version 2>&1 | head -n1)"
echo "- $(skopeo --version 2>&1 | head -n1)"
echo "- $(curl --version | head -n1 | cut -d' ' -f1-2); $(openssl version)"
echo "- load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
echo

# ---------------------------------------------------------------------------------------
# Images: deterministic OCI layouts, pushed once to the source registry
log "starting the registries and the service"
start_src
reset_target
start_service

cat >"$WORK/mkimages.py" <<'PY'
# Writes deterministic OCI image layouts. Layer bytes: an uncompressed tar holding one
# file of AES-128-CTR keystream (openssl enc of zeros, key and iv from the layer's seed),
# sized so the layer blob is exactly the requested size. For each image NAME it writes
# LAYOUT/NAME (the layout, tag v1), NAME.blobs (one "digest size" line per distinct blob:
# layers and configs) and NAME.digest (the top manifest's digest).
import hashlib, json, os, subprocess, sys, tarfile

out, spec = sys.argv[1], json.loads(sys.argv[2])
CHUNK = 1 << 20
CREATED = "2024-01-01T00:00:00Z"

def keystream(seed, n):
    h = hashlib.sha256(seed.encode()).digest()
    head = subprocess.Popen(["head", "-c", str(n), "/dev/zero"], stdout=subprocess.PIPE)
    enc = subprocess.Popen(["openssl", "enc", "-aes-128-ctr", "-nosalt",
                            "-K", h[:16].hex(), "-iv", h[16:].hex()],
                           stdin=head.stdout, stdout=subprocess.PIPE)
    head.stdout.close()
    got = 0
    while True:
        chunk = enc.stdout.read(CHUNK)
        if not chunk:
            break
        got += len(chunk)
        yield chunk
    if enc.wait() != 0 or head.wait() != 0 or got != n:
        sys.exit(f"openssl keystream for {seed}: got {got} of {n} bytes")

class Layout:
    def __init__(self, root):
        self.root = root
        os.makedirs(f"{root}/blobs/sha256", exist_ok=True)
        with open(f"{root}/oci-layout", "w") as f:
            json.dump({"imageLayoutVersion": "1.0.0"}, f)
        self.blobs = {}   # digest -> size, distinct blobs (layers and configs)
        self.layers = {}  # seed -> descriptor

    def put(self, data):
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        with open(f"{self.root}/blobs/sha256/{digest[7:]}", "wb") as f:
            f.write(data)
        return {"digest": digest, "size": len(data)}

    def layer(self, seed, size):
        if seed in self.layers:
            return self.layers[seed]
        assert size % 512 == 0 and size >= 2048, size
        info = tarfile.TarInfo(seed.replace("/", "_") + ".bin")
        info.size, info.mtime, info.mode = size - 1536, 0, 0o644
        h = hashlib.sha256()
        tmp = f"{self.root}/blobs/sha256/.tmp"
        with open(tmp, "wb") as f:
            for part in [info.tobuf(format=tarfile.USTAR_FORMAT)]:
                h.update(part); f.write(part)
            for part in keystream(seed, size - 1536):
                h.update(part); f.write(part)
            tail = b"\0" * 1024
            h.update(tail); f.write(tail)
            assert f.tell() == size
        digest = "sha256:" + h.hexdigest()
        os.rename(tmp, f"{self.root}/blobs/sha256/{digest[7:]}")
        d = {"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": digest, "size": size}
        self.layers[seed] = d
        self.blobs[digest] = size
        return d

    def manifest(self, name, arch, layers):
        config = json.dumps({
            "created": CREATED, "architecture": arch, "os": "linux",
            "config": {"Labels": {"org.imagersync.bench": name}},
            "rootfs": {"type": "layers", "diff_ids": [l["digest"] for l in layers]},
            "history": [{"created": CREATED, "created_by": f"cmd/bench.sh {name} layer {i}"}
                        for i in range(len(layers))],
        }, sort_keys=True, separators=(",", ":")).encode()
        c = self.put(config)
        self.blobs[c["digest"]] = c["size"]
        m = json.dumps({
            "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **c},
            "layers": layers,
        }, separators=(",", ":")).encode()
        return {"mediaType": "application/vnd.oci.image.manifest.v1+json", **self.put(m)}

    def finish(self, name, top):
        with open(f"{self.root}/index.json", "w") as f:
            json.dump({"schemaVersion": 2, "manifests": [
                {**top, "annotations": {"org.opencontainers.image.ref.name": "v1"}}]}, f)
        with open(f"{out}/{name}.blobs", "w") as f:
            for digest, size in self.blobs.items():
                f.write(f"{digest} {size}\n")
        with open(f"{out}/{name}.digest", "w") as f:
            f.write(top["digest"] + "\n")

for name, s in spec.items():
    lay = Layout(f"{out}/layout/{name}")
    archs = s.get("archs")
    if not archs:
        layers = [lay.layer(f"{name}/{i}", s["size"]) for i in range(s["layers"])]
        top = lay.manifest(name, "amd64", layers)
    else:
        children = []
        for arch in archs:
            layers = [lay.layer(f"{name}/base", s["size"])]
            layers += [lay.layer(f"{name}/{arch}/{i}", s["size"]) for i in range(1, s["layers"])]
            child = lay.manifest(name, arch, layers)
            children.append({**child, "platform": {"architecture": arch, "os": "linux"}})
        index = json.dumps({"schemaVersion": 2,
                            "mediaType": "application/vnd.oci.image.index.v1+json",
                            "manifests": children}, separators=(",", ":")).encode()
        top = {"mediaType": "application/vnd.oci.image.index.v1+json", **lay.put(index)}
    lay.finish(name, top)
    print(f"{name}: {len(lay.blobs)} blobs, {sum(lay.blobs.values())} bytes, {top['digest']}",
          file=sys.stderr)
PY

FANIN_NAMES=()
for i in $(seq 1 "$FANIN_IMAGES"); do FANIN_NAMES+=("fanin$i"); done
# Only the images the chosen scenarios need (noop uses big).
IMAGES=()
specs=()
if wants big || wants noop; then
    IMAGES+=(big)
    specs+=("\"big\": {\"layers\": $BIG_LAYERS, \"size\": $BIG_SIZE}")
fi
if wants many || wants wan; then
    IMAGES+=(many)
    specs+=("\"many\": {\"layers\": $MANY_LAYERS, \"size\": $MANY_SIZE}")
fi
if wants multi || wants wan; then
    IMAGES+=(multi)
    archs="$(python3 -c 'import json, sys; print(json.dumps(["amd64", "arm64", "ppc64le", "s390x", "riscv64", "386", "mips64le", "arm"][:int(sys.argv[1])]))' "$MULTI_PLATFORMS")"
    specs+=("\"multi\": {\"layers\": $MULTI_LAYERS, \"size\": $MULTI_SIZE, \"archs\": $archs}")
fi
if wants fanin; then
    for name in "${FANIN_NAMES[@]}"; do
        IMAGES+=("$name")
        specs+=("\"$name\": {\"layers\": $FANIN_LAYERS, \"size\": $FANIN_SIZE}")
    done
fi
if wants huge; then
    IMAGES+=(huge)
    specs+=("\"huge\": {\"layers\": 1, \"size\": $HUGE_SIZE}")
fi
spec="{$(IFS=,; echo "${specs[*]}")}"
log "writing the images (deterministic OCI layouts in $WORK/images)"
mkdir -p "$WORK/images"
python3 "$WORK/mkimages.py" "$WORK/images" "$spec"

# manifest_digest REF: sha256 of the raw top manifest at REF (docker://...).
manifest_digest() {
    local raw
    raw="$(skopeo inspect --raw --tls-verify=false --no-creds "docker://$1")" || return 1
    printf '%s' "$raw" | sha256sum | cut -d' ' -f1 | sed 's/^/sha256:/'
}

declare -A DIGEST BYTES NBLOBS
log "pushing the images to the source registry (skopeo copy oci:... docker://$SRC_HOST/...)"
push_pids=()
for name in "${IMAGES[@]}"; do
    skopeo --insecure-policy copy --quiet --all --preserve-digests --dest-tls-verify=false \
        "oci:$WORK/images/layout/$name:v1" "docker://$SRC_HOST/bench/$name:v1" >&2 &
    push_pids+=($!)
done
for pid in "${push_pids[@]}"; do
    wait "$pid" || die "pushing an image to the source registry failed"
done
for name in "${IMAGES[@]}"; do
    DIGEST[$name]="$(cat "$WORK/images/$name.digest")"
    got="$(manifest_digest "$SRC_HOST/bench/$name:v1")"
    [ "$got" = "${DIGEST[$name]}" ] || die "source $name has digest $got, the layout ${DIGEST[$name]}"
    BYTES[$name]="$(awk '{s += $2} END {print s}' "$WORK/images/$name.blobs")"
    NBLOBS[$name]="$(wc -l <"$WORK/images/$name.blobs")"
done
if wants mirror; then
    log "pushing bench/mirror: $MIRROR_TAGS tags over the distribution API"
    python3 - "$SRC_HOST" "$MIRROR_TAGS" "$MIRROR_BASE" "$MIRROR_OWN" >"$WORK/mirror.digests" <<'PY' ||
# Pushes bench/mirror:t000.. to the source: deterministic tar layers (SHA-256 counter
# bytes), a shared base layer, each tag its own layer and config. Prints "tag digest".
import concurrent.futures, hashlib, io, json, sys, tarfile, urllib.request
host, tags, base_size, own_size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
repo = f"http://{host}/v2/bench/mirror"

def layer(seed, size):
    n = size - 1536
    data = b"".join(hashlib.sha256(f"{seed}/{i}".encode()).digest() for i in range(n // 32 + 1))[:n]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as t:
        info = tarfile.TarInfo(seed + ".bin"); info.size, info.mtime = n, 0
        t.addfile(info, io.BytesIO(data))
    out = buf.getvalue()[:size]
    return out + b"\0" * (size - len(out))

def put_blob(data):
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    req = urllib.request.Request(f"{repo}/blobs/uploads/", method="POST", data=b"")
    loc = urllib.request.urlopen(req).headers["Location"]
    if loc.startswith("/"):
        loc = f"http://{host}{loc}"
    sep = "&" if "?" in loc else "?"
    req = urllib.request.Request(f"{loc}{sep}digest={digest}", method="PUT", data=data,
                                 headers={"Content-Type": "application/octet-stream"})
    urllib.request.urlopen(req).read()
    return {"digest": digest, "size": len(data)}

base = {"mediaType": "application/vnd.oci.image.layer.v1.tar", **put_blob(layer("mirror/base", base_size))}

def push(i):
    tag = f"t{i:03d}"
    own = {"mediaType": "application/vnd.oci.image.layer.v1.tar", **put_blob(layer(f"mirror/{tag}", own_size))}
    config = json.dumps({"architecture": "amd64", "os": "linux", "created": "2024-01-01T00:00:00Z",
                         "config": {"Labels": {"org.imagersync.bench": tag}},
                         "rootfs": {"type": "layers", "diff_ids": [base["digest"], own["digest"]]}},
                        sort_keys=True, separators=(",", ":")).encode()
    c = put_blob(config)
    m = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **c},
                    "layers": [base, own]}, separators=(",", ":")).encode()
    req = urllib.request.Request(f"{repo}/manifests/{tag}", method="PUT", data=m,
                                 headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"})
    urllib.request.urlopen(req).read()
    return tag, "sha256:" + hashlib.sha256(m).hexdigest()

with concurrent.futures.ThreadPoolExecutor(8) as pool:
    for tag, digest in pool.map(push, range(tags)):
        print(tag, digest)
PY
        die "pushing bench/mirror failed"
    # Distinct blobs: the base layer, then per tag one layer and one config.
    BYTES[mirror]=$((MIRROR_BASE + MIRROR_TAGS * MIRROR_OWN))
fi
echo "Image digests (identical on every run):"
echo
for name in "${IMAGES[@]}"; do
    echo "- bench/$name:v1 ${DIGEST[$name]} (${NBLOBS[$name]} blobs, ${BYTES[$name]} bytes)"
done
echo

# ---------------------------------------------------------------------------------------
# Measurements. One line per run in results.tsv: scenario tool run wall cpu rss_kib.
RESULTS="$WORK/results.tsv"
: >"$RESULTS"
CLK_TCK="$(getconf CLK_TCK)"

record() { # scenario tool run wall cpu rss_kib start_rss_kib registries_cpu
    local line
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$@" >>"$RESULTS"
    line="$(printf '%-7s %-15s run %s: wall %8.3f s' "$1" "$2" "$3" "$4")"
    [ -n "$5" ] && line+="$(printf '  cpu %7.2f s  peak rss %7.1f MiB' "$5" "$(awk -v k="$6" 'BEGIN {print k / 1024}')")"
    [ -n "$7" ] && line+="$(printf ' (%.1f MiB at start)' "$(awk -v k="$7" 'BEGIN {print k / 1024}')")"
    line+="$(printf '  registries cpu %6.2f s' "$8")"
    log "  $line"
}

# The service's CPU ticks (utime + stime of all its threads) and its peak RSS in KiB.
pid_ticks() { sed 's/.*) //' "/proc/$1/stat" | awk '{print $12 + $13}'; }
svc_ticks() { pid_ticks "$SVC_PID"; }
# The CPU ticks of both registries: what the registries themselves spend on a run.
reg_ticks() { echo $(($(pid_ticks "$SRC_PID") + $(pid_ticks "$DST_PID"))); }
# ticks_s FROM TO: seconds between two tick counts.
ticks_s() { awk -v a="$1" -v b="$2" -v t="$CLK_TCK" 'BEGIN {printf "%.2f", (b - a) / t}'; }
svc_hwm() { awk '/^VmHWM:/ {print $2}' "/proc/$SVC_PID/status"; }
svc_rss() { awk '/^VmRSS:/ {print $2}' "/proc/$SVC_PID/status"; }

# Peak-RSS reset: writing 5 to clear_refs sets VmHWM back to the current RSS. When the
# kernel or permissions refuse it, the service is restarted before every run instead.
HWM_MODE=clear_refs
if ! { echo 5 >"/proc/$SVC_PID/clear_refs"; } 2>/dev/null; then
    HWM_MODE=restart
fi
prepare_service() {
    if [ "$HWM_MODE" = clear_refs ]; then
        echo 5 >"/proc/$SVC_PID/clear_refs"
    else
        stop_service
        start_service
    fi
}

# check_target NAME: the target's top manifest digest must equal the source's.
check_target() {
    local got
    got="$(manifest_digest "$DST_HOST/bench/$1:v1")" || die "target has no bench/$1:v1 after the run"
    [ "$got" = "${DIGEST[$1]}" ] || die "target bench/$1:v1 has digest $got, the source ${DIGEST[$1]}"
}

# check_targets NAME...: check_target for every NAME, at once.
check_targets() {
    local name pids=() pid
    for name in "$@"; do
        check_target "$name" &
        pids+=($!)
    done
    for pid in "${pids[@]}"; do
        wait "$pid" || die "an image did not land at the target correctly"
    done
}

# check_response FILE CODE EXPECTED_STATUS: HTTP 200, successfully, every image EXPECTED.
check_response() {
    [ "$2" = 200 ] || die "the service answered HTTP $2: $(head -c 2000 "$1")"
    python3 - "$1" "$3" <<'PY' || die "the service's answer is not a success: $(head -c 2000 "$1")"
import json, sys
r = json.load(open(sys.argv[1]))["rsync_data"]
ok = r["rsync_status"] == "successfully" and r["images"] and all(
    i["status"] == sys.argv[2] for i in r["images"])
sys.exit(0 if ok else 1)
PY
}

# run_imagersync SCENARIO RUN EXPECTED_STATUS NAME...: one POST per NAME, all at once.
run_imagersync() {
    local scenario="$1" run="$2" expect="$3" name t0 t1 ticks0 ticks1 wall i rss0 reg0 reg1
    shift 3
    local names=("$@") pids=()
    prepare_service
    rss0="$(svc_rss)"
    reg0="$(reg_ticks)"
    ticks0="$(svc_ticks)"
    t0="$EPOCHREALTIME"
    for name in "${names[@]}"; do
        curl -sS -o "$WORK/resp-$name.json" -w '%{http_code} %{time_total}' --max-time 3600 \
            -u "$SVC_USER:$SVC_PASS" -H 'Content-Type: application/json' \
            -X POST "http://127.0.0.1:$SVC_PORT/v1/image/rsync" \
            -d "{\"rsync_config\":{\"source\":\"$REQ_SRC/bench/$name:v1\",\"target\":\"$REQ_DST/bench/$name:v1\"}}" \
            >"$WORK/curl-$name.out" &
        pids+=($!)
    done
    for i in "${!pids[@]}"; do
        wait "${pids[$i]}" || die "curl to the service failed for ${names[$i]}"
    done
    t1="$EPOCHREALTIME"
    ticks1="$(svc_ticks)"
    reg1="$(reg_ticks)"
    for name in "${names[@]}"; do
        check_response "$WORK/resp-$name.json" "$(cut -d' ' -f1 "$WORK/curl-$name.out")" "$expect"
    done
    check_targets "${names[@]}"
    if [ "${#names[@]}" -eq 1 ]; then
        wall="$(cut -d' ' -f2 "$WORK/curl-${names[0]}.out")" # curl's own time_total
    else
        wall="$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.6f", b - a}')"
    fi
    record "$scenario" imagersync "$run" "$wall" "$(ticks_s "$ticks0" "$ticks1")" \
        "$(svc_hwm)" "$rss0" "$(ticks_s "$reg0" "$reg1")"
}

# timed_skopeo OUT ARGS...: skopeo under GNU time; OUT gets "wall user sys maxrss_kib".
# The wall time is taken around the process with $EPOCHREALTIME (GNU time's %e has only
# 10 ms resolution); user, system and max RSS come from GNU time.
timed_skopeo() {
    local out="$1" t0 t1
    shift
    t0="$EPOCHREALTIME"
    if ! /usr/bin/time -f '%e %U %S %M' -o "$out.time" skopeo --insecure-policy "$@" \
        >"$out.log" 2>&1; then
        log "skopeo $* failed:"
        tail -n 20 "$out.log" >&2
        return 1
    fi
    t1="$EPOCHREALTIME"
    tail -n 1 "$out.time" | awk -v a="$t0" -v b="$t1" '{printf "%.6f %s %s %s\n", b - a, $2, $3, $4}' >"$out"
}

# run_skopeo SCENARIO RUN NAME...: one skopeo copy per NAME, all at once. Wall: all done;
# CPU: the sum of user + system; RSS: the sum of every process's peak.
run_skopeo() {
    local scenario="$1" run="$2" name t0 t1 wall i reg0 reg1
    shift 2
    local names=("$@") pids=()
    reg0="$(reg_ticks)"
    t0="$EPOCHREALTIME"
    for name in "${names[@]}"; do
        timed_skopeo "$WORK/skopeo-$name" copy --all --preserve-digests \
            --src-tls-verify=false --dest-tls-verify=false \
            "docker://$REQ_SRC/bench/$name:v1" "docker://$REQ_DST/bench/$name:v1" &
        pids+=($!)
    done
    for i in "${!pids[@]}"; do
        wait "${pids[$i]}" || die "skopeo copy failed for ${names[$i]}"
    done
    t1="$EPOCHREALTIME"
    reg1="$(reg_ticks)"
    check_targets "${names[@]}"
    if [ "${#names[@]}" -eq 1 ]; then
        wall="$(cut -d' ' -f1 "$WORK/skopeo-${names[0]}")"
    else
        wall="$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.6f", b - a}')"
    fi
    record "$scenario" skopeo "$run" "$wall" \
        "$(for name in "${names[@]}"; do cat "$WORK/skopeo-$name"; done | awk '{s += $2 + $3} END {printf "%.2f", s}')" \
        "$(for name in "${names[@]}"; do cat "$WORK/skopeo-$name"; done | awk '{s += $4} END {print s}')" \
        "" "$(ticks_s "$reg0" "$reg1")"
}

# run_inspect SCENARIO RUN NAME: skopeo inspect --raw of the source, then of the target:
# the least skopeo must do to learn that nothing needs copying.
run_inspect() {
    local side reg0 reg1
    reg0="$(reg_ticks)"
    for side in "$SRC_HOST" "$DST_HOST"; do
        timed_skopeo "$WORK/inspect-${side##*:}" inspect --raw --tls-verify=false --no-creds \
            "docker://$side/bench/$3:v1" || die "skopeo inspect failed"
    done
    reg1="$(reg_ticks)"
    record "$1" skopeo-inspect "$2" \
        "$(cat "$WORK/inspect-$SRC_PORT" "$WORK/inspect-$DST_PORT" | awk '{s += $1} END {printf "%.6f", s}')" \
        "$(cat "$WORK/inspect-$SRC_PORT" "$WORK/inspect-$DST_PORT" | awk '{s += $2 + $3} END {printf "%.2f", s}')" \
        "$(cat "$WORK/inspect-$SRC_PORT" "$WORK/inspect-$DST_PORT" | awk '$4 > m {m = $4} END {print m}')" \
        "" "$(ticks_s "$reg0" "$reg1")"
}

# floor_blob NAME DIGEST SIZE: what the engine does for one blob, with curl: POST an
# upload session at the target, then GET from the source piped into the PUT ?digest=.
floor_blob() {
    local name="$1" digest="$2" size="$3" location sep
    location="$(curl -sS -f -o /dev/null -D - -X POST -H 'Content-Length: 0' \
        "http://$DST_HOST/v2/bench/$name/blobs/uploads/" |
        tr -d '\r' | awk 'tolower($1) == "location:" {print $2}')"
    [ -n "$location" ] || return 1
    case "$location" in /*) location="http://$DST_HOST$location" ;; esac
    sep='?'
    case "$location" in *\?*) sep='&' ;; esac
    curl -sS -f "http://$SRC_HOST/v2/bench/$name/blobs/$digest" |
        curl -sS -f -o /dev/null -T - -H 'Expect:' -H "Content-Length: $size" \
            -H 'Content-Type: application/octet-stream' "$location${sep}digest=$digest"
}

# run_floor SCENARIO RUN seq|par NAME: every distinct blob of NAME with floor_blob, one at
# a time (seq) or all at once (par). Blobs only: no manifests, no HEAD checks.
run_floor() {
    local scenario="$1" run="$2" mode="$3" name="$4" t0 t1 digest size pids=() i=0 reg0 reg1
    reg0="$(reg_ticks)"
    t0="$EPOCHREALTIME"
    while read -r digest size; do
        if [ "$mode" = seq ]; then
            floor_blob "$name" "$digest" "$size" || die "floor: blob $digest of $name failed"
        else
            floor_blob "$name" "$digest" "$size" &
            pids+=($!)
        fi
    done <"$WORK/images/$name.blobs"
    for i in "${!pids[@]}"; do
        wait "${pids[$i]}" || die "floor: a parallel blob transfer of $name failed"
    done
    t1="$EPOCHREALTIME"
    reg1="$(reg_ticks)"
    while read -r digest size; do
        got="$(curl -sS -I -o /dev/null -w '%{http_code}' "http://$DST_HOST/v2/bench/$name/blobs/$digest")"
        [ "$got" = 200 ] || die "floor: blob $digest of $name is not at the target (HTTP $got)"
    done <"$WORK/images/$name.blobs"
    record "$scenario" "floor-$mode" "$run" "$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.6f", b - a}')" \
        "" "" "" "$(ticks_s "$reg0" "$reg1")"
}

# check_mirror: every tag of bench/mirror is at the target with the source's digest.
check_mirror() {
    python3 - "$DST_HOST" "$WORK/mirror.digests" <<'PY' || die "bench/mirror did not land at the target correctly"
import concurrent.futures, sys, urllib.request
host, want = sys.argv[1], dict(l.split() for l in open(sys.argv[2]))
def digest(tag):
    req = urllib.request.Request(f"http://{host}/v2/bench/mirror/manifests/{tag}", method="HEAD",
                                 headers={"Accept": "application/vnd.oci.image.manifest.v1+json"})
    return tag, urllib.request.urlopen(req).headers["Docker-Content-Digest"]
with concurrent.futures.ThreadPoolExecutor(8) as pool:
    bad = [t for t, d in pool.map(digest, want) if d != want[t]]
sys.exit(f"wrong digests at the target: {bad[:5]}" if bad else 0)
PY
}

# run_mirror_floor SCENARIO RUN: the least a no-op mirror can cost when it reads the source's
# current digests: the tag list and one manifest HEAD per tag at the source, 16 at a time
# with curl. Nothing at the target is checked, so no tool that verifies both sides can beat it.
run_mirror_floor() {
    local urls=() tag reg0 reg1 t0 t1
    while read -r tag _; do
        urls+=(-o /dev/null -I -H 'Accept: application/vnd.oci.image.manifest.v1+json'
            "http://$SRC_HOST/v2/bench/mirror/manifests/$tag")
    done <"$WORK/mirror.digests"
    reg0="$(reg_ticks)"
    t0="$EPOCHREALTIME"
    curl -sS -f -o /dev/null "http://$SRC_HOST/v2/bench/mirror/tags/list?n=1000" &&
        curl -sS -f --parallel --parallel-max 16 "${urls[@]}" || die "floor: a source manifest HEAD failed"
    t1="$EPOCHREALTIME"
    reg1="$(reg_ticks)"
    record "$1" floor-par "$2" "$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.6f", b - a}')" \
        "" "" "" "$(ticks_s "$reg0" "$reg1")"
}

# run_mirror_imagersync SCENARIO RUN EXPECTED_STATUS: one POST of the rule without a tag.
run_mirror_imagersync() {
    local scenario="$1" run="$2" expect="$3" out ticks0 ticks1 rss0 reg0 reg1
    prepare_service
    rss0="$(svc_rss)"
    reg0="$(reg_ticks)"
    ticks0="$(svc_ticks)"
    out="$(curl -sS -o "$WORK/resp-mirror.json" -w '%{http_code} %{time_total}' --max-time 3600 \
        -u "$SVC_USER:$SVC_PASS" -H 'Content-Type: application/json' \
        -X POST "http://127.0.0.1:$SVC_PORT/v1/image/rsync" \
        -d "{\"rsync_config\":{\"source\":\"$SRC_HOST/bench/mirror\",\"target\":\"$DST_HOST/bench/mirror\"}}")" ||
        die "curl to the service failed for bench/mirror"
    ticks1="$(svc_ticks)"
    reg1="$(reg_ticks)"
    check_response "$WORK/resp-mirror.json" "${out%% *}" "$expect"
    check_mirror
    record "$scenario" imagersync "$run" "${out##* }" "$(ticks_s "$ticks0" "$ticks1")" \
        "$(svc_hwm)" "$rss0" "$(ticks_s "$reg0" "$reg1")"
}

# run_mirror_skopeo SCENARIO RUN: skopeo sync of the repository (every tag).
run_mirror_skopeo() {
    local reg0 reg1
    reg0="$(reg_ticks)"
    timed_skopeo "$WORK/skopeo-mirror" sync --src docker --dest docker --all --preserve-digests \
        --src-tls-verify=false --dest-tls-verify=false \
        "$SRC_HOST/bench/mirror" "$DST_HOST/bench" || die "skopeo sync failed"
    reg1="$(reg_ticks)"
    check_mirror
    record "$1" skopeo "$2" "$(cut -d' ' -f1 "$WORK/skopeo-mirror")" \
        "$(awk '{printf "%.2f", $2 + $3}' "$WORK/skopeo-mirror")" \
        "$(awk '{print $4}' "$WORK/skopeo-mirror")" "" "$(ticks_s "$reg0" "$reg1")"
}

# ---------------------------------------------------------------------------------------
# Scenarios
declare -A DESC SCEN_BYTES
# human BYTES: "N MiB" or "N KiB".
human() { if [ $(($1 % MIB)) -eq 0 ]; then echo "$(($1 / MIB)) MiB"; else echo "$(($1 / KIB)) KiB"; fi; }
DESC[big]="one image, $BIG_LAYERS layers x $(human "$BIG_SIZE")"
DESC[many]="one image, $MANY_LAYERS layers x $(human "$MANY_SIZE")"
DESC[multi]="an OCI index of $MULTI_PLATFORMS platforms, $MULTI_LAYERS layers x $(human "$MULTI_SIZE") each, the base layer shared by all"
DESC[noop]="the big image again when the target already has it"
DESC[fanin]="$FANIN_IMAGES different images of $FANIN_LAYERS layers x $(human "$FANIN_SIZE"), requested at once"
DESC[huge]="one image with a single layer of $(human "$HUGE_SIZE")"
DESC[mirror]="one repository of $MIRROR_TAGS tags (a $(human "$MIRROR_BASE") base layer shared by all, each its own $(human "$MIRROR_OWN") layer and config), a rule without a tag against skopeo sync"
DESC[mirror-noop]="the mirror scenario again when the target already holds every tag"
WAN_NAMES=()
for d in $WAN_DELAYS; do
    for name in many multi; do
        WAN_NAMES+=("wan$d-$name")
        DESC[wan$d-$name]="$name through proxies holding every request $d ms (cmd/delay_proxy.py)"
        SCEN_BYTES[wan$d-$name]="${BYTES[$name]:-0}"
    done
done
SCEN_BYTES[mirror]="${BYTES[mirror]:-0}"
SCEN_BYTES[mirror-noop]=0
SCEN_BYTES[big]="${BYTES[big]:-0}"
SCEN_BYTES[many]="${BYTES[many]:-0}"
SCEN_BYTES[multi]="${BYTES[multi]:-0}"
SCEN_BYTES[noop]=0
SCEN_BYTES[huge]="${BYTES[huge]:-0}"
SCEN_BYTES[fanin]=0
for name in "${FANIN_NAMES[@]}"; do SCEN_BYTES[fanin]=$((SCEN_BYTES[fanin] + ${BYTES[$name]:-0})); done

# copy_scenario SCENARIO FLOOR(yes|no) NAME...: RUNS runs of each tool, alternating which
# goes first, each onto an empty target.
#
# The service is started afresh before each of its runs here, as skopeo is: reset_target
# deletes the target's storage behind the service's back, which no registry in use does,
# and a service that had put these blobs there before would rightly distrust its memory
# of them and check each one (a HEAD per blob) instead of sending small ones unchecked
# into what it can see is a new repository.
copy_scenario() {
    local scenario="$1" floor="$2" run
    shift 2
    log "scenario $scenario: ${DESC[$scenario]}"
    for run in $(seq 1 "$RUNS"); do
        if [ $((run % 2)) -eq 1 ]; then
            reset_target; restart_service; run_imagersync "$scenario" "$run" synced "$@"
            reset_target; run_skopeo "$scenario" "$run" "$@"
        else
            reset_target; run_skopeo "$scenario" "$run" "$@"
            reset_target; restart_service; run_imagersync "$scenario" "$run" synced "$@"
        fi
        if [ "$floor" = yes ]; then
            reset_target; run_floor "$scenario" "$run" seq "$1"
            reset_target; run_floor "$scenario" "$run" par "$1"
        fi
    done
}

noop_scenario() {
    local run code
    log "scenario noop: ${DESC[noop]}"
    restart_service
    reset_target
    # The service itself brings big to the target first (not measured), as it would have
    # in production; this also leaves its connection pool as a running service has it.
    code="$(curl -sS -o "$WORK/resp-big.json" -w '%{http_code}' --max-time 3600 \
        -u "$SVC_USER:$SVC_PASS" -H 'Content-Type: application/json' \
        -X POST "http://127.0.0.1:$SVC_PORT/v1/image/rsync" \
        -d "{\"rsync_config\":{\"source\":\"$SRC_HOST/bench/big:v1\",\"target\":\"$DST_HOST/bench/big:v1\"}}")" ||
        die "curl to the service failed"
    check_response "$WORK/resp-big.json" "$code" synced
    check_target big
    for run in $(seq 1 "$RUNS"); do
        if [ $((run % 2)) -eq 1 ]; then
            run_imagersync noop "$run" already_synced big
            run_skopeo noop "$run" big
        else
            run_skopeo noop "$run" big
            run_imagersync noop "$run" already_synced big
        fi
        run_inspect noop "$run" big
    done
}

if wants big; then copy_scenario big yes big; fi
if wants many; then copy_scenario many yes many; fi
if wants multi; then copy_scenario multi yes multi; fi
if wants noop; then noop_scenario; fi
if wants fanin; then copy_scenario fanin no "${FANIN_NAMES[@]}"; fi
if wants huge; then copy_scenario huge no huge; fi
if wants wan; then
    for d in $WAN_DELAYS; do
        REQ_SRC="${WAN_SRC[$d]}" REQ_DST="${WAN_DST[$d]}"
        copy_scenario "wan$d-many" no many
        copy_scenario "wan$d-multi" no multi
    done
    REQ_SRC="$SRC_HOST" REQ_DST="$DST_HOST"
fi
if wants mirror; then
    log "scenario mirror: ${DESC[mirror]}; then mirror-noop"
    for run in $(seq 1 "$RUNS"); do
        if [ $((run % 2)) -eq 1 ]; then
            reset_target; restart_service
            run_mirror_imagersync mirror "$run" synced
            run_mirror_imagersync mirror-noop "$run" already_synced
            reset_target
            run_mirror_skopeo mirror "$run"
            run_mirror_skopeo mirror-noop "$run"
            run_mirror_floor mirror-noop "$run"
        else
            run_mirror_floor mirror-noop "$run"
            reset_target
            run_mirror_skopeo mirror "$run"
            run_mirror_skopeo mirror-noop "$run"
            reset_target; restart_service
            run_mirror_imagersync mirror "$run" synced
            run_mirror_imagersync mirror-noop "$run" already_synced
        fi
    done
fi

# ---------------------------------------------------------------------------------------
# Report
{
    for s in $ALL_SCENARIOS; do
        wants "$s" || continue
        if [ "$s" = wan ]; then
            for w in "${WAN_NAMES[@]}"; do
                printf '%s\t%s\t%s\n' "$w" "${SCEN_BYTES[$w]}" "${DESC[$w]}"
            done
            continue
        fi
        printf '%s\t%s\t%s\n' "$s" "${SCEN_BYTES[$s]}" "${DESC[$s]}"
        if [ "$s" = mirror ]; then
            printf '%s\t%s\t%s\n' mirror-noop 0 "${DESC[mirror-noop]}"
        fi
    done
} >"$WORK/scenarios.tsv"
echo "- load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
$QUICK && echo "- quick mode: tiny images and one run check that the script works; its ratios and verdicts mean nothing"
echo "- service peak RSS reset before each run: $([ "$HWM_MODE" = clear_refs ] &&
    echo 'echo 5 > /proc/PID/clear_refs' || echo 'not permitted here, the service was restarted before each run')"
echo
python3 - "$RESULTS" "$WORK/scenarios.tsv" "$RUNS" <<'PY'
import statistics, sys
from collections import defaultdict

results, scenarios, runs = sys.argv[1], sys.argv[2], int(sys.argv[3])
rows = defaultdict(list)
for line in open(results):
    s, tool, run, wall, cpu, rss, rss0, reg = line.rstrip("\n").split("\t")
    rows[(s, tool)].append((float(wall), float(cpu) if cpu else None, int(rss) if rss else None,
                            int(rss0) if rss0 else None, float(reg)))

def summary(s, tool):
    r = rows.get((s, tool))
    if not r:
        return None
    walls = [x[0] for x in r]
    cpus = [x[1] for x in r if x[1] is not None]
    rsss = [x[2] for x in r if x[2] is not None]
    starts = [x[3] for x in r if x[3] is not None]
    return {"wall": statistics.median(walls), "min": min(walls), "max": max(walls),
            "cpu": statistics.median(cpus) if cpus else None,
            "rss": max(rsss) / 1024 if rsss else None,
            "rss0": statistics.median(starts) / 1024 if starts else None,
            "reg": statistics.median(x[4] for x in r), "n": len(r)}

def f(x, fmt="{:.2f}"):
    return "-" if x is None else fmt.format(x)

def ratio(a, b):
    return None if a is None or b is None or b == 0 else a / b

tools = ["imagersync", "skopeo", "skopeo-inspect", "floor-seq", "floor-par"]
stats = {}
print("| scenario | tool | runs | wall s (median) | wall min-max | CPU s (median) | peak RSS MiB (max) | RSS at start MiB | MB/s | wall / skopeo | CPU / skopeo | RSS / skopeo | registries CPU s |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
for line in open(scenarios):
    s, nbytes, desc = line.rstrip("\n").split("\t")
    nbytes = int(nbytes)
    ref = summary(s, "skopeo")
    for tool in tools:
        x = summary(s, tool)
        if x is None:
            continue
        stats[(s, tool)] = x
        mbps = nbytes / 1e6 / x["wall"] if nbytes and x["wall"] > 0 else None
        rw = ratio(x["wall"], ref["wall"]) if tool != "skopeo" else None
        rc = ratio(x["cpu"], ref["cpu"]) if tool != "skopeo" else None
        rr = ratio(x["rss"], ref["rss"]) if tool != "skopeo" else None
        print(f"| {s} | {tool} | {x['n']} | {x['wall']:.3f} | {x['min']:.3f}-{x['max']:.3f} | "
              f"{f(x['cpu'])} | {f(x['rss'], '{:.1f}')} | {f(x['rss0'], '{:.1f}')} | {f(mbps, '{:.0f}')} | "
              f"{f(rw)} | {f(rc)} | {f(rr)} | {x['reg']:.2f} |")
print()
print("Scenarios (MB/s = distinct blob bytes, layers and configs, / median wall; 1 MB = 10^6 bytes):")
print()
for line in open(scenarios):
    s, nbytes, desc = line.rstrip("\n").split("\t")
    print(f"- {s}: {desc}" + (f"; {int(nbytes) / 2**20:.1f} MiB of blobs" if int(nbytes) else ""))
print()

# The targets of the issue, checked against this run.
def get(s, tool, key):
    x = stats.get((s, tool))
    return None if x is None else x[key]

checks = []
def paired(s, tool, other, key=0):
    """Median over runs of tool's run i / other's run i: both ran back to back, under the
    same machine load, so this ratio is steadier than the ratio of medians on a busy host."""
    a, b = rows.get((s, tool)), rows.get((s, other))
    if not a or not b:
        return None
    return statistics.median(x[key] / y[key] for x, y in zip(a, b) if y[key])

def paired_floor(s):
    a, fs, fp = rows.get((s, "imagersync")), rows.get((s, "floor-seq")), rows.get((s, "floor-par"))
    if not a or not fs or not fp:
        return None
    return statistics.median(x[0] / min(y[0], z[0]) for x, y, z in zip(a, fs, fp))

def check(what, value, limit, unit="x", pair=None):
    verdict = "not run" if value is None else ("met" if value <= limit else "MISSED")
    if unit == "x":
        shown = "-" if value is None else f"{value:.2f}x"
        limit_shown = f"{limit}x"
    else:
        shown = "-" if value is None else f"{value:.1f} {unit}"
        limit_shown = f"{limit} {unit}"
    pair_shown = "-" if pair is None else f"{pair:.2f}x ({'met' if pair <= limit else 'MISSED'})"
    checks.append(f"| {what} | {shown} | {pair_shown} | <= {limit_shown} | {verdict} |")

for s in ("big", "multi"):
    check(f"{s}: wall / skopeo", ratio(get(s, "imagersync", "wall"), get(s, "skopeo", "wall")), 0.9,
          pair=paired(s, "imagersync", "skopeo"))
    check(f"{s}: CPU / skopeo", ratio(get(s, "imagersync", "cpu"), get(s, "skopeo", "cpu")), 0.6,
          pair=paired(s, "imagersync", "skopeo", 1))
    floors = [w for w in (get(s, "floor-seq", "wall"), get(s, "floor-par", "wall")) if w is not None]
    check(f"{s}: wall / curl floor (faster of seq, par)",
          ratio(get(s, "imagersync", "wall"), min(floors) if floors else None), 1.15,
          pair=paired_floor(s))
check("many: wall / skopeo", ratio(get("many", "imagersync", "wall"), get("many", "skopeo", "wall")), 0.5,
      pair=paired("many", "imagersync", "skopeo"))
check("noop: wall / skopeo copy", ratio(get("noop", "imagersync", "wall"), get("noop", "skopeo", "wall")), 0.3,
      pair=paired("noop", "imagersync", "skopeo"))
check("noop: wall / skopeo inspect --raw x2", ratio(get("noop", "imagersync", "wall"), get("noop", "skopeo-inspect", "wall")), 0.3,
      pair=paired("noop", "imagersync", "skopeo-inspect"))
check("fanin: wall / skopeo", ratio(get("fanin", "imagersync", "wall"), get("fanin", "skopeo", "wall")), 0.8,
      pair=paired("fanin", "imagersync", "skopeo"))
check("fanin: service peak RSS / sum of skopeo peaks", ratio(get("fanin", "imagersync", "rss"), get("fanin", "skopeo", "rss")), 0.25)
check("mirror: wall / skopeo sync", ratio(get("mirror", "imagersync", "wall"), get("mirror", "skopeo", "wall")), 0.25,
      pair=paired("mirror", "imagersync", "skopeo"))
check("mirror-noop: wall / skopeo sync", ratio(get("mirror-noop", "imagersync", "wall"), get("mirror-noop", "skopeo", "wall")), 0.04,
      pair=paired("mirror-noop", "imagersync", "skopeo"))
# Not a target: where the source's own answers put the least any tool can reach.
check("mirror-noop: curl floor (source HEADs only) / skopeo sync",
      ratio(get("mirror-noop", "floor-par", "wall"), get("mirror-noop", "skopeo", "wall")), 0.04,
      pair=paired("mirror-noop", "floor-par", "skopeo"))
for d, s, limit in ((50, "many", 0.30), (50, "multi", 0.25), (20, "many", 0.35)):
    w = f"wan{d}-{s}"
    if (w, "skopeo") in stats:
        check(f"{w}: wall / skopeo, same proxies", ratio(get(w, "imagersync", "wall"), get(w, "skopeo", "wall")),
              limit, pair=paired(w, "imagersync", "skopeo"))
check("big: service peak RSS", get("big", "imagersync", "rss"), 20, "MiB")
check("huge: service peak RSS", get("huge", "imagersync", "rss"), 20, "MiB")
print("Targets of the issue (\"this run\": ratio of the medians in the table, which decides;")
print("\"paired\": median of the per-run ratios, imagersync's run i against the other's run i):")
print()
print("| target | this run | paired | limit | |")
print("|---|---|---|---|---|")
print("\n".join(checks))
PY
