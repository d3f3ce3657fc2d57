#!/usr/bin/env bash
# Creates .venv with the project and its dev extras; exposes Debian's libnbd
# Python binding (a system-Python module) to the venv through a small shim
# directory that holds only that module, so nothing else leaks in.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
PY=${PYTHON:-python3}
stamp=.venv/.installed
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null
  .venv/bin/python -m pip install -q -e '.[dev]'
  touch "$stamp"
fi
site=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
shim=.venv/nbd-shim
if [ -f /usr/lib/python3/dist-packages/nbd.py ]; then
  mkdir -p "$shim"
  ln -sf /usr/lib/python3/dist-packages/nbd.py "$shim/nbd.py"
  for so in /usr/lib/python3/dist-packages/libnbdmod*.so; do
    [ -e "$so" ] && ln -sf "$so" "$shim/$(basename "$so")"
  done
  echo "$here/$shim" > "$site/vmbackup-nbd.pth"
fi
