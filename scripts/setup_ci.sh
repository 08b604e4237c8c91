#!/usr/bin/env bash
# System packages the test suite needs besides Python ones, installed with apt-get (Debian 12):
#   chromium   tests/test_report.py opens report.html in headless Chromium and checks its charts render
# Idempotent: whatever is already installed is left alone. Needs root and network access to Debian.
set -euo pipefail

need_pkgs=()
command -v chromium >/dev/null || need_pkgs+=(chromium)
if [ ${#need_pkgs[@]} -eq 0 ]; then
    echo "[setup_ci] nothing to install ($(chromium --version 2>/dev/null | head -1))"
    exit 0
fi
[ "$(id -u)" -eq 0 ] || { echo "setup_ci: installing ${need_pkgs[*]} needs root: run as root, or apt-get install them first" >&2; exit 1; }
echo "[setup_ci] apt-get install ${need_pkgs[*]}"
apt-get update -qq || { echo "setup_ci: apt-get update failed (no network to the Debian mirror?)" >&2; exit 1; }
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null \
    || { echo "setup_ci: apt-get install ${need_pkgs[*]} failed" >&2; exit 1; }
chromium --version 2>/dev/null | head -1
