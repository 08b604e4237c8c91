#!/usr/bin/env bash
# Build the aarch64 environment that `edgecomp bench --target arm64` (and android) runs artifacts in:
#   ENV/rootfs         Debian 12 (bookworm) arm64 userland with python3.11, unpacked with dpkg -x
#   ENV/rootfs/opt/edgecomp/site   aarch64 wheels: numpy, onnxruntime, ai-edge-litert (pip --target)
#   ENV/insn_count.so  the TCG instruction-count plugin (edgecomp/bench/insn_count.c, shipped in the package)
#   ENV/COMPLETE       written last; edgecomp.bench.arm64.env_present() checks it
# ENV defaults to ${EDGECOMP_CACHE:-$HOME/.cache/edgecomp}/arm64 (outside the repo; about 430 MB).
#
# Nothing here runs aarch64 code as root or touches the host's binfmt: debootstrap only downloads
# (--foreign) and every .deb is unpacked with dpkg -x, so no second stage and no chroot are needed.
# Programs run later as `qemu-aarch64 -L ROOT ROOT/usr/bin/python3 ...` (the dynamic qemu-aarch64:
# the -static build cannot load TCG plugins).
#
# Idempotent: a finished environment is left alone (pass --force to rebuild); an unfinished one is
# rebuilt from its last finished step. Needs root (apt-get) and network access to Debian and PyPI.
set -euo pipefail

