"""Merge the parts' JSON into ``results.json`` and ``results.md`` and copy the weights, within the device
tool's limits on what comes back (files, bytes per file, bytes in all)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path


def _load(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def collect(work: Path, out: Path, status: dict, *, budget: float, smoke: bool, limits: tuple[int, int, int]) -> None:
    max_files, max_file, max_total = limits
    results = {"status": status, "budget_s": budget, "smoke": smoke,
               **{p: _load(work / f"{p}.json") for p in ("bench", "compile", "zoo")}}
    # classifiers first, then backbones; leave room for results.json, results.md and the console log
    weights = sorted((work / "weights").glob("*/model.safetensors"), key=lambda p: ("-aft-" not in p.parent.name
                                                                                    and "at-" not in p.parent.name,
                                                                                    p.parent.name))
    copied, left_out, total = [], [], 4 * 2**20
    for w in weights:
        size = w.stat().st_size
        if len(copied) >= max_files - 3 or size > max_file or total + size > max_total:
            left_out.append({"file": w.parent.name, "bytes": size, "why": "over the device tool's return limits"})
            continue
        shutil.copy2(w, out / f"{w.parent.name}.safetensors")
        copied.append({"file": f"{w.parent.name}.safetensors", "bytes": size})
        total += size
    results["files"] = {"weights": copied, "left_out": left_out}
    (out / "results.json").write_text(json.dumps(results, indent=1, default=str) + "\n")
    (out / "results.md").write_text(markdown(results) + "\n")
    print((out / "results.md").read_text(), flush=True)


def _f(v, digits: int = 0) -> str:
    if v is None:
        return "-"
    return f"{v:.3g}" if 0 < abs(v) < 10 ** -digits * 100 else f"{v:,.{digits}f}"


def markdown(r: dict) -> str:
    b, c, z = r.get("bench") or {}, r.get("compile") or {}, r.get("zoo") or {}
    env = b.get("env") or z.get("env") or {}
    lines = [f"# GPU one-shot{' (smoke, CPU)' if r['smoke'] else ''}", "",
             f"{env.get('device', '?')}, torch {env.get('torch', '?')}, {env.get('date', '?')}, git "
             f"{env.get('git_commit', '?')}; budget {r['budget_s']:.0f} s, ran {r['status'].get('total_s')} s.", ""]
    lines += ["| part | status |", "|---|---|"]
    lines += [f"| {p} | {s.get('status')} {s.get('why', '')} ({s.get('seconds', '-')} s) |"
              for p, s in r["status"].items() if isinstance(s, dict)]
    lines += ["", *throughput(b, c, env)]
    lines += ["", *zoo_table(z)]
    files = r.get("files", {})
    lines += ["", "Weights: " + (", ".join(f["file"] for f in files.get("weights", [])) or "none")]
    for f in files.get("left_out", []):
        lines.append(f"- left out: {f['file']} ({f['bytes']} bytes): {f['why']}")
    return "\n".join(lines)


def throughput(b: dict, c: dict, env: dict) -> list[str]:
    peak, mm = env.get("peak_bf16_dense_flops"), (b.get("matmul") or {}).get("flops_s")
    out = [f"Matmul ceiling measured: {_f(mm and mm / 1e12, 1)} TFLOP/s ({(b.get('matmul') or {}).get('dtype')}); "
           f"datasheet bf16 dense peak: {_f(peak and peak / 1e12, 1)} TFLOP/s ({env.get('peak_source', '-')}).", "",
           "| task | arch | batch | precision | compile | img/s | step / F (counted) | TFLOP/s | % peak | % matmul |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for row in (b.get("rows") or []) + (c.get("rows") or []):
        tf, comp = row.get("tflops_counted"), row.get("compile", "off")
        if comp != "off":
            comp += f" ({_f(row.get('warmup_s'), 1)} s compile + warm-up)"
        out.append(f"| {row['task']}-{row['mode']} | {row['arch']} | {row.get('batch', '-')} | {row['precision']} | "
                   f"{comp} | {_f(row.get('img_s'))}{' ' + row['error'] if 'error' in row else ''}"
                   f" | {_f(row.get('step_over_fwd'), 1)} | {_f(tf, 1)} | "
                   f"{_f(tf and peak and 100 * tf * 1e12 / peak, 1)} | {_f(tf and mm and 100 * tf * 1e12 / mm, 1)} |")
    head = next((r for r in b.get("rows") or [] if (r["task"], r["mode"], r["arch"], r["precision"])
                 == ("rotation", "adv", "r18", "bf16-cl") and r.get("img_s")), None)
    if head:
        verdict = "met" if head["img_s"] >= 5000 else "not met"
        out.append(f"\nTarget >= 5,000 img/s for rotation-adv ResNet-18, bf16 + channels-last, batch "
                   f"{head['batch']}: {verdict} ({_f(head['img_s'])} img/s measured).")
    for s in (b.get("skipped") or []) + (c.get("skipped") or []):
        out.append(f"- skipped {'-'.join(s['config'])}: {s['why']}")
    out += ["", "| rate (ResNet-18, 3x32x32) | img/s |", "|---|---|"]
    rates = (b.get("rates") or {}).items()
    out += [f"| {k} | {_f(v.get('img_s'))} {v.get('error', v.get('why', ''))} |" for k, v in rates]
    ddp = b.get("ddp") or {}
    out += ["", f"DDP: {ddp.get('status', 'not reached')} {ddp.get('why', '')} "
                f"{_f(ddp.get('images_per_s_last_epoch'))}"]
    return out


def zoo_table(z: dict) -> list[str]:
    if not z:
        return ["Zoo: not reached."]
    p = z.get("plan") or {}
    cal = z.get("calibration") or {}
    out = [f"Zoo: {z.get('data', {}).get('train')} training / {z.get('data', {}).get('test')} test images; "
           f"measured pretext-adv {_f(cal.get('pretext_adv_img_s'))} img/s, fine-tune-adv "
           f"{_f(cal.get('finetune_adv_img_s'))} img/s -> {p.get('epochs')} epochs per item. {p.get('why', '')}", "",
           "| model | kind | epochs | train s | best epoch | clean | PGD-20 | PGD-20 img/s | AutoAttack (n) |",
           "|---|---|---|---|---|---|---|---|---|"]
    for name, m in (z.get("models") or {}).items():
        t, aa = m.get("test") or {}, m.get("autoattack") or {}
        extra = ""
        if m.get("kind") == "backbone":
            pt = (m.get("pretext_test") or {}).items()
            extra = " pretext test " + ", ".join(f"{k.removeprefix('test_')} {100 * v:.1f}" for k, v in pt
                                               if isinstance(v, float) and "score" not in k)
        out.append(f"| {name} | {m.get('kind')}{extra} | {m.get('epochs')} | {_f(m.get('train_s'))} | "
                   f"{m.get('best_epoch')} | {_f(t.get('clean'), 2)} | {_f(t.get('pgd20'), 2)} | "
                   f"{_f(t.get('pgd20_img_s'))} | {_f(aa.get('accuracy'), 2)} ({aa.get('n', 0)}) |")
    out += [f"- skipped {s['item']}: {s['why']}" for s in z.get("skipped") or []]
    return out
