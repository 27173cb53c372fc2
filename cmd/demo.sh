#!/usr/bin/env bash
# A first look at imagersync, end to end on this machine:
#   builds the service, starts two throw-away registries (source: anonymous, target:
#   htpasswd), pushes a tiny image into the source, starts the service pointed at both,
#   asks it for one sync with curl, and shows what landed. Everything runs on free
#   127.0.0.1 ports inside a temp dir and is removed on exit.
#
#   cmd/demo.sh          run the demo and clean up
#   cmd/demo.sh --keep   leave registries and service running until Ctrl-C
set -euo pipefail
cd "$(dirname "$0")/.."
. cmd/lib.sh

KEEP=false
[ "${1:-}" = "--keep" ] && KEEP=true

step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

for tool in python3 curl; do
    command -v "$tool" >/dev/null 2>&1 || { echo "$tool is needed for the demo" >&2; exit 1; }
done
ensure_tools
ensure_cargo

step "Building the service (cargo build --release)"
cargo build --release --bin imagersync_service_bin
BIN="$PWD/target/release/imagersync_service_bin"

WORK="$(mktemp -d -t imagersync-demo.XXXXXX)"
PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# start_registry NAME [USER PASS]: a docker-registry on a free port; sets NAME_HOST.
start_registry() {
    local name="$1" port dir
    port="$(free_port)"
    dir="$WORK/$name"
    mkdir -p "$dir"
    {
        echo "version: 0.1"
        echo "log: {level: warn, accesslog: {disabled: true}}"
        echo "storage: {filesystem: {rootdirectory: $dir/data}, delete: {enabled: true}}"
        echo "http: {addr: 127.0.0.1:$port, secret: demo}"
        if [ $# -eq 3 ]; then
            htpasswd -Bbn "$2" "$3" >"$dir/htpasswd"
            echo "auth: {htpasswd: {realm: $name, path: $dir/htpasswd}}"
        fi
    } >"$dir/config.yml"
    docker-registry serve "$dir/config.yml" >"$dir/registry.log" 2>&1 &
    PIDS+=($!)
    wait_http "http://127.0.0.1:$port/v2/" "$dir/registry.log"
    printf -v "${name^^}_HOST" '%s' "127.0.0.1:$port"
    echo "$name registry: 127.0.0.1:$port (pid ${PIDS[-1]}, log $dir/registry.log)"
}

step "Starting two registries"
DST_USER=pusher
DST_PASS="demo-$RANDOM$RANDOM"
start_registry src
start_registry dst "$DST_USER" "$DST_PASS"

step "Pushing a tiny image to the source: $SRC_HOST/demo/hello:v1"
python3 - "$WORK/layout" <<'PY'
# A one-layer OCI image layout: hello.txt in a gzip'd tar, a real config, tag "v1".
import gzip, hashlib, io, json, os, sys, tarfile, time
root = sys.argv[1]
os.makedirs(f"{root}/blobs/sha256")
def blob(data):
    digest = hashlib.sha256(data).hexdigest()
    with open(f"{root}/blobs/sha256/{digest}", "wb") as f:
        f.write(data)
    return {"digest": f"sha256:{digest}", "size": len(data)}
text = f"hello from imagersync, built {time.ctime()}\n".encode()
buf = io.BytesIO()
with tarfile.open(fileobj=buf, mode="w") as tar:
    info = tarfile.TarInfo("hello.txt"); info.size = len(text); info.mtime = int(time.time())
    tar.addfile(info, io.BytesIO(text))
layer_tar = buf.getvalue()
layer = blob(gzip.compress(layer_tar))
config = blob(json.dumps({
    "architecture": "amd64", "os": "linux",
    "config": {"Cmd": ["cat", "/hello.txt"]},
    "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(layer_tar).hexdigest()]},
    "history": [{"created_by": "cmd/demo.sh"}],
}).encode())
manifest = blob(json.dumps({
    "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
    "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **config},
    "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", **layer}],
}).encode())
with open(f"{root}/index.json", "w") as f:
    json.dump({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", **manifest,
        "annotations": {"org.opencontainers.image.ref.name": "v1"}}]}, f)
