#!/usr/bin/env bash
# Debian packages the test suite uses beside the Python ones: OpenSSH's server (the remote-device tests
# start a real sshd on 127.0.0.1) and Chromium (the HTML report is rendered headless). Installed only
# when missing; where apt cannot be used (not root, no sudo, no network) it says so and the tests that
# need the package are skipped with that reason.
set -u
need=()
[ -x /usr/sbin/sshd ] || need+=(openssh-server)
command -v chromium >/dev/null || need+=(chromium)
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -eq 0 ]; then sudo=(); elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then sudo=(sudo -n); else
  echo "system-deps: cannot install ${need[*]} (not root, no sudo); the tests that need them will be skipped" >&2
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
if ! "${sudo[@]}" apt-get install -y -q "${need[@]}" >/tmp/edgevit-apt.log 2>&1; then
  "${sudo[@]}" apt-get update -q >>/tmp/edgevit-apt.log 2>&1
  "${sudo[@]}" apt-get install -y -q "${need[@]}" >>/tmp/edgevit-apt.log 2>&1 ||
    echo "system-deps: apt-get could not install ${need[*]} (see /tmp/edgevit-apt.log); those tests will be skipped" >&2
fi
exit 0