# Pinned runtime versions: the same ones the x86 side uses (pyproject.toml), so parity compares like with like.
ORT_VERSION=1.31.1
LITERT_VERSION=2.3.0
NUMPY_VERSION=2.4.6
SUITE=bookworm                 # its python3 is 3.11: the wheels below are chosen for cp311
GUEST_PY=3.11
# bookworm has glibc 2.36. pip does not widen an explicit --platform to older glibc tags, and the wheels
# differ (onnxruntime: manylinux_2_28, ai-edge-litert: manylinux_2_27 only), so list each accepted tag.
WHEEL_PLATFORMS=(manylinux_2_28_aarch64 manylinux_2_27_aarch64 manylinux_2_17_aarch64 manylinux2014_aarch64)
MIRROR=${EDGECOMP_DEBIAN_MIRROR:-http://deb.debian.org/debian}

ENV_DIR=${EDGECOMP_ARM64_ENV:-${EDGECOMP_CACHE:-$HOME/.cache/edgecomp}/arm64}
ROOT=$ENV_DIR/rootfs
SITE=$ROOT/opt/edgecomp/site
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# The plugin source ships in the package beside the guest runner that marks for it (they share MARK_MAGIC).
PLUGIN_SRC=$HERE/../edgecomp/bench/insn_count.c
START=$(date +%s)

step() { echo "[setup_arm64 +$(( $(date +%s) - START ))s] $*"; }
DIED=
die() { DIED=1; echo "setup_arm64: FAILED: $*" >&2; exit 1; }
# set -e stops at any other failing command: say so in one line instead of stopping silently
trap 'rc=$?; [ $rc -ne 0 ] && [ -z "$DIED" ] && echo "setup_arm64: FAILED (exit $rc) at the step printed last; fix it and re-run, finished steps are kept" >&2' EXIT

if [ "${1:-}" = "--force" ]; then
    step "--force: removing $ENV_DIR"
    rm -rf "$ENV_DIR"
fi
# The plugin is rebuilt whenever its source changes, even in a finished environment (it takes 1 s).
PLUGIN_SHA=$(sha256sum "$PLUGIN_SRC" | cut -d' ' -f1)
build_plugin() {
    step "gcc edgecomp/bench/insn_count.c -> $ENV_DIR/insn_count.so"
    gcc -O2 -Wall -shared -fPIC -fvisibility=hidden -o "$ENV_DIR/insn_count.so.tmp" "$PLUGIN_SRC" \
        || die "building the qemu plugin failed"
    mv "$ENV_DIR/insn_count.so.tmp" "$ENV_DIR/insn_count.so"
    echo "$PLUGIN_SHA" > "$ENV_DIR/insn_count.sha256"
}
if [ -f "$ENV_DIR/COMPLETE" ]; then
    [ "$(cat "$ENV_DIR/insn_count.sha256" 2>/dev/null)" = "$PLUGIN_SHA" ] || build_plugin
    step "already set up: $ENV_DIR ($(cat "$ENV_DIR/COMPLETE")); pass --force to rebuild"
    exit 0
fi
mkdir -p "$ENV_DIR"

# 1. host tools ---------------------------------------------------------------------------------
need_pkgs=()
command -v qemu-aarch64 >/dev/null || need_pkgs+=(qemu-user)
command -v debootstrap >/dev/null || need_pkgs+=(debootstrap)
command -v gcc >/dev/null || need_pkgs+=(gcc libc6-dev)
# the aarch64 build of the native probe (edgecomp/bench/native/probe.c), compiled on first use
command -v aarch64-linux-gnu-gcc >/dev/null || need_pkgs+=(gcc-aarch64-linux-gnu)
[ -f /usr/share/keyrings/debian-archive-keyring.gpg ] || need_pkgs+=(debian-archive-keyring)
if [ ${#need_pkgs[@]} -gt 0 ]; then
    step "apt-get install ${need_pkgs[*]}"
    [ "$(id -u)" -eq 0 ] || die "installing ${need_pkgs[*]} needs root: run this script as root, or apt-get install them first"
    apt-get update -qq || die "apt-get update failed (no network to the Debian mirror?)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_pkgs[@]}" >/dev/null \
        || die "apt-get install ${need_pkgs[*]} failed"
fi
[[ $(qemu-aarch64 -h) == *-plugin* ]] \
    || die "$(command -v qemu-aarch64) cannot load TCG plugins (a -static build?); install Debian's qemu-user"
[[ $(qemu-aarch64 -cpu help) == *cortex-a76* ]] || die "qemu-aarch64 has no cortex-a76 model; need QEMU >= 4.2"
step "host tools: $(qemu-aarch64 --version | head -1)"

# 2. the arm64 rootfs ---------------------------------------------------------------------------
if [ ! -f "$ENV_DIR/.rootfs-done" ]; then
    rm -rf "$ROOT"
    step "debootstrap --foreign $SUITE arm64 (download only) into $ROOT"
    debootstrap --foreign --variant=minbase --arch=arm64 --include=python3 \
        "$SUITE" "$ROOT" "$MIRROR" > "$ENV_DIR/debootstrap.log" 2>&1 \
        || die "debootstrap failed; last lines of $ENV_DIR/debootstrap.log: $(tail -3 "$ENV_DIR/debootstrap.log")"
    n=0
    for deb in "$ROOT"/var/cache/apt/archives/*.deb; do
        dpkg -x "$deb" "$ROOT" || die "dpkg -x $deb failed"
        n=$((n + 1))
    done
    step "unpacked $n packages with dpkg -x"
    rm -f "$ROOT"/var/cache/apt/archives/*.deb
    # python3's ELF interpreter is /lib/ld-linux-aarch64.so.1; the loader then searches both
    # /lib/aarch64-linux-gnu and /usr/lib/aarch64-linux-gnu, so it does not matter that dpkg -x
    # leaves /lib a real directory instead of bookworm's merged-/usr symlink
    [ -x "$ROOT/usr/bin/python3" ] || die "$ROOT/usr/bin/python3 missing after unpacking"
    [ -e "$ROOT/lib/ld-linux-aarch64.so.1" ] || die "$ROOT/lib/ld-linux-aarch64.so.1 missing (merged-/usr links broken)"
    touch "$ENV_DIR/.rootfs-done"
fi

# 3. what the runtimes see of the CPU -----------------------------------------------------------
# qemu-user passes the host's /proc/cpuinfo and /sys through, which describe an x86 CPU: the cpuinfo
# library inside onnxruntime then fails. qemu -L looks paths up in ROOT first, so files placed here
# describe the emulated core instead: one Cortex-A76 (MIDR 0x414fd0b1, the value qemu's model reports),
# with the features qemu implements for it.
step "fake /proc/cpuinfo and /sys/devices/system/cpu for one cortex-a76"
mkdir -p "$ROOT/proc" "$ROOT/sys/devices/system/cpu/cpu0"
cat > "$ROOT/proc/cpuinfo" <<'EOF'
processor	: 0
BogoMIPS	: 50.00
Features	: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp ssbs
CPU implementer	: 0x41
CPU architecture: 8
CPU variant	: 0x4
CPU part	: 0xd0b
CPU revision	: 1

EOF
for f in possible present online; do echo 0 > "$ROOT/sys/devices/system/cpu/$f"; done
echo 1 > "$ROOT/sys/devices/system/cpu/cpu0/online"

# 4. aarch64 wheels -----------------------------------------------------------------------------
if [ ! -f "$ENV_DIR/.wheels-done" ]; then
    PIP=(python3 -m pip --disable-pip-version-check -q)
    pip_platform=(${WHEEL_PLATFORMS[@]/#/--platform=} --only-binary=:all: --python-version "$GUEST_PY" --implementation cp)
    reqs=("numpy==$NUMPY_VERSION" "onnxruntime==$ORT_VERSION" "ai-edge-litert==$LITERT_VERSION")
    step "pip download ${reqs[*]} for aarch64 cp${GUEST_PY/./}"
    rm -rf "$ENV_DIR/wheels" "$SITE"
    "${PIP[@]}" download "${pip_platform[@]}" -d "$ENV_DIR/wheels" "${reqs[@]}" \
        || die "pip download of the aarch64 wheels failed (no PyPI access, or no aarch64 wheel for cp${GUEST_PY/./})"
    step "pip install --target $SITE"
    "${PIP[@]}" install "${pip_platform[@]}" --no-index --find-links "$ENV_DIR/wheels" \
        --no-warn-conflicts --target "$SITE" "${reqs[@]}" || die "pip install --target $SITE failed"
    rm -rf "$ENV_DIR/wheels"
    touch "$ENV_DIR/.wheels-done"
fi

# 5. the instruction-count plugin ----------------------------------------------------------------
build_plugin

# 6. smoke test: both runtimes import on the emulated core, and the plugin loads and counts ------
step "smoke test under qemu-aarch64 -cpu cortex-a76"
versions=$(env -i PATH=/usr/bin:/bin PYTHONPATH=/opt/edgecomp/site OPENBLAS_NUM_THREADS=1 \
    qemu-aarch64 -cpu cortex-a76 -L "$ROOT" -plugin "$ENV_DIR/insn_count.so,out=$ENV_DIR/smoke.count" \
    "$ROOT/usr/bin/python3" -c 'import platform, numpy, onnxruntime, ai_edge_litert.interpreter as l; from importlib.metadata import version; print(platform.machine(), platform.python_version(), "onnxruntime", onnxruntime.__version__, "ai-edge-litert", version("ai-edge-litert"), "numpy", numpy.__version__)') \
    || die "the runtimes do not import under qemu-aarch64 (see the traceback above)"
grep -q '^end [1-9]' "$ENV_DIR/smoke.count" || die "the instruction-count plugin did not report a count"
step "guest: $versions; plugin counted $(awk '/^end/{print $2}' "$ENV_DIR/smoke.count") instructions"
rm -f "$ENV_DIR/smoke.count"

# edgecomp's custom-op library for the guest (edgecomp/kernels, needs aarch64-linux-gnu-gcc); it is also built
# on first use, so a checkout that cannot import edgecomp here only skips this
if python3 -c "import edgecomp.kernels" 2>/dev/null; then
    step "python -m edgecomp.kernels --machine aarch64"
    python3 -m edgecomp.kernels --machine aarch64 >/dev/null || die "building edgecomp's aarch64 custom-op library failed"
fi
echo "$SUITE arm64; $versions; built $(date -u +%Y-%m-%dT%H:%M:%SZ) in $(( $(date +%s) - START ))s" > "$ENV_DIR/COMPLETE"
step "done: $ENV_DIR (total $(( $(date +%s) - START ))s)"
