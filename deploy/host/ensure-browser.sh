#!/usr/bin/env bash
# Make sure headless Chromium is installed for the browser tests (JupyterLab through the gateway).
#
# Idempotent: when /usr/bin/chromium runs, this exits at once. Otherwise it installs Debian's
# `chromium` package (Playwright drives it with executable_path="/usr/bin/chromium"; it cannot
# download browsers of its own here). Must run as root for the install.
#
# Environment:
#   CHROMIUM   the browser to check (default /usr/bin/chromium)
set -euo pipefail

CHROMIUM=${CHROMIUM:-/usr/bin/chromium}

say() { echo "ensure-browser: $*"; }
die() { echo "ensure-browser: error: $*" >&2; exit 1; }

works() { [ -x "$CHROMIUM" ] && "$CHROMIUM" --headless --no-sandbox --disable-gpu --version >/dev/null 2>&1; }

if works; then
    say "$("$CHROMIUM" --version 2>/dev/null)"
    exit 0
fi
[ "$(id -u)" -eq 0 ] || die "$CHROMIUM is missing and installing it needs root: apt-get install chromium"
say "installing Debian's chromium"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends chromium fonts-liberation >/dev/null
works || die "$CHROMIUM does not run after installing chromium"
say "$("$CHROMIUM" --version 2>/dev/null)"
