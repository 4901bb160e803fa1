#!/usr/bin/env bash
# Build pyfuse3 from its PyPI sdist with binding/pyfuse3-<ver>.patch applied, and install it
# into the venv whose python is $1 (issue 14: statfs with the inode, fallocate, lseek,
# copy_file_range; a spinning session loop, readdir entries without attributes, stat into
# entry attributes). Fails loudly when the download, the checksum, the patch or the build
# does not work: an unpatched pyfuse3 must never be installed silently.
# Needs: pkg-config, libfuse3-dev, a C compiler, Python headers, patch (make setup checks).
set -euo pipefail

VERSION=3.5.0
SHA256=88399a9494b88603230bba300f4ba9ad63fece5ed514ca3633d555a0c6a42b24
VPY=${1:?usage: build_pyfuse3.sh VENV_PYTHON [WHEEL_DIR]}
# WHEEL_DIR keeps a copy of the built wheel, so `make install` puts the same patched build
# into its runtime without compiling again.
WHEEL_DIR=${2:-}
HERE=$(cd "$(dirname "$0")/.." && pwd)
PATCH=$HERE/binding/pyfuse3-$VERSION.patch
CONSTRAINTS=$HERE/binding/build-constraints.txt

work=$(mktemp -d "${TMPDIR:-/tmp}/fusemount-pyfuse3.XXXXXX")
trap 'rm -rf "$work"' EXIT

"$VPY" -m pip download -q --no-binary :all: --no-deps "pyfuse3==$VERSION" -d "$work"
sdist=$work/pyfuse3-$VERSION.tar.gz
echo "$SHA256  $sdist" | sha256sum -c --quiet - \
  || { echo "build_pyfuse3: checksum of pyfuse3-$VERSION.tar.gz differs" >&2; exit 1; }
tar -xzf "$sdist" -C "$work"
src=$work/pyfuse3-$VERSION

# --dry-run first, so a patch that does not apply leaves nothing half-patched behind.
patch_args=(-p1 --forward --batch --no-backup-if-mismatch -d "$src" -i "$PATCH")
if ! patch --dry-run --quiet "${patch_args[@]}"; then
  echo "build_pyfuse3: $PATCH does not apply to pyfuse3 $VERSION" >&2
  exit 1
fi
patch --quiet "${patch_args[@]}"
# The sdist's generated C predates the patch: without it the build must run Cython on the
# patched .pyx (pinned in build-constraints.txt) instead of compiling stale C.
rm -f "$src/src/pyfuse3/__init__.c"

PIP_CONSTRAINT=$CONSTRAINTS "$VPY" -m pip wheel -q --no-deps -w "$work/wheel" "$src"
# Replace whatever pyfuse3 the venv holds (same version number: pip would keep it); its
# dependency trio comes along, so the check below can import it.
"$VPY" -m pip uninstall -q -y pyfuse3 2>/dev/null || true
"$VPY" -m pip install -q "$work"/wheel/pyfuse3-*.whl
if [ -n "$WHEEL_DIR" ]; then
  mkdir -p "$WHEEL_DIR"
  rm -f "$WHEEL_DIR"/pyfuse3-*.whl
  cp "$work"/wheel/pyfuse3-*.whl "$WHEEL_DIR"/
fi
"$VPY" - <<'PY'
import pyfuse3
ops = pyfuse3.Operations
missing = [m for m in ("statfs_inode", "fallocate", "lseek", "copy_file_range")
           if not hasattr(ops, m)]
missing += [f for f in ("readdir_reply_name", "set_spin_ns") if not hasattr(pyfuse3, f)]
if not hasattr(pyfuse3.EntryAttributes, "stat_at"):
    missing.append("EntryAttributes.stat_at")
if missing:
    raise SystemExit(f"build_pyfuse3: installed pyfuse3 lacks {missing}")
print(f"pyfuse3 {pyfuse3.__version__} (fusemount patch) installed")
PY
