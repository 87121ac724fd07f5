# shellcheck shell=bash
# Shared set-up for Berth's cross builds; sourced by cross/build,
# cross/test-armv7 and cross/size-report, never run on its own.
#
# Toolchain: Debian's `rustc-web`/`cargo-web` (/usr/bin/rustc, /usr/bin/cargo),
# so the build works on a fresh Debian bookworm machine that reaches only
# Debian's archive and crates.io (rustup cannot download targets there). The
# host's rustup toolchain is neither used nor touched.
#
# The armv7 standard library must come from exactly the compiler's version.
# Two routes, chosen by BERTH_CROSS_STD (build-std | prebuilt | auto):
#   build-std  (default) `-Z build-std` from Debian's `rust-web-src` of the
#              same version, with RUSTC_BOOTSTRAP=1: std is compiled with
#              the release profile and std's `optimize_for_size` feature,
#              without its backtrace symbolizer; the shipped size is this
#              build's (cross/README.md).
#   prebuilt   Debian's `libstd-rust-web-dev:armhf` of the same version,
#              fetched through a private apt state (the machine's dpkg
#              architectures are left alone) and unpacked into a private
#              sysroot passed with --sysroot: no std build, but a std
#              compiled for speed, 320 KB more in berthd.
#   auto       prebuilt, falling back to build-std and saying why.
#
# Environment:
#   CARGO_TARGET_DIR   default <repo>/target/cross
#   BERTH_CROSS_CACHE  private apt state and sysroots, default $CARGO_TARGET_DIR/toolchain
#   BERTH_CROSS_STD    build-std (default) | prebuilt | auto
#   BERTH_CROSS_LOCKED 1 to pass --locked to cargo

set -euo pipefail

