#!/usr/bin/env bash
# Installs the Debian packages the build targets need, when missing:
#   gcc-aarch64-linux-gnu   cross compiler and linker for target=aarch64 (export_library);
#   libc6-dev-arm64-cross   its C runtime start files (crti.o), which --no-install-recommends
#                           leaves out: without them every aarch64 link fails.
# Runs apt-get only as root; otherwise prints what to install and carries on (the aarch64
# build then fails with a one-line error naming the package, and its tests are skipped).
set -u
missing=()
command -v aarch64-linux-gnu-gcc >/dev/null 2>&1 || missing+=(gcc-aarch64-linux-gnu)
[ -e /usr/aarch64-linux-gnu/lib/crti.o ] || missing+=(libc6-dev-arm64-cross)
if [ ${#missing[@]} -eq 0 ]; then
    echo "system packages: all present"
    exit 0
fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "system packages: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
        || echo "system packages: apt-get failed; install ${missing[*]} by hand" >&2
else
    echo "system packages: missing ${missing[*]}; install with: sudo apt-get install ${missing[*]}" >&2
fi
exit 0
