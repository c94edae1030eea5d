"""Keep only the training record of shipped checkpoints whose weights no notebook needs.

    .venv/bin/python tools/curves_only.py dense-200 moe-none moe-v3

Moves each ``minimoe/checkpoints/NAME.pt``'s config, step and ``extra`` (curves, load history) into
``minimoe/checkpoints/runs.json`` and deletes the weights, so that shipped checkpoints stay under
20 MB. ``minimoe.course.training_run(NAME)`` reads either form.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from minimoe.train import read_checkpoint

FOLDER = Path(__file__).resolve().parent.parent / "minimoe" / "checkpoints"


def main(names: list[str]) -> int:
    if not names:
        print(__doc__, file=sys.stderr)
        return 2
    store = FOLDER / "runs.json"
    runs = json.loads(store.read_text()) if store.exists() else {}
    for name in names:
        path = FOLDER / f"{name}.pt"
        obj = read_checkpoint(path)
        runs[name] = {"model_config": obj["model_config"], "step": obj["step"], "data": obj["data"],
                      "extra": obj["extra"]}
        store.write_text(json.dumps(runs, indent=None, separators=(",", ":")) + "\n")
        path.unlink()
        print(f"{name}: kept its record in {store.name}, removed {path.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