BERTH_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$BERTH_ROOT/target/cross}"
case "$CARGO_TARGET_DIR" in /*) ;; *) CARGO_TARGET_DIR="$BERTH_ROOT/$CARGO_TARGET_DIR" ;; esac
BERTH_CROSS_CACHE="${BERTH_CROSS_CACHE:-$CARGO_TARGET_DIR/toolchain}"

ARM_TRIPLE=armv7-unknown-linux-gnueabihf
X86_TRIPLE=x86_64-unknown-linux-gnu
# Intel Atom E3826 (HPE Edgeline EL10 class).
X86_CPU=silvermont
ARM_LIBROOT=/usr/arm-linux-gnueabihf
ARM_RUNNER="qemu-arm-static -L $ARM_LIBROOT"

RUSTC_BIN=/usr/bin/rustc
CARGO_BIN=/usr/bin/cargo

# Debian packages the cross builds need, by the tool they bring.
CROSS_APT_PACKAGES=(
    rustc-web                    # /usr/bin/rustc, host std
    cargo-web                    # /usr/bin/cargo
    gcc-arm-linux-gnueabihf      # linker and C compiler (ring, vendored libdbus)
    libc6-dev-armhf-cross        # target glibc, also the qemu library root
    binutils-arm-linux-gnueabihf # arm-linux-gnueabihf-strip
    qemu-user-static             # qemu-arm-static runner
    binutils                     # strip for x86_64
    jq                           # reading cargo's JSON output
    file                         # checking test binaries are ARM code
)

cross_log() { printf 'cross: %s\n' "$*" >&2; }
cross_die() {
    printf 'cross: error: %s\n' "$*" >&2
    exit 1
}

# cross_pkg_installed PKG: true when dpkg has PKG fully installed.
cross_pkg_installed() {
    [ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" = "install ok installed" ]
}

# cross_apt_install PKG...: install what is missing, updating the index once
# if the first attempt fails.
cross_apt_install() {
    local missing=() p
    for p in "$@"; do
        cross_pkg_installed "$p" || missing+=("$p")
    done
    [ "${#missing[@]}" -eq 0 ] && return 0
    if [ "$(id -u)" -ne 0 ]; then
        cross_die "missing Debian packages: ${missing[*]} (run as root, or apt-get install them)"
    fi
    cross_log "installing ${missing[*]}"
    local apt=(apt-get -o DPkg::Lock::Timeout=600 -y --no-install-recommends)
    if ! DEBIAN_FRONTEND=noninteractive "${apt[@]}" install "${missing[@]}" >&2; then
        cross_log "install failed; refreshing the package index and retrying"
        apt-get -o DPkg::Lock::Timeout=600 update >&2 || cross_log "apt-get update reported errors"
        DEBIAN_FRONTEND=noninteractive "${apt[@]}" install "${missing[@]}" >&2 ||
            cross_die "apt-get install ${missing[*]} failed"
    fi
}

# cross_toolchain: check the Debian compiler and set RUST_DEB_* facts.
cross_toolchain() {
    cross_apt_install "${CROSS_APT_PACKAGES[@]}"
    [ -x "$RUSTC_BIN" ] || cross_die "$RUSTC_BIN is missing although rustc-web is installed"
    [ -x "$CARGO_BIN" ] || cross_die "$CARGO_BIN is missing although cargo-web is installed"
    # Which Debian source package owns the compiler decides the std packages.
    local owner
    owner="$(dpkg-query -S "$RUSTC_BIN" 2>/dev/null | cut -d: -f1)"
    case "$owner" in
    rustc-web)
        RUST_DEB_STD_PKG=libstd-rust-web-dev
        RUST_DEB_SRC_PKG=rust-web-src
        ;;
    rustc)
        RUST_DEB_STD_PKG=libstd-rust-dev
        RUST_DEB_SRC_PKG=rust-src
        ;;
    *) cross_die "$RUSTC_BIN belongs to '$owner', expected rustc-web" ;;
    esac
    RUST_DEB_VERSION="$(dpkg-query -W -f='${Version}' "$owner")"
    RUST_RELEASE="$("$RUSTC_BIN" --version | awk '{print $2}')"
    # A rustup or other toolchain must not leak into these builds.
    unset RUSTFLAGS CARGO_ENCODED_RUSTFLAGS RUSTUP_TOOLCHAIN RUSTC_WRAPPER CARGO_BUILD_RUSTC_WRAPPER
    export RUSTC="$RUSTC_BIN" RUSTDOC=/usr/bin/rustdoc CARGO="$CARGO_BIN"
    export CARGO_TARGET_ARMV7_UNKNOWN_LINUX_GNUEABIHF_LINKER=arm-linux-gnueabihf-gcc
    export CARGO_TARGET_ARMV7_UNKNOWN_LINUX_GNUEABIHF_RUNNER="$ARM_RUNNER"
    export CC_armv7_unknown_linux_gnueabihf=arm-linux-gnueabihf-gcc
    export AR_armv7_unknown_linux_gnueabihf=arm-linux-gnueabihf-ar
    export CFLAGS_x86_64_unknown_linux_gnu="-march=$X86_CPU"
    export CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS="-C target-cpu=$X86_CPU"
    cross_log "compiler: $("$RUSTC_BIN" --version) (Debian $owner $RUST_DEB_VERSION)"
}

# cross_arm_std_prebuilt: unpack the armhf std of the compiler's exact Debian
# version into a private sysroot; prints the reason and fails otherwise.
cross_arm_std_prebuilt() {
    local sysroot="$BERTH_CROSS_CACHE/sysroot-$RUST_DEB_VERSION"
    if [ -f "$sysroot/.complete" ]; then
        ARM_SYSROOT="$sysroot"
        return 0
    fi
    local apt_dir="$BERTH_CROSS_CACHE/apt-armhf"
    mkdir -p "$apt_dir/lists/partial" "$apt_dir/archives/partial" "$BERTH_CROSS_CACHE/debs"
    local apt=(apt-get -o "Dir::State::Lists=$apt_dir/lists" -o "Dir::Cache=$apt_dir"
        -o "APT::Architecture=armhf" -o "APT::Architectures::=armhf" -o Debug::NoLocking=1)
    local log="$BERTH_CROSS_CACHE/apt-armhf-update.log"
    cross_log "fetching the armhf package index (private apt state in $apt_dir)"
    "${apt[@]}" update >"$log" 2>&1 || true
    if grep -q '^E:' "$log"; then
        cross_log "the armhf package index did not download completely:"
        grep -E '^(E:|Err:)|unexpected size' "$log" | sed 's/^/cross:   /' >&2
    fi
    local want="$RUST_DEB_STD_PKG:armhf=$RUST_DEB_VERSION"
    if ! (cd "$BERTH_CROSS_CACHE/debs" && "${apt[@]}" download "$want") >>"$log" 2>&1; then
        cross_log "apt-get download $want failed (version missing from the armhf index above); see $log"
        return 1
    fi
    local debs=("$BERTH_CROSS_CACHE/debs/${RUST_DEB_STD_PKG}_${RUST_DEB_VERSION//:/%3a}_armhf.deb")
    local deb="${debs[0]}"
    [ -f "$deb" ] || {
        cross_log "apt-get download left no $deb"
        return 1
    }
    local tmp="$sysroot.tmp"
    rm -rf "$tmp"
    mkdir -p "$tmp/lib/rustlib"
    dpkg -x "$deb" "$tmp/unpacked"
    [ -d "$tmp/unpacked/usr/lib/rustlib/$ARM_TRIPLE/lib" ] || {
        cross_log "$deb holds no usr/lib/rustlib/$ARM_TRIPLE/lib"
        return 1
    }
    mv "$tmp/unpacked/usr/lib/rustlib/$ARM_TRIPLE" "$tmp/lib/rustlib/$ARM_TRIPLE"
    rm -rf "$tmp/unpacked"
    # Proc macros and build scripts are host code and still need the host std.
    ln -s "/usr/lib/rustlib/$X86_TRIPLE" "$tmp/lib/rustlib/$X86_TRIPLE"
    # Prove the std matches this compiler exactly before trusting it.
    local probe="$BERTH_CROSS_CACHE/std-probe"
    mkdir -p "$probe"
    printf 'fn main() { println!("std ok"); }\n' >"$probe/main.rs"
    if ! "$RUSTC_BIN" --edition 2021 --target "$ARM_TRIPLE" --sysroot "$tmp" \
        -C linker=arm-linux-gnueabihf-gcc -o "$probe/main" "$probe/main.rs" >"$probe/log" 2>&1; then
        cross_log "the armhf std $deb does not link with $RUSTC_BIN ($RUST_RELEASE):"
        sed 's/^/cross:   /' "$probe/log" >&2
        return 1
    fi
    rm -rf "$sysroot"
    mv "$tmp" "$sysroot"
    touch "$sysroot/.complete"
    ARM_SYSROOT="$sysroot"
}

# cross_arm_std: choose the armv7 std route; sets ARM_CARGO_ARGS and the
# target's rustflags.
cross_arm_std() {
    local mode="${BERTH_CROSS_STD:-build-std}"
    ARM_CARGO_ARGS=()
    case "$mode" in
    auto | prebuilt)
        if cross_arm_std_prebuilt; then
            cross_log "armv7 std: prebuilt $RUST_DEB_STD_PKG:armhf $RUST_DEB_VERSION in $ARM_SYSROOT"
            export CARGO_TARGET_ARMV7_UNKNOWN_LINUX_GNUEABIHF_RUSTFLAGS="--sysroot=$ARM_SYSROOT"
            return 0
        fi
        [ "$mode" = prebuilt ] && cross_die "the prebuilt armv7 std is not available (BERTH_CROSS_STD=prebuilt)"
        cross_log "falling back to -Z build-std from $RUST_DEB_SRC_PKG $RUST_DEB_VERSION"
        ;;
    build-std) ;;
    *) cross_die "BERTH_CROSS_STD must be build-std, prebuilt or auto, not '$mode'" ;;
    esac
    cross_apt_install "$RUST_DEB_SRC_PKG"
    local src_version
    src_version="$(dpkg-query -W -f='${Version}' "$RUST_DEB_SRC_PKG")"
    [ "$src_version" = "$RUST_DEB_VERSION" ] ||
        cross_die "$RUST_DEB_SRC_PKG is $src_version but the compiler is $RUST_DEB_VERSION; install the same version"
    [ -f /usr/lib/rustlib/src/rust/library/Cargo.lock ] ||
        cross_die "/usr/lib/rustlib/src/rust/library is missing; reinstall $RUST_DEB_SRC_PKG"
    export RUSTC_BOOTSTRAP=1
    unset CARGO_TARGET_ARMV7_UNKNOWN_LINUX_GNUEABIHF_RUSTFLAGS
    # optimize_for_size: std's smaller algorithms (sorting, formatting).
    # Naming only it also leaves out std's default `backtrace` feature (its
    # symbolizer: of no use in a stripped binary). Panics still print their
    # message (not `panic_immediate_abort`).
    ARM_CARGO_ARGS=(-Z "build-std=std,panic_abort" -Z "build-std-features=optimize_for_size")
    cross_log "armv7 std: built from $RUST_DEB_SRC_PKG $RUST_DEB_VERSION (-Z build-std, optimize_for_size)"
}

# cross_target_args TRIPLE: cargo arguments for that target (std route).
cross_target_args() {
    local args=(--target "$1")
    [ "${BERTH_CROSS_LOCKED:-0}" = 1 ] && args+=(--locked)
    if [ "$1" = "$ARM_TRIPLE" ]; then
        args+=("${ARM_CARGO_ARGS[@]}")
    fi
    printf '%s\n' "${args[@]}"
}

# cross_bins: the workspace's shipped binaries that exist right now, one per
# line (berthd, berth, berth-vendor), as "package binary".
cross_bins() {
    (cd "$BERTH_ROOT" && "$CARGO_BIN" metadata --no-deps --format-version 1) |
        jq -r '.packages[] | .name as $p | .targets[]
            | select(.kind | index("bin"))
            | select(.name == "berthd" or .name == "berth" or .name == "berth-vendor")
            | "\($p) \(.name)"'
}

# cross_select_bins NAME...: keep in the array `bins` (lines as cross_bins
# prints them) only the named binaries; an unknown name is an error.
cross_select_bins() {
    local name line hit kept=()
    for name in "$@"; do
        hit=""
        for line in "${bins[@]}"; do
            [ "${line#* }" = "$name" ] && hit="$line"
        done
        [ -n "$hit" ] || cross_die "no binary '$name' (the workspace has: ${bins[*]#* })"
        kept+=("$hit")
    done
    bins=("${kept[@]}")
}

# cross_strip TRIPLE FILE OUT: a stripped copy of FILE at OUT.
cross_strip() {
    local strip=strip
    [ "$1" = "$ARM_TRIPLE" ] && strip=arm-linux-gnueabihf-strip
    "$strip" --strip-all -o "$3" "$2"
}

# cross_triple NAME: accept short names for the two targets.
cross_triple() {
    case "$1" in
    armv7 | arm | "$ARM_TRIPLE") echo "$ARM_TRIPLE" ;;
    x86_64 | x86 | silvermont | "$X86_TRIPLE") echo "$X86_TRIPLE" ;;
    *) cross_die "unknown target '$1' (armv7 or x86_64)" ;;
    esac
}
