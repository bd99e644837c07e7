#!/usr/bin/env bash
# Debian packages the test suite and the local stack use: real Prometheus + Pushgateway (run by the tests on
# 127.0.0.1 and stopped by PID). The packages would start system services; policy-rc.d keeps them down.
set -euo pipefail
# libgl1 + libglib2.0-0: libGL.so.1 / libgthread-2.0.so.0, which opencv-python (a dependency of the Quantus
# oracle in the dev extra) loads at `import cv2`.
have_libs() {
  local libs
  libs=$(/sbin/ldconfig -p 2>/dev/null || ldconfig -p 2>/dev/null || true)
  grep -q 'libGL\.so\.1 ' <<<"$libs" && grep -q 'libgthread-2\.0\.so\.0 ' <<<"$libs"
}
if command -v prometheus >/dev/null && command -v prometheus-pushgateway >/dev/null && have_libs; then
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "warning: prometheus/prometheus-pushgateway/libgl1/libglib2.0-0 missing and not root: run 'sudo bash $0'" >&2
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
created_policy=0
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
  created_policy=1
fi
apt-get update -qq
apt-get install -y -qq --no-install-recommends prometheus prometheus-pushgateway libgl1 libglib2.0-0 >/dev/null
[ "$created_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d
exit 0
