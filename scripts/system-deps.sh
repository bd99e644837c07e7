#!/usr/bin/env bash
# Debian packages the test suite and the local stack use: real Prometheus + Pushgateway and Orthanc (a PACS,
# with its DICOMweb plugin) run by the tests on 127.0.0.1 and stopped by PID; dciodvfy (dicom3tools) validates
# the DICOM result objects; dcmtk's storescu/echoscu talk to the DICOM listener. The packages would start
# system services; policy-rc.d keeps them down.
set -euo pipefail
have_orthanc_dicomweb() { ls /usr/share/orthanc/plugins/libOrthancDicomWeb.so* >/dev/null 2>&1; }
if command -v prometheus >/dev/null && command -v prometheus-pushgateway >/dev/null \
  && command -v dciodvfy >/dev/null && { command -v Orthanc >/dev/null || [ -x /usr/sbin/Orthanc ]; } && have_orthanc_dicomweb \
  && command -v storescu >/dev/null; then
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "warning: prometheus/pushgateway/dicom3tools/orthanc/dcmtk missing and not root: run 'sudo bash $0'" >&2
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
created_policy=0
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
  created_policy=1
fi
apt-get update -qq
apt-get install -y -qq --no-install-recommends prometheus prometheus-pushgateway \
  dicom3tools orthanc orthanc-dicomweb dcmtk >/dev/null
[ "$created_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d
exit 0
