#!/usr/bin/env bash
# `make run`: with the services up, serve a model and run the worker.
#
# A newcomer should see predictions in minutes, not after a full training: where no full model
# is published yet, a quick one (QUICK_PER_CLASS images per class, --no-sweep) is trained and
# served first, and the full model (every image of DATA, with the k sweep; its report in
# var/reports/MODELS.md) trains in the background and is promoted when it is done; the worker
# follows the promotion without a restart. A machine that already has a full model just runs
# the worker.
#
# On a fresh machine the slow steps are downloads that do not depend on each other: the backbone's
# export (a torch environment, several GB) runs while the services install and start.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH:/usr/local/go/bin"
DATA=${DATA:-../shared/datasets/cifar10/train.tar.gz}
QUICK_PER_CLASS=${QUICK_PER_CLASS:-500}
mkdir -p var/logs var/reports
SECONDS=0

onnx=$(python -c 'from app.core.settings import get_settings; from tools.cli import _onnx_path; print(_onnx_path(get_settings().backbone))')
export_pid=
if [[ ! -f $onnx ]]; then
  echo "run: exporting the backbone in the background (var/logs/export.log) while the services start"
  imgstream models export --out "$onnx" > var/logs/export.log 2>&1 &
  export_pid=$!
fi
imgstream stack up
echo "run: services up after ${SECONDS}s"
if [[ -n $export_pid ]]; then
  wait "$export_pid" || { echo "run: the backbone export failed:" >&2; tail -20 var/logs/export.log >&2; exit 1; }
  echo "run: backbone exported after ${SECONDS}s"
fi

published=$(python - <<'PY'
import asyncio
from app import registry
from app.core.settings import get_settings
from app.storage.objectstore import ObjectStore

async def main():
    async with ObjectStore(get_settings()) as store:
        return await registry.versions(store)

ms = asyncio.run(main())
print("full" if any(m["data"].get("limit_per_class") is None for m in ms) else "quick" if ms else "none")
PY
)

if [[ $published == none ]]; then
  echo "run: training a quick model ($QUICK_PER_CLASS images per class) to serve first"
  imgstream models train --data "$DATA" --limit-per-class "$QUICK_PER_CLASS" --no-sweep
  echo "run: quick model published after ${SECONDS}s"
fi
if [[ $published != full ]]; then
  echo "run: the full model trains in the background (var/logs/full-model.log) and is promoted when done"
  (imgstream models train --data "$DATA" --docs var/reports/MODELS.md && imgstream models promote latest) \
    > var/logs/full-model.log 2>&1 &
fi
exec imgstream worker
