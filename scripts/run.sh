#!/usr/bin/env bash
# `make run`: with the services up, serve a model and run the worker.
#
# A newcomer should see predictions in minutes, not after a full training: where no full model
# is published yet, a quick one (QUICK_PER_CLASS images per class, --no-sweep) is trained and
# served first, and the full model (every image of DATA, with the k sweep and docs/MODELS.md)
# trains in the background and is promoted when it is done; the worker follows the promotion
# without a restart. A machine that already has a full model just runs the worker.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH:/usr/local/go/bin"
DATA=${DATA:-../shared/datasets/cifar10/train.tar.gz}
QUICK_PER_CLASS=${QUICK_PER_CLASS:-500}

published=$(python - <<'PY'
import asyncio
from app import registry
from app.settings import get_settings
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
fi
if [[ $published != full ]]; then
  mkdir -p var/logs
  echo "run: the full model trains in the background (var/logs/full-model.log) and is promoted when done"
  (imgstream models train --data "$DATA" --docs docs/MODELS.md && imgstream models promote latest) \
    > var/logs/full-model.log 2>&1 &
fi
exec imgstream worker
