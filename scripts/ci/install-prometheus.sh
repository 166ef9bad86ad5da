#!/usr/bin/env bash
# Installs Debian's prometheus package (the server and promtool) for test/prometheus-scrape.test.ts,
# which starts the binary itself (its own config, a temporary TSDB, 127.0.0.1). The package's
# postinst would start a system Prometheus: a policy-rc.d that denies it is in place for the
# install (Docker images ship one; a bare machine may not), so nothing keeps running afterwards.
# Idempotent and quiet: a second run only checks. Needs root (CI runs as root); Debian packages only.
set -euo pipefail

say() { echo "install-prometheus: $*" >&2; }

if [[ -x /usr/bin/prometheus && -x /usr/bin/promtool ]]; then exit 0; fi
if [[ $(id -u) -ne 0 ]]; then
  say "not root: install it with 'sudo $0'"
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
log=$(mktemp)
policy=/usr/sbin/policy-rc.d
added_policy=
cleanup() {
  rm -f "$log"
  if [[ -n $added_policy ]]; then rm -f "$policy"; fi
}
trap cleanup EXIT
if [[ ! -e $policy ]]; then
  printf '#!/bin/sh\n# install-prometheus.sh: no service starts during the install\nexit 101\n' >"$policy"
  chmod 755 "$policy"
  added_policy=1
fi
# apt's chatter goes to a log that is shown only when a step fails.
quiet_apt_get() { apt-get -q -o=Dpkg::Use-Pty=0 "$@" >>"$log" 2>&1 || { cat "$log" >&2; say "apt-get $* failed"; exit 1; }; }

quiet_apt_get update
quiet_apt_get install -y --no-install-recommends prometheus
say "$(/usr/bin/prometheus --version 2>&1 | sed -n 1p)"
