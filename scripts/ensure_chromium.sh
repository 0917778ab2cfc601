#!/usr/bin/env bash
# Installs Debian's Chromium for the browser test when it is missing and we may (root + apt).
# Never lets a tool download its own browser.
set -u
command -v chromium >/dev/null 2>&1 && exit 0
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing Debian chromium for the browser test (apt-get install -y chromium)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null && exit 0
fi
exit 1
