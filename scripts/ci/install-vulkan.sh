#!/usr/bin/env bash
# Installs Mesa's software Vulkan driver (lavapipe) so that onnxruntime-node's WebGPU provider
# (Dawn over Vulkan) runs on a machine without a GPU: CI runs the WebGPU tests on it.
# Debian bookworm's own Mesa 22 gives Dawn no adapter (its lavapipe lacks
# shaderUniform*ArrayDynamicIndexing), so on bookworm the driver comes from bookworm-backports
# (Mesa 25), added on the same mirror that apt already uses. Idempotent and quiet:
# a second run only checks. Needs root (CI runs as root); Debian packages only.
set -euo pipefail

say() { echo "install-vulkan: $*" >&2; }

# Mesa 25 is the version checked to work (docs/webgpu-notes.md); 22.3 does not.
ready() {
  local v
  v=$(dpkg-query -W -f='${Status} ${Version}' mesa-vulkan-drivers 2>/dev/null) || return 1
  [[ $v == "install ok installed "* ]] || return 1
  dpkg --compare-versions "${v##* }" ge 25 && dpkg-query -W libvulkan1 >/dev/null 2>&1
}

if ready; then exit 0; fi
if [[ $(id -u) -ne 0 ]]; then
  say "not root: install it with 'sudo $0'"
  exit 1
fi
. /etc/os-release
export DEBIAN_FRONTEND=noninteractive
log=$(mktemp)
trap 'rm -f "$log"' EXIT
# apt's chatter goes to a log that is shown only when a step fails.
quiet_apt_get() { apt-get -q -o=Dpkg::Use-Pty=0 "$@" >>"$log" 2>&1 || { cat "$log" >&2; say "apt-get $* failed"; exit 1; }; }

quiet_apt_get update
suite=$VERSION_CODENAME
if [[ $VERSION_CODENAME == bookworm ]]; then
  suite=bookworm-backports
  if ! apt-get indextargets --format '$(RELEASE)' | grep -qx bookworm-backports; then
    mirror=$(apt-get indextargets --format '$(RELEASE) $(REPO_URI)' | awk '$1 == "bookworm" { print $2; exit }')
    if [[ -z $mirror ]]; then
      say "no apt source for bookworm found to take the mirror from"
      exit 1
    fi
    cat >/etc/apt/sources.list.d/bookworm-backports.sources <<SOURCES
Types: deb
URIs: $mirror
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SOURCES
    quiet_apt_get update
  fi
fi
quiet_apt_get install -y --no-install-recommends -t "$suite" mesa-vulkan-drivers libvulkan1
ready || { say "mesa-vulkan-drivers is still older than 25 after the install"; exit 1; }
say "$(dpkg-query -W -f='mesa-vulkan-drivers ${Version}' mesa-vulkan-drivers) installed from $suite"
