#!/usr/bin/env bash
# Makes sure the system tools the fault tests drive are installed, so that
# `./scripts/test.sh` works on a fresh Debian machine too: strace (system
# calls failed on purpose), mkfs.ext4 from e2fsprogs and mount/losetup/prlimit
# from util-linux and mount (a small loop-mounted disk, descriptor limits).
# Installs Debian's packages (as root or with sudo) for whatever is missing.
set -euo pipefail

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

# tool:package pairs.
needed=(strace:strace mkfs.ext4:e2fsprogs losetup:util-linux prlimit:util-linux mount:mount)
missing=()
for pair in "${needed[@]}"; do
    tool=${pair%%:*}
    package=${pair##*:}
    if ! command -v "$tool" >/dev/null && ! [ -x "/usr/sbin/$tool" ] && ! [ -x "/sbin/$tool" ]; then
        missing+=("$package")
    fi
done

if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi
if ! command -v apt-get >/dev/null; then
    echo "tools.sh: missing ${missing[*]} and no apt-get to install them" >&2
    exit 1
fi
echo "tools.sh: installing ${missing[*]}" >&2
as_root apt-get update -qq
as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
