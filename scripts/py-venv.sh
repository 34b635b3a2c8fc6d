#!/usr/bin/env bash
# The one venv of the project's Python test tools (target/py-venv): created, or reinstalled when
# the pinned list scripts/py-requirements.txt changes. Prints the venv's python on stdout.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
venv=$root/target/py-venv
requirements=$root/scripts/py-requirements.txt
if [ ! -x "$venv/bin/python" ] || ! cmp -s "$requirements" "$venv/.requirements"; then
  python3 -m venv "$venv" >&2
  "$venv/bin/pip" install -q --disable-pip-version-check -r "$requirements" >&2
  cp "$requirements" "$venv/.requirements"
fi
echo "$venv/bin/python"
