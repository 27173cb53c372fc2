# Shared helpers of the cmd/ scripts; source it, do not run it.
#   ensure_tools  installs docker-registry, skopeo, htpasswd, wrk, unshare, ip, curl,
#                 openssl, systemd-analyze and PostgreSQL 15 (Debian) when missing
#   ensure_browser installs chromium and chromedriver (Debian) when missing: tests only
#   ensure_cargo  puts cargo on PATH (~/.cargo/env) or stops with a hint
#   free_port     prints a TCP port that is free on 127.0.0.1 right now
#   wait_http     waits until a URL answers
#   quick_flag    parses a script's only flags, --quick and --help; sets QUICK
#   service_bin   sets BIN: $IMAGERSYNC_BIN, or the release binary built now

# Runs "$@" as root: directly when root, with sudo when available, else fails.
as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        echo "need root to run: $* (no sudo found)" >&2
        return 1
    fi
}

# The test rig needs the reference registry, skopeo and htpasswd, cmd/load.sh (run by
# the suite in its quick form) needs wrk, and tests/it/packaging.rs checks the systemd unit
# with systemd-analyze (package systemd; it needs no running systemd); install what is
# missing.
ensure_tools() {
    local missing=()
    command -v docker-registry >/dev/null 2>&1 || missing+=(docker-registry)
    command -v skopeo >/dev/null 2>&1 || missing+=(skopeo)
    command -v htpasswd >/dev/null 2>&1 || missing+=(apache2-utils)
    command -v wrk >/dev/null 2>&1 || missing+=(wrk)
    # Tests that name a non-loopback address run it in a network namespace of their own
    # (unshare, ip) and reach the service there with curl.
    # util-linux also gives `script`, the pseudo-terminal of the CLI progress test.
    command -v unshare >/dev/null 2>&1 || missing+=(util-linux)
    command -v script >/dev/null 2>&1 || missing+=(util-linux)
    command -v ip >/dev/null 2>&1 || missing+=(iproute2)
    command -v curl >/dev/null 2>&1 || missing+=(curl)
    # tests/it/registry_tls.rs makes certificates with it, as Docker's docs do.
    command -v openssl >/dev/null 2>&1 || missing+=(openssl)
    command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
    # The job suite runs against PostgreSQL too (tests/it/common/postgres.rs starts a
    # throwaway server from these binaries, which are not on PATH).
    [ -x /usr/lib/postgresql/15/bin/postgres ] || missing+=(postgresql-15)
    [ "${#missing[@]}" -eq 0 ] && return 0
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "missing packages ${missing[*]} and no apt-get: install docker-registry, skopeo, apache2-utils (htpasswd), wrk, util-linux, iproute2, curl, openssl, systemd and postgresql-15 yourself" >&2
        return 1
    fi
    echo "installing ${missing[*]} (apt-get)" >&2
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    # The Debian docker-registry package may start a system service on :5000; the tests
    # and the demo use ephemeral ports, so they neither need nor collide with it.
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
}

# The dashboard test (tests/it/dashboard.rs) drives headless Chromium through chromedriver.
# Apart from ensure_tools so that the demo and the benchmark do not pull in a browser.
ensure_browser() {
    local missing=()
    command -v chromium >/dev/null 2>&1 || missing+=(chromium)
    command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
    [ "${#missing[@]}" -eq 0 ] && return 0
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "missing packages ${missing[*]} and no apt-get: install chromium and chromium-driver (chromedriver) yourself" >&2
        return 1
    fi
    echo "installing ${missing[*]} (apt-get)" >&2
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver
}

ensure_cargo() {
    if ! command -v cargo >/dev/null 2>&1 && [ -f "$HOME/.cargo/env" ]; then
        # shellcheck disable=SC1091
        . "$HOME/.cargo/env"
    fi
    if ! command -v cargo >/dev/null 2>&1; then
        echo "cargo not found: install Rust from https://rustup.rs" >&2
        return 1
    fi
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# wait_http URL LOG [PID]: returns once URL answers (any HTTP status), within 20 s; else,
# or as soon as PID (when given) has exited, shows the tail of LOG and returns 1.
wait_http() {
    local i
    for i in $(seq 1 400); do
        if curl -s -o /dev/null "$1"; then return 0; fi
        if [ -n "${3:-}" ] && ! kill -0 "$3" 2>/dev/null; then break; fi
        sleep 0.05
    done
    echo "nothing answers at $1; its log:" >&2
    tail -n 20 "$2" >&2 || true
    return 1
}

# start_plain_registry NAME: starts a plain-HTTP docker-registry on a free loopback port with its
# data in $WORK/NAME (deletes enabled), adds its pid to PIDS and sets ${NAME^^}_HOST
# (e.g. SRC_HOST=127.0.0.1:PORT). Needs WORK, PIDS and a `die` of the calling script.
start_plain_registry() {
    local name="$1" port dir="$WORK/$1"
    port="$(free_port)"
    mkdir -p "$dir"
    cat >"$dir/config.yml" <<YAML
version: 0.1
log: {level: error, accesslog: {disabled: true}}
storage: {filesystem: {rootdirectory: $dir/data}, delete: {enabled: true}}
http: {addr: 127.0.0.1:$port, secret: $(basename "$0" .sh)-$name}
YAML
    docker-registry serve "$dir/config.yml" >"$dir/registry.log" 2>&1 &
    PIDS+=($!)
    wait_http "http://127.0.0.1:$port/v2/" "$dir/registry.log" "$!" || die "registry $name did not start"
    printf -v "${name^^}_HOST" '%s' "127.0.0.1:$port"
}

# start_service CONFIG: starts $BIN on a free loopback port with CONFIG (made private
# first: it holds passwords), adds its pid to PIDS, sets SVC_PORT and SVC_PID and waits
# for /check. Needs WORK, PIDS and a `die` of the calling script.
start_service() {
    chmod 600 "$1"
    SVC_PORT="$(free_port)"
    "$BIN" --address "127.0.0.1:$SVC_PORT" --configFile "$1" >"$WORK/service.log" 2>&1 &
    SVC_PID=$!
    PIDS+=("$SVC_PID")
    wait_http "http://127.0.0.1:$SVC_PORT/check" "$WORK/service.log" "$SVC_PID" || die "the service did not start"
}

# quick_flag "$@": sets QUICK=true for --quick; --help prints the script's header comment
# (from line 2 to `set -euo`) and exits; anything else stops the script.
quick_flag() {
    QUICK=false
    local arg
    for arg in "$@"; do
        case "$arg" in
            --quick) QUICK=true ;;
            -h | --help)
                sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
                exit 0
                ;;
            *)
                echo "unknown argument: $arg (try --help)" >&2
                exit 2
                ;;
        esac
    done
}

# service_bin: sets BIN to the absolute path of $IMAGERSYNC_BIN when given, else builds the
# release binary (into $CARGO_TARGET_DIR or target/) and uses that.
service_bin() {
    if [ -n "${IMAGERSYNC_BIN:-}" ]; then
        BIN="$IMAGERSYNC_BIN"
        [ -x "$BIN" ] || { echo "IMAGERSYNC_BIN=$BIN is not an executable" >&2; return 1; }
    else
        ensure_cargo || return 1
        echo "building the release binary (cargo build --release)" >&2
        cargo build --release --bin imagersync_service_bin >&2 || return 1
        BIN="${CARGO_TARGET_DIR:-target}/release/imagersync_service_bin"
        [ -x "$BIN" ] || { echo "cargo built no $BIN" >&2; return 1; }
    fi
    BIN="$(cd "$(dirname "$BIN")" && pwd)/$(basename "$BIN")"
}
