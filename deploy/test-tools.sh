#!/usr/bin/env bash
# The system tools the deployment tests drive (tests/deploy): Debian's docker-compose
# validates the compose file, nginx fronts the scale-out test. `make test` runs this
# first, so the README's test command is the whole suite on a fresh machine: it installs
# what is missing where it can (root, or sudo without a password), and otherwise stops
# with the one command that fixes it.
set -euo pipefail

missing=()
command -v docker-compose >/dev/null 2>&1 || missing+=(docker-compose)
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx)
[ ${#missing[@]} -eq 0 ] && exit 0

if ! command -v apt-get >/dev/null 2>&1; then
    echo "make test: the deployment tests need ${missing[*]}; install them with your system's" \
         "package manager (Debian/Ubuntu: apt-get install ${missing[*]}), then run make test again" >&2
    exit 1
fi
if [ "$(id -u)" -eq 0 ]; then
    sudo=""
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    sudo="sudo"
else
    echo "make test: the deployment tests need ${missing[*]}, which are not installed. Run:" >&2
    echo "    sudo apt-get update && sudo apt-get install -y --no-install-recommends ${missing[*]}" >&2
    echo "then make test again." >&2
    exit 1
fi
echo "make test: installing ${missing[*]} for the deployment tests (apt-get)"
$sudo apt-get update -qq
$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
