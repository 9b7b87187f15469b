#!/usr/bin/env bash
# What the container image's test needs, with no image registry in reach: buildah from
# Debian's packages, and a Debian base image made from Debian's packages. mmdebstrap
# builds a minimal bookworm (with ca-certificates) from deb.debian.org into a tarball,
# and buildah commits it, as a scratch container with the tarball unpacked in it, under
# the name deploy/container/Containerfile.prebuilt takes as its BASE argument:
#   localhost/gitdispatch-base:bookworm
# Each step runs only when its result is missing (the tarball is kept under
# target/container, or GITDISPATCH_CONTAINER_CACHE; GITDISPATCH_DEBIAN_MIRROR names
# another mirror). Run by scripts/test; run it once by hand before `cargo test --test
# deploy_artefacts`. Needs root (buildah's chroot isolation, mmdebstrap's root mode) or
# sudo. Cold it takes about a minute (most of it mmdebstrap), warm a moment.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

base_image=localhost/gitdispatch-base:bookworm
suite=bookworm
mirror=${GITDISPATCH_DEBIAN_MIRROR:-http://deb.debian.org/debian}
cache=${GITDISPATCH_CONTAINER_CACHE:-$PWD/target/container}
tarball=$cache/debian-$suite.tar
started=$SECONDS

sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"

missing=()
command -v buildah >/dev/null || missing+=(buildah)
command -v mmdebstrap >/dev/null || missing+=(mmdebstrap)
if [ ${#missing[@]} -gt 0 ]; then
  echo "container: installing ${missing[*]}" >&2
  $sudo apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" >/dev/null
fi

if $sudo buildah inspect --type image "$base_image" >/dev/null 2>&1; then
  echo "container: base image $base_image is there ($((SECONDS - started)) s)" >&2
  exit 0
fi

if [ ! -s "$tarball" ]; then
  echo "container: building a minimal Debian $suite with ca-certificates from $mirror into $tarball" >&2
  mkdir -p "$cache"
  # Written aside and renamed, so that an interrupted run leaves no half tarball.
  # Without documentation, manual pages and translations, as Debian's slim images.
  $sudo mmdebstrap --quiet --mode=root --format=tar --variant=minbase \
    --include=ca-certificates \
    --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/info/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    "$suite" "$tarball.partial" "$mirror"
  mv "$tarball.partial" "$tarball"
fi

echo "container: committing $tarball as $base_image" >&2
container=$($sudo buildah from scratch)
trap '$sudo buildah rm "$container" >/dev/null 2>&1 || true' EXIT
root=$($sudo buildah mount "$container")
$sudo tar --extract --file "$tarball" --directory "$root" --numeric-owner --preserve-permissions
$sudo buildah umount "$container" >/dev/null
$sudo buildah config --cmd /bin/bash --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
  "$container"
$sudo buildah commit --quiet --rm "$container" "$base_image" >/dev/null
trap - EXIT
echo "container: base image $base_image is ready ($((SECONDS - started)) s)" >&2
