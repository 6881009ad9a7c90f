"""Push a reproduced weight to the Hugging Face Hub and print its registry line.

    python training/publish.py runs/rot-adv-aft-r50 --repo-id robustzoo/rot-adv-aft-r50 [--token T] [--endpoint URL]
    python training/publish.py runs/rot-adv-aft-r50 --repo-id robustzoo/rot-adv-aft-r50 --dry-run

Loads ``DIR/model.safetensors`` strictly, takes the measured test metrics from ``DIR/report.json``
(written by ``reproduce.py``; never the paper's numbers), pushes with
:func:`robustzoo.hub.push_to_hub` and prints what to paste into ``robustzoo/registry.py``: the pinned
revision, the sha256 of the uploaded file and the measured metrics with how they were measured.
``--dry-run`` does everything except the upload.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from robustzoo.weights import load_file, save_pretrained  # noqa: E402


def measured_metrics(run_dir: Path) -> dict:
    """Test-set numbers measured by reproduce.py / pretrain.py, with their settings."""
    report = json.loads((run_dir / "report.json").read_text())
    if "accuracy" in report.get("test", {}):  # classifier / ensemble: robustzoo.evaluate result
        test = report["test"]
        return {**test["accuracy"], "n": test["n"], "eps": test["settings"]["eps"],
                "how": "robustzoo.evaluate on the test split, model selected on the held-out 10 % of train"}
    return {k: 100 * v for k, v in report.get("test", {}).items()}  # pretext accuracies, in %


def uploaded_sha256(model, name: str) -> str:
    """sha256 of the file push_to_hub uploads (it re-serialises with save_pretrained, deterministically)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = save_pretrained(model, tmp, name=name, metadata=getattr(model, "pretrained_meta", None))
        return hashlib.sha256(path.read_bytes()).hexdigest()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dir", type=Path, help="a run folder written by training/reproduce.py")
    p.add_argument("--repo-id", required=True, help="e.g. robustzoo/rot-adv-aft-r50")
    p.add_argument("--name", default="", help="registry name (default: the one stored in the weight)")
    p.add_argument("--token", default=None)
    p.add_argument("--endpoint", default=None)
    p.add_argument("--dry-run", action="store_true")
    args = p.parse_args(argv)
    model = load_file(args.dir)
    name = args.name or model.pretrained_meta.get("name") or args.repo_id.split("/")[-1]
    metrics = measured_metrics(args.dir)
    sha = uploaded_sha256(model, name)
    revision = "<dry-run>"
    if not args.dry_run:
        from robustzoo.hub import push_to_hub

        numeric = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and k not in ("n", "eps")}
        revision = push_to_hub(model, args.repo_id, name=name, metrics=numeric, token=args.token,
                               endpoint=args.endpoint)
    print(f"# registry entry for {name}")
    print(f'repo_id="{args.repo_id}", revision="{revision}", sha256="{sha}",')
    print(f"metrics={json.dumps(metrics)},")


if __name__ == "__main__":
    main()
