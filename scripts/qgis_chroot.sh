#!/usr/bin/env bash
# Today's QGIS from Debian's own packages, in a cached chroot (ENVIRONMENT.md "Today's QGIS in a chroot").
#
#   scripts/qgis_chroot.sh build [SUITE]        build the chroot once (sid: QGIS 3.44, trixie: QGIS 3.40)
#   scripts/qgis_chroot.sh test  [SUITE] ZIP    install the plugin from ZIP there as a user would, run the
#                                               QGIS tests and a qgis_process super-resolve
#   scripts/qgis_chroot.sh run   [SUITE] CMD    one command in it, in the last test's folder (to look closer)
#
# The chroot lives outside the repository (LCMSR_CHROOT_CACHE, default /var/cache/lcmsr-qgis-SUITE) so a
# clean clone on the same machine reuses it.  It is built in SUITE.partial and renamed into place only once
# every package is in, so an interrupted build is never reused.  Everything mounted is unmounted on exit.
# What runs inside is scripts/qgis_chroot_run.sh.
set -euo pipefail
ACTION=${1:?usage: qgis_chroot.sh build|test|run [SUITE] [ZIP|CMD]}
SUITE=${2:-sid}
ZIP=${3:-}
REPO=$(cd "$(dirname "$0")/.." && pwd)
R=${LCMSR_CHROOT_CACHE:-/var/cache/lcmsr-qgis-$SUITE}
# Debian's packages: QGIS and GDAL, and a PyTorch built for that suite's Python.  pytest-qgis is the one
# test tool Debian does not package (pip, pinned, into the chroot's /usr/local).
PACKAGES="qgis python3-qgis qgis-providers gdal-bin python3-gdal python3-numpy python3-tqdm python3-pytest
  python3-pip xvfb xauth unzip"
# PyTorch: Debian's python3-torch where it is new enough for the backend (torch >= 2.11: sid has 2.14), else
# (trixie: 2.6) the plugin's own installer puts a build for that Python into the profile, as a user's would.
case "$SUITE" in
  trixie|bookworm) TORCH_SOURCE=plugin ;;
  *) TORCH_SOURCE=debian; PACKAGES="$PACKAGES python3-torch python3-safetensors" ;;
esac
PIP_TOOLS="pytest-qgis==2.1.0 pytest-timeout"
STAMP_TEXT="$SUITE $(echo $PACKAGES) $PIP_TOOLS"

# The host's Debian source (deb822 or one-line format): the chroot uses the same mirror.
mirror() {
  local uri
  uri=$(grep -h -E '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2}' | grep -v security | head -1 || true)
  [ -n "$uri" ] || uri=$(grep -h -E '^deb ' /etc/apt/sources.list 2>/dev/null | awk '{print $2}' | head -1 || true)
  echo "${uri:-http://deb.debian.org/debian}"
}

