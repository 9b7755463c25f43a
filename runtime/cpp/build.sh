#!/usr/bin/env bash
# Build the C++ runtime (library, C API, qk_edit_cpp, test programs) on a fresh Debian machine.
#
#   runtime/cpp/build.sh              # -> runtime/cpp/build/qk_edit_cpp
#   QK_CPP_BUILD_DIR=/tmp/b QK_CPP_CMAKE_ARGS="-DQK_SANITIZE=address" runtime/cpp/build.sh
#
# What it does, each step skipped when already done (a second run only rebuilds what changed):
# 1. apt: a C++ compiler, CMake, libpng, ICU, nlohmann-json (apt-get update first);
# 2. pip: the onnxruntime wheel (its libonnxruntime.so.1.NN.0 is the library we link);
# 3. ONNX Runtime's C/C++ headers, which the wheel lacks: libonnxruntime-dev from Debian 13
#    (trixie), downloaded with its own apt source list and list folder, unpacked with dpkg -x
#    (the C API is versioned, so its 1.21 headers work with a newer library);
# 4. a folder with libonnxruntime.so and libonnxruntime.so.1 links to the wheel's library;
# 5. CMake configure and build (at most 2 parallel jobs: QK_CPP_JOBS).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
BUILD="${QK_CPP_BUILD_DIR:-$HERE/build}"
DEPS="${QK_CPP_DEPS_DIR:-$HERE/build/_deps}"
JOBS="${QK_CPP_JOBS:-2}"
PYTHON="${PYTHON:-python3}"
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python
SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"

say() { echo "[qk build.sh] $*"; }

# ---------------------------------------------------------------- 1. system packages
APT_PACKAGES=(g++ cmake make pkg-config libpng-dev libicu-dev nlohmann-json3-dev ca-certificates)
missing=()
for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    say "installing ${missing[*]}"
    $SUDO apt-get update -q
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# ---------------------------------------------------------------- 2. the onnxruntime wheel
ort_lib() {
    "$PYTHON" - <<'PY' 2>/dev/null
import glob, os, onnxruntime
libs = sorted(glob.glob(os.path.join(os.path.dirname(onnxruntime.__file__), "capi", "libonnxruntime.so.1*")))
print(libs[-1] if libs else "")
PY
}
ORT_SO="${QK_ORT_LIBRARY:-$(ort_lib || true)}"
if [ -z "$ORT_SO" ]; then
    say "installing the onnxruntime wheel"
    CONSTRAINTS=()
    [ -f "$HERE/../../constraints.txt" ] && CONSTRAINTS=(-c "$HERE/../../constraints.txt")
    "$PYTHON" -m pip install -q "${CONSTRAINTS[@]}" onnxruntime
    ORT_SO="$(ort_lib)"
fi
[ -f "$ORT_SO" ] || { say "error: no libonnxruntime.so.1.* found in the onnxruntime wheel"; exit 1; }

# ---------------------------------------------------------------- 3. ONNX Runtime headers
ORT_INC="$DEPS/onnxruntime-dev/usr/include/onnxruntime"
if [ -n "${QK_ORT_INCLUDE_DIR:-}" ]; then
    ORT_INC="$QK_ORT_INCLUDE_DIR"
elif [ -f /usr/include/onnxruntime/onnxruntime_cxx_api.h ]; then
    ORT_INC=/usr/include/onnxruntime          # the system package is installed (Debian 13 and later)
elif [ ! -f "$ORT_INC/onnxruntime_cxx_api.h" ]; then
    say "fetching libonnxruntime-dev (headers) from Debian trixie"
    APT="$DEPS/apt-trixie"
    mkdir -p "$APT/lists/partial" "$APT/archives/partial" "$APT/deb"
    # the same Debian mirror this machine already uses, with the trixie suite
    MIRROR="$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null \
              | grep -vE '^[[:space:]]*#' | grep -oE 'https?://[^ ]+/debian/?( |$)' | head -n1 | tr -d ' ' || true)"
    [ -n "$MIRROR" ] || { say "error: cannot find a Debian mirror in /etc/apt/sources.list*"; exit 1; }
    printf 'Types: deb\nURIs: %s\nSuites: trixie\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
        "${MIRROR%/}" > "$APT/trixie.sources"
    APT_OPTS=(-o "Dir::Etc::SourceList=$APT/trixie.sources" -o "Dir::Etc::SourceParts=/dev/null"
              -o "Dir::State::Lists=$APT/lists" -o "Dir::Cache::archives=$APT/archives"
              -o "APT::Sandbox::User=root")
    $SUDO apt-get "${APT_OPTS[@]}" update -q
    (cd "$APT/deb" && $SUDO apt-get "${APT_OPTS[@]}" download libonnxruntime-dev)
    rm -rf "$DEPS/onnxruntime-dev"
    dpkg -x "$APT"/deb/libonnxruntime-dev_*.deb "$DEPS/onnxruntime-dev"
    [ -f "$ORT_INC/onnxruntime_cxx_api.h" ] || { say "error: the package has no onnxruntime_cxx_api.h"; exit 1; }
fi

# ---------------------------------------------------------------- 4. the library, under the names the linker wants
ORT_LIBDIR="$DEPS/onnxruntime-lib"
mkdir -p "$ORT_LIBDIR"
ln -sfn "$ORT_SO" "$ORT_LIBDIR/libonnxruntime.so.1"
ln -sfn "$ORT_SO" "$ORT_LIBDIR/libonnxruntime.so"

# ---------------------------------------------------------------- 5. CMake
say "configuring $BUILD"
mkdir -p "$BUILD"
# shellcheck disable=SC2086
cmake -S "$HERE" -B "$BUILD" -DCMAKE_BUILD_TYPE="${QK_CPP_BUILD_TYPE:-Release}" \
    -DOnnxRuntime_INCLUDE_DIR="$ORT_INC" -DOnnxRuntime_LIBRARY="$ORT_LIBDIR/libonnxruntime.so" \
    ${QK_CPP_CMAKE_ARGS:-} >"$BUILD/configure.log" 2>&1 || { cat "$BUILD/configure.log"; exit 1; }
grep -E '^-- qk:' "$BUILD/configure.log" || true
say "building with $JOBS jobs"
cmake --build "$BUILD" -j "$JOBS"
say "done: $BUILD/qk_edit_cpp"
