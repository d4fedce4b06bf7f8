#!/usr/bin/env bash
# Writes the Homebrew formula for the rmachine CLI from a source archive:
#   installers/macos/formula.sh [--archive FILE.tar.gz] [--url URL] [--homepage URL] [--out FILE]
# Without --archive, `git archive` of HEAD is made in target/packages/. Without --url the formula
# points at the archive as a file:// URL, for `brew install --formula ./rmachine.rb` on a Mac;
# without --homepage, the clone's origin remote (else the archive's URL).
# Unbuilt and untested on macOS (no macOS here): see README.md beside this file.
set -euo pipefail
cd "$(dirname "$0")/../.."
archive="" url="" homepage="" out="target/packages/rmachine.rb"
while [ $# -gt 0 ]; do
  case "$1" in
    --archive) archive=$2; shift 2 ;;
    --url) url=$2; shift 2 ;;
    --homepage) homepage=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    -h|--help) sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "error: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
version=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version = "\(.*\)"/\1/p' Cargo.toml)
[ -n "$version" ] || { echo "error: no version in Cargo.toml's [workspace.package]" >&2; exit 1; }
mkdir -p "$(dirname "$out")" target/packages
if [ -z "$archive" ]; then
  archive="target/packages/rmachine-${version}-src.tar.gz"
  git archive --format=tar.gz --prefix="rmachine-${version}/" -o "$archive" HEAD
fi
[ -f "$archive" ] || { echo "error: no archive at $archive" >&2; exit 1; }
sha=$(sha256sum "$archive" | cut -d' ' -f1)
[ -n "$url" ] || url="file://$(cd "$(dirname "$archive")" && pwd)/$(basename "$archive")"
[ -n "$homepage" ] || homepage=$(git remote get-url origin 2>/dev/null || echo "$url")
sed -e "s|@URL@|${url}|" -e "s|@SHA256@|${sha}|" -e "s|@VERSION@|${version}|" \
  -e "s|@HOMEPAGE@|${homepage}|" installers/macos/rmachine.rb.in > "$out"
if grep -q '@[A-Z0-9]*@' "$out"; then
  echo "error: $out still has a placeholder" >&2
  exit 1
fi
echo "formula: $out (rmachine $version, $archive, sha256 $sha)"
