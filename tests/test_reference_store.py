"""The committed reference store stays within its size budget, and every run a manifest lists is there."""
from __future__ import annotations

import json

from kd_utils.config import DEFAULT_PROFILE
from kd_utils.runs import BUDGET_MIB, size_bytes, stores


def test_committed_runs_fit_the_budget():
    mib = size_bytes(DEFAULT_PROFILE) / 2**20
    assert mib <= BUDGET_MIB, f"committed runs take {mib:.1f} MiB, over the {BUDGET_MIB} MiB budget"


def test_every_listed_run_is_committed_with_what_its_record_promises():
    ref = stores(DEFAULT_PROFILE)["reference"]
    manifests = sorted((ref / "manifests").glob("*.json"))
    assert manifests, f"no manifest under {ref}: the committed notebooks' runs are missing"
    for m in manifests:
        for name in json.loads(m.read_text())["runs"]:
            folder = ref / name
            record = json.loads((folder / "run.json").read_text())
            assert (folder / "logits.pt").is_file(), f"{m.name}: {name} has no logits"
            assert (folder / "model.pt").is_file() == bool(record.get("weights")), \
                f"{m.name}: {name}'s record says weights={record.get('weights')} but model.pt is " \
                f"{'present' if (folder / 'model.pt').is_file() else 'absent'}"
