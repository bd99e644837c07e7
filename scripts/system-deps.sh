#!/usr/bin/env bash
# Debian packages the test suite and the local stack use: real Prometheus + Pushgateway (run by the tests on
# 127.0.0.1 and stopped by PID; promtool comes with prometheus) and docker-compose (1.x, Python: the offline
# `docker-compose config` check of deploy/compose.yaml; it needs no Docker engine and none is installed).
# The packages would start system services; policy-rc.d keeps them down.
set -euo pipefail
if command -v prometheus >/dev/null && command -v prometheus-pushgateway >/dev/null \
    && command -v promtool >/dev/null && command -v docker-compose >/dev/null; then
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "warning: prometheus/prometheus-pushgateway/docker-compose missing and not root: run 'sudo bash $0'" >&2
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
created_policy=0
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
  created_policy=1
fi
apt-get update -qq
apt-get install -y -qq --no-install-recommends prometheus prometheus-pushgateway docker-compose >/dev/null
[ "$created_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d
exit 0
