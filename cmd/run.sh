#!/usr/bin/env bash
# Builds the service (release) and runs it in the foreground with the default config:
#   cmd/run.sh                      # 127.0.0.1:8080, configs/config.yaml
#   cmd/run.sh --address 0.0.0.0:8080 --configFile /etc/imagersync/config.yaml
# It listens on loopback unless --address says otherwise: the shipped config's service
# user has the password everyone knows (admin: admin), which the service accepts on
# loopback only (with a warning); set a password in the config before opening it up.
# Ctrl-C or SIGTERM stops it gracefully (running syncs finish first).
set -euo pipefail
cd "$(dirname "$0")/.."
. cmd/lib.sh

ensure_cargo
cmd/linux_build.sh >&2
args=("$@")
case " $* " in
*" --address"* | *" -address"*) ;;
*) args=(--address 127.0.0.1:8080 "${args[@]}") ;;
esac
case " $* " in
*" --configFile"* | *" -configFile"* | *" --config-file"*) ;;
*) args+=(--configFile configs/config.yaml) ;;
esac
exec ./build/imagersync_service_bin "${args[@]}"
