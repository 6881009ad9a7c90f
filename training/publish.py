"""Release a reproduced weight: upload it (or ship it inside the package) and pin it in the registry.

    python training/publish.py runs/rot-adv-aft-r50 --repo-id robustzoo/rot-adv-aft-r50 [--endpoint URL]
    python training/publish.py runs/zoo/at-baseline-r18-w16-fmnist --embed --metrics benchmarks/zoo_metrics.json
    python training/publish.py RUN_DIR --repo-id ORG/NAME --registry /tmp/registry.json   # try it on a copy
    python training/publish.py at-baseline-r18-w16-fmnist --refresh-metrics --metrics benchmarks/zoo_metrics.json

RUN_DIR is a run folder written by ``training/reproduce.py`` (``model.safetensors``, ``metrics.json``,
``provenance.json``) or staged by ``benchmarks/mini_repro.py release``, which adds ``record.json``: the
descriptive fields of a record (name, arch, kind, task, ..., description) for a name the registry does
not hold yet, or new wording for one it does. ``--retire OLD`` drops the record ``OLD`` (and its
embedded file) and notes in ``zoo/retired.json`` that this weight succeeds it, so that
``robustzoo.load(OLD)`` says what to load instead. The weight is loaded strictly first. Then:

* with ``--repo-id``: ``model.safetensors`` is uploaded byte for byte with its ``config.json`` and a
  model card (measured metrics, provenance) in one Hub commit;
* with ``--embed``: the file is copied next to the registry file (``robustzoo/zoo/NAME.safetensors``).

Either way the weight's record in the registry file is rewritten with the pinned commit (``--repo-id``),
the file's sha256, the measured metrics (``metrics.json``, or this file's entry in ``--metrics``, e.g.
the figures ``benchmarks/train_zoo.py`` measured) and the provenance, and the diff is printed. This is
the only program that writes the registry file. When it writes the package's own file it also
regenerates the tables of MODEL_CARD.md and training/README.md. The numbers are always the ones
measured here, never the paper's.

Runtime: seconds (one upload, one registry write). Writes the registry file (or the ``--registry`` copy),
``MODEL_CARD.md`` and ``training/README.md`` when the package's own registry changes, and the Hub commit or
the embedded file (plus ``zoo/retired.json`` with ``--retire``).
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from robustzoo._download import file_sha256  # noqa: E402
from robustzoo.errors import RobustZooError  # noqa: E402
from robustzoo.registry import (  # noqa: E402
    REGISTRY_FILE,
    WeightSpec,
    dump_records,
    dump_retired,
    read_records,
    read_retired,
    registry_path,
    spec_from_record,
)
from robustzoo.weights import atomic_write, load_file  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise RobustZooError(f"cannot read {path}: {e}") from None


def run_metrics(run_dir: Path, name: str, sha: str, table: Path | None) -> dict:
    """Measured metrics of this exact file: ``--metrics`` entry (checked by sha256) or the run's metrics.json."""
    if table is not None:
        entry = _read_json(table).get(name)
        if entry is None or entry.get("sha256") != sha:
            raise RobustZooError(f"{table} has no figures for this file of {name} (sha256 {sha[:12]}...); "
                                 "measure this file first (benchmarks/train_zoo.py)")
        return dict(entry["metrics"])
    path = run_dir / "metrics.json"
    if not path.is_file():
        raise RobustZooError(f"{run_dir} has no metrics.json; is it a run folder of training/reproduce.py?")
    return _read_json(path)


def run_provenance(run_dir: Path, metrics: dict) -> dict:
    """The run's provenance.json; older runs fall back to what their report.json recorded."""
    if (run_dir / "provenance.json").is_file():
        return _read_json(run_dir / "provenance.json")
    report = _read_json(run_dir / "report.json")
    return {"code_commit": report.get("git_commit", "unknown"), "recipe": report.get("name", ""),
            "recipe_settings": report.get("recipe", {}), "machine": metrics.get("machine", ""),
            "date": metrics.get("date", "")}


def pinned_record(spec: WeightSpec, *, config: dict, sha: str, metrics: dict, provenance: dict,
                  repo_id: str | None, revision: str | None, embedded: bool) -> WeightSpec:
    """The record after the release: where the file is, its hash, its numbers and how it was made."""
    missing = {"how", "machine", "date"} - set(metrics)
    if missing:
        raise RobustZooError(f"measured metrics must say how, where and when; missing {sorted(missing)}")
    arch = config.get("arch")
    if arch != spec.arch or config.get("num_classes", spec.num_classes) != spec.num_classes:
        raise RobustZooError(f"the file holds a {arch} with {config.get('num_classes')} classes; the record "
                             f"{spec.name} is a {spec.arch} with {spec.num_classes}")
    size = spec.input_size if arch == "ensemble" else (config["in_chans"], *spec.input_size[1:])
    width = spec.width if arch == "ensemble" else float(config["width"])
    return dataclasses.replace(
        spec, width=width, input_size=size, sha256=sha, metrics=metrics, provenance=provenance, embedded=embedded,
        repo_id=None if embedded else repo_id, revision=None if embedded else revision,
        filename=f"{spec.name}.safetensors" if embedded else "model.safetensors")


