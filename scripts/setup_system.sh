#!/usr/bin/env bash
# Install the Debian packages the project needs, only when one is missing (idempotent, seconds when done).
set -euo pipefail
# xvfb, xauth and imagemagick: the desktop test photographs the real QGIS window under a virtual screen.
PKGS="qgis python3-qgis python3-gdal gdal-bin python3-venv xvfb xauth imagemagick"
missing=""
for p in $PKGS; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
  echo "setup: installing Debian packages:$missing"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing
fi
