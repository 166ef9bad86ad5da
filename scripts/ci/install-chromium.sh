#!/usr/bin/env bash
# Installs Debian's chromium package for test/playground-browser.test.ts, which drives it headless
# through playwright-core (whose own browser download cannot work offline). Idempotent and quiet:
# a second run only checks. Needs root (CI runs as root); Debian packages only.
set -euo pipefail

say() { echo "install-chromium: $*" >&2; }

if [[ -x /usr/bin/chromium ]]; then exit 0; fi
if [[ $(id -u) -ne 0 ]]; then
  say "not root: install it with 'sudo $0'"
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
log=$(mktemp)
trap 'rm -f "$log"' EXIT
# apt's chatter goes to a log that is shown only when a step fails.
quiet_apt_get() { apt-get -q -o=Dpkg::Use-Pty=0 "$@" >>"$log" 2>&1 || { cat "$log" >&2; say "apt-get $* failed"; exit 1; }; }

quiet_apt_get update
quiet_apt_get install -y --no-install-recommends chromium
say "$(/usr/bin/chromium --version 2>/dev/null | sed -n 1p)"