def _check_release(registry: Path, spec: WeightSpec, config: dict, metrics: dict, run_dir: Path) -> None:
    """The package's own registry takes only what its record describes; smoke runs (tiny width,
    synthetic data) can be released into a staged copy (``--registry``) to try the loop."""
    width = config.get("width", spec.width)
    data = metrics.get("dataset", spec.dataset)
    if registry.resolve() == REGISTRY_FILE and (width, data) != (spec.width, spec.dataset):
        raise RobustZooError(f"{run_dir} holds a width {width:g} model measured on {data}; the record {spec.name} "
                             f"is width {spec.width:g} on {spec.dataset}: not releasing it into the package")


def _copy_into(src: Path, dest: Path) -> None:
    if dest.is_file() and file_sha256(dest) == file_sha256(src):
        return  # the shipped bytes already are this file
    atomic_write(dest, lambda tmp: shutil.copyfile(src, tmp))


_PINNED = ("repo_id", "filename", "revision", "sha256", "embedded", "metrics", "provenance")


def staged_spec(run_dir: Path, name: str, specs: dict) -> WeightSpec:
    """The record to pin: the registry's, with the descriptive fields of ``run_dir/record.json`` if present."""
    path = run_dir / "record.json"
    if not path.is_file():
        if name not in specs:
            raise RobustZooError(f"{name!r} has no record in the registry and {run_dir} has no record.json; a weight "
                                 "is released under a registry name (robustzoo list) or with its record.json")
        return specs[name]
    desc = _read_json(path)
    if desc.get("name") != name or set(desc) & set(_PINNED):
        raise RobustZooError(f"{path} must describe {name!r} and leave {', '.join(_PINNED)} to the release step")
    empty = {"repo_id": None, "filename": "model.safetensors", "revision": None, "sha256": None, "embedded": False,
             "metrics": {}, "provenance": {}}
    return spec_from_record({**empty, **desc}, str(path))


def retire(specs: dict, retired: dict, old_names: list[str], successor: str, why: str, zoo: Path) -> list[Path]:
    """Drop ``old_names`` from ``specs`` and record ``successor`` for them; returns the embedded files to delete."""
    files = []
    for old in old_names:
        if old == successor:
            raise RobustZooError(f"{old} cannot succeed itself")
        if old not in specs:
            if retired.get(old, {}).get("successor") == successor:
                continue  # released before: nothing left to do
            raise RobustZooError(f"--retire {old}: no such record in the registry")
        if not why:
            raise RobustZooError("--retire needs --why: the sentence users read when they ask for the old name")
        if specs.pop(old).embedded:
            files.append(zoo / f"{old}.safetensors")
        retired[old] = {"successor": successor, "date": time.strftime("%Y-%m-%d", time.gmtime()), "why": why}
    return files


def release(run_dir: Path, *, repo_id: str | None, embed: bool, registry: Path, name: str = "",
            metrics_file: Path | None = None, endpoint: str | None = None, token: str | None = None,
            dry_run: bool = False, retire_names: tuple[str, ...] = (), why: str = "") -> tuple[WeightSpec, str]:
    """Publish ``run_dir`` and rewrite its registry record; returns the new record and the registry diff."""
    weights = run_dir / "model.safetensors"
    model = load_file(weights)  # strict: a file that does not load is never published
    name = name or model.pretrained_meta.get("name") or run_dir.name
    specs = read_records(registry)
    before = dump_records(specs)
    spec = staged_spec(run_dir, name, specs)
    sha = file_sha256(weights)
    metrics = run_metrics(run_dir, name, sha, metrics_file)
    prov = run_provenance(run_dir, metrics)
    _check_release(registry, spec, model.config, metrics, run_dir)
    retired = read_retired(registry)
    if name in retired:  # a retired name keeps meaning "use the successor": it is never reused
        raise RobustZooError(f"{name!r} was retired (successor {retired[name]['successor']!r}); use a new name")
    stale = retire(specs, retired, list(retire_names), name, why, registry.parent)
    revision = None
    if not embed and not dry_run:
        from robustzoo._publish import card_metrics, publish_file
        from robustzoo.hub import resolve_endpoint

        eps = spec.attack.get("eps", metrics.get("eps", ""))
        revision, sha = publish_file(weights, repo_id, name=name, metrics=card_metrics(metrics), dataset=spec.dataset,
                                     eps=f"{eps:.6g}" if isinstance(eps, float) else str(eps), provenance=prov,
                                     token=token, endpoint=resolve_endpoint(endpoint))
    elif not embed:
        revision = "0" * 40  # dry run: the diff shows where the commit will go
    new = pinned_record(spec, config=model.config, sha=sha, metrics=metrics, provenance=prov, repo_id=repo_id,
                        revision=revision, embedded=embed)
    if embed and not dry_run:
        _copy_into(weights, registry.parent / new.filename)
    specs[name] = new
    diff = _write(registry, before, specs, dry_run, retired=retired if retire_names else None)
    if not dry_run:
        for f in stale:
            f.unlink(missing_ok=True)  # after the registry no longer points at it
    return new, diff