with open(f"{root}/oci-layout", "w") as f:
    json.dump({"imageLayoutVersion": "1.0.0"}, f)
PY
skopeo --insecure-policy copy --quiet --dest-tls-verify=false \
    "oci:$WORK/layout:v1" "docker://$SRC_HOST/demo/hello:v1"
SRC_DIGEST="sha256:$(skopeo inspect --raw --tls-verify=false --no-creds "docker://$SRC_HOST/demo/hello:v1" | sha256sum | cut -d' ' -f1)"
echo "source digest: $SRC_DIGEST"

step "Starting the service"
SVC_PORT="$(free_port)"
SVC_USER=demo
SVC_PASS=demo-pass
cat >"$WORK/config.yaml" <<YAML
config:
  tools: {source: "https://github.com/", demo: "http://127.0.0.1:$SVC_PORT/check"}
rsyncserver:
  logfile: $WORK/logs/rsync_analysis.log
  jobs:
    database: $WORK/jobs.sqlite3
  auth: {$SVC_USER: $SVC_PASS}
  rsyncconfig:
    auth:
      src: {registry: "$SRC_HOST", insecure: true}
      dst: {registry: "$DST_HOST", username: $DST_USER, password: "$DST_PASS", insecure: true}
    task: {proc_num: 5, retries: 2}
YAML
chmod 600 "$WORK/config.yaml" # it holds passwords
"$BIN" --address "127.0.0.1:$SVC_PORT" --configFile "$WORK/config.yaml" >"$WORK/service.log" 2>&1 &
PIDS+=($!)
wait_http "http://127.0.0.1:$SVC_PORT/check" "$WORK/service.log"
echo "service: http://127.0.0.1:$SVC_PORT (config $WORK/config.yaml)"
curl -s "http://127.0.0.1:$SVC_PORT/check"; echo

BODY="{\"rsync_config\":{\"source\":\"$SRC_HOST/demo/hello:v1\",\"target\":\"$DST_HOST/demo/hello:v1\"}}"
step "Syncing: curl -u $SVC_USER:$SVC_PASS -X POST http://127.0.0.1:$SVC_PORT/v1/image/rsync -d '$BODY'"
STATUS="$(curl -s -o "$WORK/response.json" -w '%{http_code}' -u "$SVC_USER:$SVC_PASS" \
    -X POST "http://127.0.0.1:$SVC_PORT/v1/image/rsync" -d "$BODY")"
echo "HTTP $STATUS"
python3 -m json.tool "$WORK/response.json"
echo
echo "rsync_info, the sync's own log (logrus format, as the original service wrote it):"
python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["rsync_data"]["rsync_info"], end="")' \
    "$WORK/response.json"

step "What landed in the target: skopeo inspect docker://$DST_HOST/demo/hello:v1"
skopeo inspect --tls-verify=false --creds "$DST_USER:$DST_PASS" "docker://$DST_HOST/demo/hello:v1"
DST_DIGEST="sha256:$(skopeo inspect --raw --tls-verify=false --creds "$DST_USER:$DST_PASS" "docker://$DST_HOST/demo/hello:v1" | sha256sum | cut -d' ' -f1)"
echo "target digest: $DST_DIGEST"

step "The analysis log ($WORK/logs/rsync_analysis.log)"
cat "$WORK/logs/rsync_analysis.log"

if [ "$SRC_DIGEST" != "$DST_DIGEST" ] || [ "$STATUS" != 200 ]; then
    echo "demo FAILED: HTTP $STATUS, digests $SRC_DIGEST vs $DST_DIGEST; service log:" >&2
    tail -n 30 "$WORK/service.log" >&2
    exit 1
fi
step "Done: the image was copied with its digest unchanged ($DST_DIGEST)"

if $KEEP; then
    echo "Everything keeps running; try for example:"
    echo "  curl -u $SVC_USER:$SVC_PASS http://127.0.0.1:$SVC_PORT/v1/image/rsync"
    echo "  curl -u $SVC_USER:$SVC_PASS -X POST http://127.0.0.1:$SVC_PORT/v1/image/rsync -d '$BODY'"
    echo "Press Ctrl-C to stop and clean up."
    wait
fi
