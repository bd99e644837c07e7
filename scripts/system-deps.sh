#!/usr/bin/env bash
# Debian packages the test suite and the local stack use:
#   prometheus, prometheus-pushgateway  real Prometheus + Pushgateway (run by the tests on 127.0.0.1, stopped by
#                                       PID); promtool comes with prometheus
#   docker-compose                      1.x, Python: the offline `docker-compose config` check of
#                                       deploy/compose.yaml (no Docker engine is needed or installed)
#   orthanc, orthanc-dicomweb           a real PACS with its DICOMweb plugin (PACS round-trip tests)
#   dicom3tools                         dciodvfy, which validates every DICOM object the service writes
#   dcmtk                               storescu / echoscu against the DICOM listener
#   libgl1, libglib2.0-0                shared libraries opencv-python needs (pulled in by Quantus, a test oracle)
#   gcc, libc6-dev                      the dev extra's pysaliency (gaze-metric oracle) is an sdist whose Cython
#                                       extension is compiled when scripts/setup.sh installs it
# The packages would start system services; policy-rc.d keeps them down. Installs only what is missing.
set -euo pipefail
packages=(prometheus prometheus-pushgateway docker-compose orthanc orthanc-dicomweb dicom3tools dcmtk libgl1
  libglib2.0-0 gcc libc6-dev)
missing=()
for p in "${packages[@]}"; do
  if [ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null)" != "install ok installed" ]; then
    missing+=("$p")
  fi
done
if [ ${#missing[@]} = 0 ]; then
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "warning: Debian packages missing and not root: ${missing[*]}; run 'sudo bash $0'" >&2
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
created_policy=0
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
  created_policy=1
fi
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
[ "$created_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d
exit 0
