"""Publishing to the Hugging Face Hub: model card + one commit (behind :func:`robustzoo.push_to_hub`).

The card's YAML front matter carries a ``model-index`` (clean and robust accuracy with the attack
setting) so the Hub shows the numbers, plus the sha256 to pin in the registry. One
``create_commit`` uploads weights, config and card together, so the returned commit id names a
repo state where all three agree.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Mapping
from pathlib import Path

from torch import nn

from ._download import cause, file_sha256
from .errors import DownloadError

__all__ = ["model_card", "publish", "publish_file"]

PAPER_URL = "https://arxiv.org/abs/2003.12862"
_METRIC_NAMES = {"clean": "clean accuracy", "pgd20": "PGD-20 robust accuracy (Linf)",
                 "autoattack": "AutoAttack robust accuracy (Linf)"}
_NOT_ACCURACY = ("n", "eps", "step", "best_epoch", "n_train")


def card_metrics(metrics: Mapping[str, object]) -> dict[str, float]:
    """The accuracies (in %) of a registry ``metrics`` mapping; counts, budgets and timings left out."""
    return {k: float(v) for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in _NOT_ACCURACY
            and not k.endswith(("_n", "_seconds", "seconds"))}


def model_card(model: nn.Module | Mapping, repo_id: str, *, name: str = "", metrics: Mapping[str, float] | None = None,
               sha256: str = "", dataset: str = "cifar10", eps: str = "8/255",
               provenance: Mapping[str, object] | None = None) -> str:
    """README.md text: YAML front matter (license, library, ``model-index``) and a short body.

    ``model`` is a robustzoo model or its config dict; ``provenance`` (code commit, recipe, data,
    machine, date) is listed in the body when given.
    """
    from huggingface_hub import ModelCardData
    from huggingface_hub.repocard_data import EvalResult

    title = name or repo_id.split("/")[-1]
    results = [
        EvalResult(task_type="image-classification", dataset_type=dataset, dataset_name=dataset,
                   metric_type="accuracy", metric_value=float(value), metric_name=_METRIC_NAMES.get(key, key),
                   metric_config=key if key == "clean" else f"{key} eps={eps}")
        for key, value in (metrics or {}).items()
    ]
    tags = ["adversarial-robustness", "image-classification", "arxiv:2003.12862"]
    data = ModelCardData(license="mit", library_name="robustzoo", tags=tags, datasets=[dataset],
                         pipeline_tag="image-classification", model_name=title,
                         eval_results=results or None)
    config = json.dumps(dict(model) if isinstance(model, Mapping) else getattr(model, "config", {}), sort_keys=True)
    made = "".join(f"- {k}: `{json.dumps(v, sort_keys=True, default=str)}`\n" for k, v in (provenance or {}).items()
                   if k in ("code_commit", "recipe", "overrides", "data", "machine", "date", "command"))
    return (
        f"---\n{data.to_yaml()}\n---\n\n# {title}\n\n"
        "Adversarially robust ResNet from the robustzoo model zoo, after Chen et al., *Adversarial Robustness: "
        f"From Self-Supervised Pre-Training to Fine-Tuning*, CVPR 2020 ([arXiv 2003.12862]({PAPER_URL})).\n\n"
        "Inputs are images in [0, 1]; normalisation happens inside the model; eps is in pixel units.\n\n"
        f"```python\nimport robustzoo\nmodel = robustzoo.load(\"hf-hub:{repo_id}\")\n```\n\n"
        f"- file: `model.safetensors`, sha256 `{sha256}`\n- config: `{config}`\n"
        + (f"\n## How it was made (measured here, not the paper's numbers)\n\n{made}" if made else "")
    )


def _commit(repo_id: str, folder: Path, *, endpoint: str, token: str | None, private: bool | None,
            message: str) -> str:
    """Upload weights, config and card of ``folder`` in one commit; returns the commit id."""
    from huggingface_hub import CommitOperationAdd, HfApi

    api = HfApi(endpoint=endpoint, token=token)
    ops = [CommitOperationAdd(path_in_repo=f, path_or_fileobj=str(folder / f))
           for f in ("model.safetensors", "config.json", "README.md")]
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        info = api.create_commit(repo_id, ops, commit_message=message)
    except Exception as e:  # httpx2 / huggingface_hub errors of many kinds: one clear error for the caller
        raise DownloadError(f"pushing {repo_id} to {endpoint} failed: {cause(e)}") from None
    return info.oid


def publish(model: nn.Module, repo_id: str, *, name: str, metrics: Mapping[str, float] | None, token: str | None,
            endpoint: str, private: bool | None, commit_message: str | None) -> str:
    """save_pretrained + card into a temp folder, then create_repo and one commit; returns the commit id."""
    from .weights import LOAD_KEYS, save_pretrained

    meta = {k: v for k, v in (getattr(model, "pretrained_meta", None) or {}).items() if k not in LOAD_KEYS}
    with tempfile.TemporaryDirectory() as tmp:  # no local path or stale registry source goes to the Hub
        weights = save_pretrained(model, tmp, name=name or repo_id.split("/")[-1], metadata=meta)
        card = model_card(model, repo_id, name=name, metrics=metrics, sha256=file_sha256(weights))
        (Path(tmp) / "README.md").write_text(card)
        return _commit(repo_id, Path(tmp), endpoint=endpoint, token=token, private=private,
                       message=commit_message or f"Upload {name or repo_id}")


def publish_file(weights: Path, repo_id: str, *, name: str, metrics: Mapping[str, float], dataset: str, eps: str,
                 provenance: Mapping[str, object], token: str | None, endpoint: str, private: bool | None = None,
                 commit_message: str | None = None) -> tuple[str, str]:
    """Upload an existing ``model.safetensors`` byte for byte (with its config and a card).

    The release step pins the sha256 of exactly the file it measured, so nothing is re-serialised.
    Returns ``(commit id, sha256 of the uploaded file)``.
    """
    import shutil

    from .weights import read_metadata

    meta, _ = read_metadata(weights)
    config = json.loads(meta["config"])
    sha = file_sha256(weights)
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copyfile(weights, Path(tmp) / "model.safetensors")
        (Path(tmp) / "config.json").write_text(json.dumps(dict(config, name=name), indent=2) + "\n")
        card = model_card(config, repo_id, name=name, metrics=metrics, sha256=sha, dataset=dataset, eps=eps,
                          provenance=provenance)
        (Path(tmp) / "README.md").write_text(card)
        if file_sha256(Path(tmp) / "model.safetensors") != sha:
            raise DownloadError(f"{weights} changed while it was being published; publish again")
        commit = _commit(repo_id, Path(tmp), endpoint=endpoint, token=token, private=private,
                         message=commit_message or f"Upload {name}")
    return commit, sha
