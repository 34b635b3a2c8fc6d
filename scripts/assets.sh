#!/usr/bin/env bash
# Installs the dashboard's front-end packages from the npm registry (pinned by package-lock.json)
# and copies the files the pages load into static/vendor/ (not committed).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -f package-lock.json ] || exit 0
if [ ! -d node_modules ] || [ package-lock.json -nt node_modules ]; then
  npm ci --no-audit --no-fund --loglevel=error
fi
mkdir -p static/vendor
cp node_modules/uplot/dist/uPlot.iife.min.js node_modules/uplot/dist/uPlot.min.css static/vendor/
