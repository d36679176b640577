#!/usr/bin/env bash
# The system tools the suite drives: Debian's docker-compose validates the compose file,
# nginx fronts the scale-out test (tests/deploy), and a headless Chromium with its driver
# runs the playground page's browser tests (tests/service/test_playground.py), which
# check accessibility with axe-core from the npm registry. `make test` runs this first,
# so the README's test command is the whole suite on a fresh machine: it installs what is
# missing where it can (root, or sudo without a password), and otherwise stops with the
# one command that fixes it.
set -euo pipefail
cd "$(dirname "$0")/.."

# axe-core, the accessibility rules engine, as the npm registry ships it (one file; no
# node needed: the browser runs it). Pinned, and checked against the registry's digest.
AXE_VERSION=4.10.3
AXE_DIR=.cache/axe-core-$AXE_VERSION
if [ ! -s "$AXE_DIR/axe.min.js" ]; then
    echo "make test: fetching axe-core $AXE_VERSION from the npm registry"
    mkdir -p "$AXE_DIR"
    python3 - "$AXE_VERSION" "$AXE_DIR" <<'PY'
import base64, hashlib, io, json, sys, tarfile, urllib.request

version, out = sys.argv[1], sys.argv[2]
meta = json.load(urllib.request.urlopen(f"https://registry.npmjs.org/axe-core/{version}", timeout=60))
blob = urllib.request.urlopen(meta["dist"]["tarball"], timeout=120).read()
algo, _, digest = meta["dist"]["integrity"].partition("-")
if base64.b64encode(hashlib.new(algo, blob).digest()).decode() != digest:
    sys.exit("axe-core: the tarball does not match the registry's integrity digest")
with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
    data = tar.extractfile("package/axe.min.js").read()
open(f"{out}/axe.min.js", "wb").write(data)
PY
fi

missing=()
command -v docker-compose >/dev/null 2>&1 || missing+=(docker-compose)
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
[ ${#missing[@]} -eq 0 ] && exit 0

if ! command -v apt-get >/dev/null 2>&1; then
    echo "make test: the suite needs ${missing[*]}; install them with your system's" \
         "package manager (Debian/Ubuntu: apt-get install ${missing[*]}), then run make test again" >&2
    exit 1
fi
if [ "$(id -u)" -eq 0 ]; then
    sudo=""
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    sudo="sudo"
else
    echo "make test: the suite needs ${missing[*]}, which are not installed. Run:" >&2
    echo "    sudo apt-get update && sudo apt-get install -y --no-install-recommends ${missing[*]}" >&2
    echo "then make test again." >&2
    exit 1
fi
echo "make test: installing ${missing[*]} for the deployment and browser tests (apt-get)"
$sudo apt-get update -qq
$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
