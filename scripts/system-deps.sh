#!/usr/bin/env bash
# Debian packages the test suite and the local stack use: real Prometheus + Pushgateway (run by the tests on
# 127.0.0.1 and stopped by PID). The packages would start system services; policy-rc.d keeps them down.
# gcc: the dev extra's pysaliency (gaze-metric oracle) is an sdist with a Cython extension, compiled at install.
set -euo pipefail
if command -v prometheus >/dev/null && command -v prometheus-pushgateway >/dev/null && command -v gcc >/dev/null; then
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "warning: prometheus/prometheus-pushgateway missing and not root: run 'sudo bash $0'" >&2
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
created_policy=0
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
  created_policy=1
fi
apt-get update -qq
apt-get install -y -qq --no-install-recommends prometheus prometheus-pushgateway gcc libc6-dev >/dev/null
[ "$created_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d
exit 0
