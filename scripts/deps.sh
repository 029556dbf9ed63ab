#!/usr/bin/env bash
# Installs the Debian packages Detour's make targets need, only those missing, and says which.
# Usage: scripts/deps.sh COMMAND=PACKAGE ...  (COMMAND may be a path, for packages of no command)
set -euo pipefail
missing=()
for pair in "$@"; do
  cmd=${pair%%=*} pkg=${pair#*=}
  case $cmd in
  /*) [ -e "$cmd" ] || missing+=("$pkg") ;;
  *) command -v "$cmd" >/dev/null 2>&1 || [ -x "/usr/sbin/$cmd" ] || missing+=("$pkg") ;;
  esac
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "detour: missing packages: ${missing[*]}; install them (Debian/Ubuntu: apt-get install ${missing[*]}) and run again" >&2
  exit 1
fi
echo "detour: installing missing Debian packages: ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
