#!/usr/bin/env bash
# Installs and starts the Debian packages and services the project needs.
# Idempotent: installs only what is missing, starts RabbitMQ only when nothing
# listens on 5672. Runs as root (or with sudo available).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"

# Each line: PACKAGE # why.
missing=()
while read -r pkg _; do
  case "$pkg" in ''|'#'*) continue ;; esac
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done < "$here/scripts/debian-packages.txt"
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

port_open() { (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null; }
if ! port_open; then
  echo "setup: starting rabbitmq-server"
  $SUDO rabbitmq-server -detached
  for _ in $(seq 1 120); do
    if port_open && $SUDO rabbitmqctl -q status >/dev/null 2>&1; then break; fi
    sleep 1
  done
  port_open || { echo "setup: rabbitmq-server did not come up on 5672" >&2; exit 1; }
fi
# Wait until the broker answers (it can listen before it accepts logins).
for _ in $(seq 1 60); do
  $SUDO rabbitmqctl -q await_startup >/dev/null 2>&1 && break
  sleep 1
done
