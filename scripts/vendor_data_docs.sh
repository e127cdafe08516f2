#!/usr/bin/env bash
# Rebuilds vendor/data_docs/: the CSS, JS and fonts that Great Expectations' Data Docs pages load from CDNs, taken
# from the npm registry at the versions GX's templates name (multimodal/data/data_docs.py maps each CDN URL to its copy).
# Run it only when great-expectations is upgraded and its templates name other versions; commit the result.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
out=vendor/data_docs
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack --silent jquery@3.7.1 popper.js@1.12.9 bootstrap@4.3.1 bootstrap-table@1.19.1 \
  bootstrap-datepicker@1.9.0 @fortawesome/fontawesome-free@6.6.0 >/dev/null)
for tarball in "$tmp"/*.tgz; do
  mkdir -p "${tarball%.tgz}" && tar xzf "$tarball" -C "${tarball%.tgz}"
done
rm -rf "$out/jquery" "$out/popper.js" "$out/bootstrap" "$out/bootstrap-table" "$out/bootstrap-datepicker" \
  "$out/fontawesome"
take() {  # take <unpacked package> <file inside it> <destination folder>
  mkdir -p "$out/$3" && cp "$tmp/$1/package/$2" "$out/$3/"
}
take jquery-3.7.1 dist/jquery.min.js jquery
take jquery-3.7.1 LICENSE.txt jquery
take popper.js-1.12.9 dist/umd/popper.min.js popper.js
take bootstrap-4.3.1 dist/css/bootstrap.min.css bootstrap
take bootstrap-4.3.1 dist/js/bootstrap.min.js bootstrap
take bootstrap-4.3.1 LICENSE bootstrap
take bootstrap-table-1.19.1 dist/bootstrap-table.min.css bootstrap-table
take bootstrap-table-1.19.1 dist/bootstrap-table.min.js bootstrap-table
take bootstrap-table-1.19.1 dist/extensions/filter-control/bootstrap-table-filter-control.min.css bootstrap-table
take bootstrap-table-1.19.1 dist/extensions/filter-control/bootstrap-table-filter-control.min.js bootstrap-table
take bootstrap-table-1.19.1 LICENSE bootstrap-table
take bootstrap-datepicker-1.9.0 dist/css/bootstrap-datepicker.min.css bootstrap-datepicker
take bootstrap-datepicker-1.9.0 dist/js/bootstrap-datepicker.min.js bootstrap-datepicker
take bootstrap-datepicker-1.9.0 LICENSE bootstrap-datepicker
# Font Awesome: the solid style only (the pages use five `fas` icons), woff2 only (every current browser reads it).
take fortawesome-fontawesome-free-6.6.0 css/fontawesome.min.css fontawesome/css
take fortawesome-fontawesome-free-6.6.0 css/solid.min.css fontawesome/css
take fortawesome-fontawesome-free-6.6.0 webfonts/fa-solid-900.woff2 fontawesome/webfonts
take fortawesome-fontawesome-free-6.6.0 LICENSE.txt fontawesome
sed -i 's|,url(../webfonts/fa-solid-900.ttf) format("truetype")||' "$out/fontawesome/css/solid.min.css"
du -sh "$out"
