#!/usr/bin/env bash
# Builds the release binary and copies it to build/imagersync_service_bin, the file the
# systemd unit (build/imagersync-service.service) installs.
#   bash cmd/linux_build.sh            binary only
#   bash cmd/linux_build.sh --image    also the container image (podman, else docker)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

build_image=false
for arg in "$@"; do
    case "$arg" in
        --image) build_image=true ;;
        -h|--help) sed -n '2,5p' "$0"; exit 0 ;;
        *) echo "linux_build.sh: unknown argument $arg (try --help)" >&2; exit 2 ;;
    esac
done

# --locked: build exactly the dependency versions in Cargo.lock.
cargo build --release --locked
target_dir="${CARGO_TARGET_DIR:-target}"
install -m 0755 "$target_dir/release/imagersync_service_bin" build/imagersync_service_bin
echo "built build/imagersync_service_bin: $(build/imagersync_service_bin --version)"

if "$build_image"; then
    engine="$(command -v podman || command -v docker || true)"
    if [ -z "$engine" ]; then
        echo "linux_build.sh: --image needs podman or docker on PATH" >&2
        exit 1
    fi
    version="$(build/imagersync_service_bin --version | awk '{print $2}')"
    "$engine" build -f build/Containerfile -t "imagersync:$version" -t imagersync:latest .
    echo "built image imagersync:$version"
fi
