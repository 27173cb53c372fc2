#!/usr/bin/env bash
# Runs every test (unit and integration) against real registries.
# Installs docker-registry, skopeo, htpasswd, wrk, systemd-analyze, chromium and
# chromedriver first when they are missing (Debian).
# Extra arguments go to `cargo test`, e.g.  cmd/test.sh --test it sync:: -- --nocapture
set -euo pipefail
cd "$(dirname "$0")/.."
. cmd/lib.sh

ensure_tools
ensure_browser
ensure_cargo
exec cargo test --all-targets "$@"