MOUNTED=()
unmount_all() {
  local i
  for ((i = ${#MOUNTED[@]} - 1; i >= 0; i--)); do
    umount -l "${MOUNTED[$i]}" 2>/dev/null || true
  done
  MOUNTED=()
}
trap unmount_all EXIT INT TERM

release_mounts() {   # whatever an earlier, killed run left mounted under ROOT: never delete through a mount
  local m
  for m in $(awk -v r="$1/" 'index($2, r) == 1 {print $2}' /proc/mounts | sort -r); do umount -l "$m" || true; done
}

mount_into() {   # mount_into ROOT: proc, sys, dev, dev/pts (each recorded for the trap)
  local root=$1
  mount -t proc proc "$root/proc" && MOUNTED+=("$root/proc")
  mount -t sysfs sys "$root/sys" && MOUNTED+=("$root/sys")
  mount --bind /dev "$root/dev" && MOUNTED+=("$root/dev")
  mount --bind /dev/pts "$root/dev/pts" && MOUNTED+=("$root/dev/pts")
}

build() {
  if [ -f "$R/.lcmsr-chroot" ] && [ "$(cat "$R/.lcmsr-chroot")" = "$STAMP_TEXT" ]; then
    echo "chroot: $R is ready (QGIS $(chroot "$R" dpkg-query -W -f='${Version}' qgis))"
    return
  fi
  [ "$(id -u)" -eq 0 ] || { echo "chroot: building $R needs root (debootstrap, mount)" >&2; exit 1; }
  command -v debootstrap >/dev/null || {
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap; }
  local t0=$SECONDS part="$R.partial"
  release_mounts "$part"
  rm -rf --one-file-system "$part" && mkdir -p "$(dirname "$R")"
  echo "chroot: debootstrap $SUITE from $(mirror) into $part"
  debootstrap --variant=minbase --include=ca-certificates "$SUITE" "$part" "$(mirror)" >"$part.log" 2>&1 \
    || { tail -5 "$part.log" >&2; exit 1; }
  echo 'Acquire::Check-Valid-Until "false";' >"$part/etc/apt/apt.conf.d/99novalid"
  printf 'path-exclude /usr/share/doc/*\npath-exclude /usr/share/man/*\npath-exclude /usr/share/locale/*\n' \
    >"$part/etc/dpkg/dpkg.cfg.d/01nodoc"
  cp /etc/resolv.conf "$part/etc/"
  # The chroot trusts the CAs the host's administrator added (a TLS-inspecting proxy's, say), nothing more.
  cp /usr/local/share/ca-certificates/*.crt "$part/usr/local/share/ca-certificates/" 2>/dev/null || true
  mount_into "$part"
  chroot "$part" sh -c "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
    --no-install-recommends $(echo $PACKAGES) && apt-get clean && update-ca-certificates" >>"$part.log" 2>&1 || { tail -20 "$part.log" >&2; exit 1; }
  chroot "$part" env -u PIP_FIND_LINKS -u PIP_CERT python3 -m pip install -q --break-system-packages --no-deps $PIP_TOOLS >>"$part.log" 2>&1 \
    || { tail -20 "$part.log" >&2; exit 1; }
  unmount_all
  echo "$STAMP_TEXT" >"$part/.lcmsr-chroot"
  release_mounts "$R"
  rm -rf --one-file-system "$R" && mv "$part" "$R" && mv "$part.log" "$R.log"
  echo "chroot: built $R in $((SECONDS - t0)) s ($(du -sh "$R" | cut -f1)), QGIS $(chroot "$R" dpkg-query -W -f='${Version}' qgis)"
}

run_tests() {
  [ -f "$ZIP" ] || { echo "chroot: no plugin zip '$ZIP' (make package)" >&2; exit 1; }
  build
  local t0=$SECONDS work=/root/lcmsr-run
  rm -rf "${R:?}$work" && mkdir -p "$R$work/config/profiles/default/python/plugins" "$R$work/out"
  # As a new user: "Install from ZIP" puts the plugin into the profile's python/plugins, nothing else.
  unzip -q "$ZIP" -d "$R$work/config/profiles/default/python/plugins"
  # The tests read the plugin's files and the sample rasters where a checkout has them: here, the zip's.
  cp -r "$REPO/tests" "$REPO/pytest.ini" "$R$work/"
  rm -rf "$R$work/tests/backend" "$R$work/tests/robustness" "$R$work/tests/process"
  ln -s config/profiles/default/python/plugins/lcmsr_qgis "$R$work/lcmsr_qgis"
  ln -s config/profiles/default/python/plugins/lcmsr_qgis/resources "$R$work/resources"
  if [ -d "$REPO/build/metric-weights" ]; then cp -rL "$REPO/build/metric-weights" "$R$work/metric-weights"; fi
  echo "TORCH_SOURCE=$TORCH_SOURCE" >"$R$work/run.sh"
  cat "$REPO/scripts/qgis_chroot_run.sh" >>"$R$work/run.sh"
  release_mounts "$R"
  mount_into "$R"
  local rc=0
  chroot "$R" bash "$work/run.sh" || rc=$?
  unmount_all
  echo "chroot: QGIS tests on $SUITE finished with exit status $rc in $((SECONDS - t0)) s"
  return $rc
}

run_command() {   # run_command CMD: one command in the chroot (mounted for it), e.g. to look at a failure
  build
  release_mounts "$R"
  mount_into "$R"
  local rc=0
  chroot "$R" bash -c "cd /root/lcmsr-run 2>/dev/null || cd /root; $ZIP" || rc=$?
  unmount_all
  return $rc
}

case "$ACTION" in
  build) build ;;
  test) run_tests ;;
  run) run_command ;;
  *) echo "usage: qgis_chroot.sh build|test|run [SUITE] [ZIP|CMD]" >&2; exit 2 ;;
esac