def _write(registry: Path, before: str, specs: dict, dry_run: bool, retired: dict | None = None) -> str:
    """Write ``specs`` (and ``retired``) to the registry (and MODEL_CARD.md for the package's own); return the diff."""
    after = dump_records(specs)
    diff = "".join(difflib.unified_diff(before.splitlines(True), after.splitlines(True), f"a/{registry.name}",
                                        f"b/{registry.name}"))
    if not dry_run:
        if retired is not None:
            atomic_write(registry.parent / "retired.json", lambda tmp: Path(tmp).write_text(dump_retired(retired)))
        atomic_write(registry, lambda tmp: Path(tmp).write_text(after))
        if registry.resolve() == REGISTRY_FILE:
            from robustzoo.card import update_model_card
            from training import make_readme_table

            update_model_card(ROOT / "MODEL_CARD.md", specs)
            make_readme_table.write(specs)
    return diff


def refresh_metrics(name: str, *, registry: Path, metrics_file: Path | None,
                    dry_run: bool = False) -> tuple[WeightSpec, str]:
    """Re-measured figures of an already released file (e.g. AutoAttack chunks that grew): only ``metrics``
    changes, and only with figures measured on this very file (its sha256)."""
    if metrics_file is None:
        raise RobustZooError("--refresh-metrics takes the figures from --metrics (e.g. benchmarks/zoo_metrics.json)")
    specs = read_records(registry)
    spec = specs.get(name)
    if spec is None or not spec.published:
        raise RobustZooError(f"{name!r} is not a released record of {registry}: release its run folder first")
    if spec.embedded and file_sha256(registry.parent / spec.filename) != spec.sha256:
        raise RobustZooError(f"the shipped file of {name} does not match its record's sha256; reinstall robustzoo")
    metrics = run_metrics(Path("."), name, spec.sha256, metrics_file)
    missing = {"how", "machine", "date"} - set(metrics)
    if missing:
        raise RobustZooError(f"measured metrics must say how, where and when; missing {sorted(missing)}")
    new = dataclasses.replace(spec, metrics=metrics)
    before = dump_records(specs)
    specs[name] = new
    return new, _write(registry, before, specs, dry_run)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dir", type=Path, help="a run folder written by training/reproduce.py (with --refresh-metrics: "
                   "the registry name)")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--repo-id", help="upload to this Hub repo, e.g. robustzoo/rot-adv-aft-r50")
    where.add_argument("--embed", action="store_true", help="ship the weight inside the package instead")
    where.add_argument("--refresh-metrics", action="store_true",
                       help="keep the released file; copy its newly measured figures from --metrics into its record")
    p.add_argument("--name", default="", help="registry name (default: the one stored in the weight)")
    p.add_argument("--registry", type=Path, default=None,
                   help=f"registry file to rewrite (default: ${{ROBUSTZOO_REGISTRY}} or {REGISTRY_FILE.name} "
                        "inside the package)")
    p.add_argument("--metrics", type=Path, default=None,
                   help="take the measured figures from this {name: {sha256, metrics}} file (benchmarks/)")
    p.add_argument("--endpoint", default=None, help="Hub URL (default ROBUSTZOO_ENDPOINT / HF_ENDPOINT)")
    p.add_argument("--token", default=os.environ.get("HF_TOKEN"), help="Hub token (default $HF_TOKEN)")
    p.add_argument("--retire", action="append", default=[], metavar="OLD",
                   help="drop the record OLD (and its embedded file): this weight succeeds it (repeatable)")
    p.add_argument("--why", default="", help="with --retire: the sentence users read when they ask for OLD")
    p.add_argument("--dry-run", action="store_true", help="print the registry diff; upload and write nothing")
    args = p.parse_args(argv)
    try:
        if args.refresh_metrics:
            new, diff = refresh_metrics(str(args.dir), registry=args.registry or registry_path(),
                                        metrics_file=args.metrics, dry_run=args.dry_run)
        else:
            new, diff = release(args.dir, repo_id=args.repo_id, embed=args.embed,
                                registry=args.registry or registry_path(), name=args.name, metrics_file=args.metrics,
                                endpoint=args.endpoint, token=args.token, dry_run=args.dry_run,
                                retire_names=tuple(args.retire), why=args.why)
    except RobustZooError as e:
        raise SystemExit(f"error: {e}") from None
    print(diff or "# the registry already holds this record", end="")
    where = "embedded" if new.embedded else f"{new.repo_id}@{new.revision}"
    print(f"# {new.name}: {where}, sha256 {new.sha256}{' (dry run: nothing written)' if args.dry_run else ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
