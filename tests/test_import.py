"""`import robustzoo` stays light: no timm, no huggingface_hub, no torch until a model is needed."""

import subprocess
import sys


def _modules_after(code: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", code + "; import sys; print(' '.join(sys.modules))"],
                         check=True, capture_output=True, text=True).stdout
    return set(out.split())


def test_import_pulls_in_neither_timm_nor_huggingface_hub():
    mods = _modules_after("import robustzoo")
    assert "timm" not in mods and "huggingface_hub" not in mods and "torch" not in mods


def test_registry_and_models_do_not_pull_in_the_hub_client():
    mods = _modules_after("import robustzoo; robustzoo.list_models(); robustzoo.create_model('resnet18', width=0.1)")
    assert "torch" in mods
    assert "timm" not in mods and "huggingface_hub" not in mods
