#!/usr/bin/env bash
# Builds the service (release) and runs it in the foreground with the default config:
#   cmd/run.sh                      # 0.0.0.0:8080, configs/config.yaml
#   cmd/run.sh --address 127.0.0.1:9090 --configFile /etc/imagersync/config.yaml
# Ctrl-C or SIGTERM stops it gracefully (running syncs finish first).
set -euo pipefail
cd "$(dirname "$0")/.."
. cmd/lib.sh

ensure_cargo
cmd/linux_build.sh >&2
exec ./build/imagersync_service_bin --address 0.0.0.0:8080 --configFile configs/config.yaml "$@"
