#!/usr/bin/env bash
# Debian's ROCm runtime (bookworm: HIP 5.2), unpacked under target/rocm without root:
# HIP's headers and libamdhip64 to build `--features rocm` (hip-sys links it), and
# hiprtc (part of libamdhip64 in 5.x) with its compiler (comgr, LLVM 15) for the
# kernels' compile test. No AMD GPU is needed for either. About 45 MB of packages.
#
# Prints two lines for the caller to export:
#   HIP_PATH=...         what hip-sys's build script looks under (include/, lib/)
#   LLMD_ROCM_LIB=...    the libraries' directory, for LD_LIBRARY_PATH (the linker
#                        finds libamdhip64's own dependencies there, and so do tests)
set -euo pipefail
cd "$(dirname "$0")/../.."
dest=$PWD/target/rocm
pkgs="libamdhip64-5 libamdhip64-dev libhiprtc-builtins5 libamd-comgr2 libhsa-runtime64-1 libhsakmt1 libllvm15 libnuma1"
if [ ! -f "$dest/.done" ]; then
    rm -rf "$dest"
    mkdir -p "$dest/debs" "$dest/hip"
    # apt-get download needs no root; an empty package list (a fresh image) needs an
    # update first, which does.
    if ! (cd "$dest/debs" && apt-get download $pkgs) >&2; then
        apt-get update -qq >&2
        (cd "$dest/debs" && apt-get download $pkgs) >&2
    fi
    for deb in "$dest"/debs/*.deb; do
        dpkg-deb -x "$deb" "$dest/root"
    done
    ln -s ../root/usr/include "$dest/hip/include"
    ln -s ../root/usr/lib/x86_64-linux-gnu "$dest/hip/lib"
    rm -rf "$dest/debs"
    touch "$dest/.done"
fi
echo "HIP_PATH=$dest/hip"
echo "LLMD_ROCM_LIB=$dest/root/usr/lib/x86_64-linux-gnu"
