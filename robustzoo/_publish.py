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

__all__ = ["model_card", "publish"]

PAPER_URL = "https://arxiv.org/abs/2003.12862"
_METRIC_NAMES = {"clean": "clean accuracy", "pgd20": "PGD-20 robust accuracy (Linf)",
                 "autoattack": "AutoAttack robust accuracy (Linf)"}


def model_card(model: nn.Module, repo_id: str, *, name: str = "", metrics: Mapping[str, float] | None = None,
               sha256: str = "", dataset: str = "cifar10", eps: str = "8/255") -> str:
    """README.md text: YAML front matter (license, library, ``model-index``) and a short body."""
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
    config = json.dumps(getattr(model, "config", {}), sort_keys=True)
    return (
        f"---\n{data.to_yaml()}\n---\n\n# {title}\n\n"
        "Adversarially robust ResNet from the robustzoo model zoo, after Chen et al., *Adversarial Robustness: "
        f"From Self-Supervised Pre-Training to Fine-Tuning*, CVPR 2020 ([arXiv 2003.12862]({PAPER_URL})).\n\n"
        "Inputs are images in [0, 1]; normalisation happens inside the model; eps is in pixel units.\n\n"
        f"```python\nimport robustzoo\nmodel = robustzoo.load(\"hf-hub:{repo_id}\")\n```\n\n"
        f"- file: `model.safetensors`, sha256 `{sha256}`\n- config: `{config}`\n"
    )


def publish(model: nn.Module, repo_id: str, *, name: str, metrics: Mapping[str, float] | None, token: str | None,
            endpoint: str, private: bool | None, commit_message: str | None) -> str:
    """save_pretrained + card into a temp folder, then create_repo and one commit; returns the commit id."""
    from huggingface_hub import CommitOperationAdd, HfApi

    from .weights import save_pretrained

    api = HfApi(endpoint=endpoint, token=token)
    with tempfile.TemporaryDirectory() as tmp:
        weights = save_pretrained(model, tmp, name=name or repo_id.split("/")[-1],
                                  metadata=getattr(model, "pretrained_meta", None))
        card = model_card(model, repo_id, name=name, metrics=metrics, sha256=file_sha256(weights))
        (Path(tmp) / "README.md").write_text(card)
        ops = [CommitOperationAdd(path_in_repo=f, path_or_fileobj=str(Path(tmp) / f))
               for f in ("model.safetensors", "config.json", "README.md")]
        try:
            api.create_repo(repo_id, private=private, exist_ok=True)
            info = api.create_commit(repo_id, ops, commit_message=commit_message or f"Upload {name or repo_id}")
        except Exception as e:  # httpx2 / huggingface_hub errors of many kinds: one clear error for the caller
            raise DownloadError(f"pushing {repo_id} to {endpoint} failed: {cause(e)}") from None
    return info.oid
