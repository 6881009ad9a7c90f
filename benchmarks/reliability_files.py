"""Reliability against hostile and broken files: N variants per bad-input class.

For each class, every variant goes through the entry point a user would hit (``load_file`` for
weight files, ``convert`` for legacy checkpoints) and is counted as one of:

* clean project error: a robustzoo error (``WeightFormatError``, ``ConversionError``...: the wanted outcome);
* raw exception: anything else escaping (a bug: must be 0);
* payload executed: a pickled ``__reduce__`` payload created its marker file (must be 0);
* wrong weights loaded: the call succeeded although the file is invalid, or returned weights that
  differ from the file they were made from (must be 0);
* hang: no answer within 60 s (must be 0; a FIFO or ``/dev/zero`` once made hashing block or run forever).

Usage: ``python benchmarks/reliability_files.py [--n 50] [--seed 0]``; prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import platform
import random
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import torch
from safetensors.torch import load_file as st_load
from safetensors.torch import save_file

import robustzoo
from robustzoo.converter import convert
from robustzoo.errors import RobustZooError
from robustzoo.models import resnet18, resnet50v2
from robustzoo.weights import load_file, save_pretrained


class Payload:
    def __init__(self, marker: str, how: int) -> None:
        self.marker, self.how = marker, how

    def __reduce__(self):
        if self.how == 0:
            return (open, (self.marker, "w"))
        if self.how == 1:
            return (os.system, (f"touch '{self.marker}'",))
        return (exec, (f"open({self.marker!r}, 'w')",))



EPILOG = ("Runtime: minutes. Writes nothing outside temp folders: prints the markdown table (--json for the "
          "counts).")

def _header(data: bytes) -> tuple[dict, bytes]:
    n = struct.unpack("<Q", data[:8])[0]
    return json.loads(data[8:8 + n]), data[8 + n:]


def _pack(header, body: bytes = b"", length: int | None = None) -> bytes:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(raw) if length is None else length) + raw + body


class Bench:
    def __init__(self, work: Path, rng: random.Random) -> None:
        self.work, self.rng = work, rng
        torch.manual_seed(0)
        self.good_path = save_pretrained(resnet18(width=0.0625, num_classes=3), work / "good")
        self.good = self.good_path.read_bytes()
        self.tensors = st_load(str(self.good_path))
        self.meta = _header(self.good)[0]["__metadata__"]
        net = resnet50v2(width=0.0625)
        self.ckpt = {"0.mean": net.normalize.mean.flatten(), "0.std": net.normalize.std.flatten(),
                     **{f"1.{k}": v for k, v in net.state_dict().items() if not k.startswith("normalize.")}}
        self.marker = work / "PWNED"

    # -- variant generators: each returns (kind, payload) with kind "file" or "ckpt"
    def pickle_ckpt(self, i):
        path = self.work / "evil.pt"
        obj = {"epoch": i, "state_dict": {**self.ckpt, "1.conv1.weight": Payload(str(self.marker), i % 3)}}
        if i % 3 == 2:
            path.write_bytes(pickle.dumps(obj, protocol=self.rng.choice([2, 3, 4, 5])))
        else:
            torch.save(obj, path, _use_new_zipfile_serialization=bool(i % 2))
        return "ckpt", path

    def control_unsafe(self, i):
        return "unsafe", self.pickle_ckpt(i)[1]

    def pickle_safetensors(self, i):
        path = self.work / "model.safetensors"
        obj = {"w": Payload(str(self.marker), i % 3)}
        if i % 2:
            path.write_bytes(pickle.dumps(obj, protocol=self.rng.choice([2, 3, 4, 5])))
        else:
            torch.save(obj, path)
        return "file", path.read_bytes()

    def html(self, i):
        title = self.rng.choice(["Google Drive - Quota exceeded", "Sign in", "404 Not Found", "Virus scan warning"])
        pad = " " * self.rng.randrange(0, 40)
        page = f"{pad}<!DOCTYPE html><html><head><title>{title}</title></head><body>{'x' * i * 37}</body></html>"
        return "file", (page if i % 2 else page.replace("<!DOCTYPE html>", "")).encode()

    def truncated(self, i):
        return "file", self.good[: self.rng.randrange(0, len(self.good))]

    def oversized_header(self, i):
        return "file", struct.pack("<Q", self.rng.randrange(len(self.good), 2**64)) + self.good[8:]

    def malformed_json(self, i):
        header, body = _header(self.good)
        raw = bytearray(json.dumps(header).encode())
        for _ in range(self.rng.randint(1, 3)):
            raw[self.rng.randrange(len(raw))] = self.rng.choice(b'{}[]",:\\0x\xff')
        return "file", _pack(bytes(raw), body)

    def wrong_dtype(self, i):
        t = dict(self.tensors)
        key = self.rng.choice(sorted(k for k, v in t.items() if v.is_floating_point()))
        t[key] = t[key].to(self.rng.choice([torch.int32, torch.int64, torch.int16, torch.uint8]))
        return "file", self._save(t)

    def wrong_shape(self, i):
        t = dict(self.tensors)
        key = self.rng.choice(sorted(k for k, v in t.items() if v.ndim))
        v = t[key].flatten()
        t[key] = v.reshape(1, -1) if i % 2 else torch.cat([v, v[:1]])
        return "file", self._save(t)

    def wrong_config(self, i):
        cfg = json.loads(self.meta["config"])
        key, value = self.rng.choice([("arch", "resnet50v2"), ("arch", "resnet152"), ("num_classes", 7),
                                      ("width", 0.125), ("in_chans", 1), ("mean", ["a"]), ("num_classes", -1)])
        return "file", self._save(self.tensors, {**self.meta, "config": json.dumps({**cfg, key: value})})

    def random_bytes(self, i):
        return "file", self.rng.randbytes(self.rng.randrange(0, 4096))

    def fuzzed_header(self, i):
        def value(depth=0):
            pick = self.rng.randrange(7 if depth < 3 else 4)  # lazily: only the chosen branch recurses
            if pick == 4:
                return [value(depth + 1) for _ in range(self.rng.randrange(3))]
            if pick == 5:
                keys = ["dtype", "shape", "data_offsets", "__metadata__", "w"]
                return {self.rng.choice(keys): value(depth + 1) for _ in range(self.rng.randrange(4))}
            if pick == 6:
                size = 4 * self.rng.randint(-1, 4)
                return {"dtype": "F32", "shape": [self.rng.randint(-2, 4)], "data_offsets": [0, size]}
            return [None, self.rng.randint(-9, 2**40), self.rng.choice(["F32", "I64", "X", ""]), 1.5][pick]

        names = ["conv1.weight", "w", "__metadata__"]
        header = {self.rng.choice(names): value() for _ in range(self.rng.randrange(4))}
        return "file", _pack(header, self.rng.randbytes(self.rng.randrange(64)))

    def header_bitflip(self, i):
        n = struct.unpack("<Q", self.good[:8])[0]
        buf = bytearray(self.good)
        pos = self.rng.randrange(8 + n)  # header only: body corruption is what sha256 pinning catches
        buf[pos] ^= 1 << self.rng.randrange(8)
        return "file", bytes(buf)

    def known_leaks(self, i):
        """Inputs that once let raw exceptions through weights.py (pinned in test_hostile_files)."""
        entry = {"dtype": ["F32"], "shape": [1], "data_offsets": [0, 4]}
        cfg = {**json.loads(self.meta["config"]), "width": self.rng.choice([float("inf"), 1e12])}
        return "file", [_pack({"w": entry}, b"\0" * 4), _pack(b"[" * self.rng.randrange(10**4, 10**5)),
                        _pack(b'{"w": ' + b"7" * self.rng.randrange(4400, 9000) + b"}"),
                        self._save(self.tensors, {**self.meta, "config": json.dumps(cfg)})][i % 4]

    def ckpt_keys(self, i):
        state = dict(self.ckpt)
        keys = sorted(state)
        for _ in range(self.rng.randint(1, 3)):
            key, op = self.rng.choice(keys), self.rng.randrange(3)
            if op == 0:
                state.pop(key, None)
            elif op == 1:
                state["1." + self.rng.choice(["fc", "layer5.0", "extra"]) + key[1:]] = torch.zeros(1)
            else:
                state[key] = torch.zeros([d + 1 for d in state[key].shape] or [2])
        path = self.work / "ckpt.pt"
        torch.save({"epoch": i, "state_dict": state, "best_prec1": 0.0}, path)
        return "ckpt", path

    def _poisoned(self, i, poison):
        state = dict(self.ckpt)
        keys = sorted(k for k, v in state.items() if v.is_floating_point() and v.ndim and "running" not in k
                      and not k.startswith("0."))
        if poison == "overflow":  # float64 values beyond float32's range: inf after a cast
            key = self.rng.choice(keys)
            t = state[key].double().clone()
            t.view(-1)[self.rng.randrange(t.numel())] = self.rng.choice([1e39, -1e300, 3.5e38])
        elif poison == "negative_var":
            key = self.rng.choice(sorted(k for k in state if k.endswith("running_var")))
            t = state[key].clone()
            t.view(-1)[self.rng.randrange(t.numel())] = -self.rng.uniform(1e-6, 10)
        else:
            key = self.rng.choice(keys)
            t = state[key].to_sparse() if i % 2 else torch.quantize_per_tensor(state[key], 0.05, 0, torch.qint8)
        state[key] = t
        path = self.work / "ckpt.pt"
        torch.save({"epoch": i, "state_dict": state, "best_prec1": 0.0}, path)
        return "ckpt", path

    def overflow(self, i):
        return self._poisoned(i, "overflow")

    def negative_var(self, i):
        return self._poisoned(i, "negative_var")

    def sparse_quantized(self, i):
        return self._poisoned(i, "layout")

    def non_regular(self, i):
        fifo = self.work / f"pipe{i}"
        if i % 3 == 0:
            os.mkfifo(fifo)
        target = [fifo, Path("/dev/zero"), self.work][i % 3]
        return "load", (str(target), "0" * 64 if i % 2 else None)

    def sparse_terabyte(self, i):
        from robustzoo.models import create_model

        cfg = {**json.loads(self.meta["config"]), "width": self.rng.choice([100.0, 150.0, 200.0])}
        with torch.device("meta"):
            shapes = create_model(**cfg).state_dict()
        header, offset = {"__metadata__": {**self.meta, "config": json.dumps(cfg)}}, 0
        for key, t in shapes.items():
            dtype, size = ("F32", 4) if t.is_floating_point() else ("I64", 8)
            header[key] = {"dtype": dtype, "shape": list(t.shape), "data_offsets": [offset, offset + t.numel() * size]}
            offset += t.numel() * size
        return "sparse", (json.dumps(header).encode(), offset)

    # -- fine-tuning checkpoints (issue #11 points 5 and 6): made unusable, then resumed
    _FT = dict(mode="adv-full", epochs=2, batch_size=16, eps=0.1, steps=1, eval_steps=1, lr=0.05, progress=False)

    def _ft_model(self, seed: int = 0, width: float = 0.0625):
        torch.manual_seed(seed)
        return resnet18(width=width, in_chans=1, num_classes=4)

    def _ft_data(self, shift: int = 0):
        g = torch.Generator().manual_seed(0)
        return torch.rand(48, 1, 16, 16, generator=g), (torch.arange(48) + shift) % 4

    def _ft_run(self) -> Path:
        """A finished 2-epoch fine-tuning run's folder, copied fresh for every try."""
        base = self.work / "ft-base"
        if not base.exists():
            robustzoo.finetune(self._ft_model(), self._ft_data(), checkpoint_dir=base, **self._FT)
        folder = self.work / "ft-try"
        shutil.rmtree(folder, ignore_errors=True)
        shutil.copytree(base, folder)
        return folder

    def ckpt_resume(self, i):
        """One of: a flipped byte in a tensor, an edited epoch counter, another width, other starting weights
        (another run's folder), other data; each resumed with ``resume=True``."""
        folder, how = self._ft_run(), i % 5
        path = folder / "ckpt.safetensors"
        model, data = self._ft_model(), self._ft_data()
        if how == 0:
            raw = bytearray(path.read_bytes())
            n = struct.unpack("<Q", raw[:8])[0]
            raw[8 + n + self.rng.randrange(len(raw) - 8 - n)] ^= 1 << self.rng.randrange(8)
            path.write_bytes(bytes(raw))
        elif how == 1:
            meta, tensors = _header(path.read_bytes())[0]["__metadata__"], st_load(str(path))
            state = json.loads(meta["state"])
            state["epoch"] = state["epoch"] + self.rng.choice([-1, 1, 5])
            save_file(tensors, str(path), metadata={**meta, "state": json.dumps(state)})
        elif how == 2:
            model = self._ft_model(width=0.125)
        elif how == 3:
            model = self._ft_model(seed=1 + i)
        else:
            data = self._ft_data(shift=1)
        return "resume", (model, data, folder)

    def ckpt_locked(self, i):
        """Another process holds the run folder's lock while a second fine-tune starts there."""
        folder = self._ft_run()
        return "locked", (self._ft_model(), self._ft_data(), folder)

    def _save(self, tensors, meta=None) -> bytes:
        path = self.work / "tmp.safetensors"
        save_file(dict(tensors), str(path), metadata=meta or self.meta)
        return path.read_bytes()

    # -- one try
    def run(self, kind, payload) -> str:
        self.marker.unlink(missing_ok=True)
        signal.signal(signal.SIGALRM, _alarm)
        signal.alarm(60)
        try:
            if kind == "unsafe":  # control row only: what plain torch.load would have done with the same file
                torch.load(payload, weights_only=False)
                outcome = "wrong"
            elif kind == "load":  # a path that is not a regular file, through the public loader
                robustzoo.load(payload[0], sha256=payload[1])
                outcome = "wrong"
            elif kind == "sparse":  # a sparse file as long as its header claims: no disk used
                path = self.work / "model.safetensors"
                with open(path, "wb") as f:
                    f.write(struct.pack("<Q", len(payload[0])) + payload[0])
                    f.truncate(8 + len(payload[0]) + payload[1])
                load_file(path)
                outcome = "wrong"
            elif kind in ("resume", "locked"):
                model, data, folder = payload
                holder = None
                if kind == "locked":  # a real second process, as two users' runs would be
                    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(folder / ".run.lock")],
                                              stdout=subprocess.PIPE, text=True)
                    holder.stdout.readline()  # "held"
                try:
                    robustzoo.finetune(model, data, checkpoint_dir=folder, resume=True, **Bench._FT)
                finally:
                    if holder is not None:
                        holder.kill()
                        holder.wait()
                outcome = "wrong"  # resumed (or ran) silently from a checkpoint it should have refused
            elif kind == "ckpt":
                convert("finetune", [payload], self.work / "out")
                outcome = "wrong"
            else:
                path = self.work / "model.safetensors"
                path.write_bytes(payload)
                model = load_file(path)
                same = payload == self.good or all(torch.equal(v, self.tensors.get(k, torch.empty(0)))
                                                   for k, v in model.state_dict().items())
                outcome = "harmless" if same else "wrong"
        except _Hang:
            outcome = "hang"
        except RobustZooError:
            outcome = "clean"
        except Exception:  # noqa: BLE001 - counting exactly these is the point
            outcome = "raw"
        finally:
            signal.alarm(0)
            for leftover in self.work.glob("pipe*"):
                leftover.unlink()
            (self.work / "model.safetensors").unlink(missing_ok=True)
        return "payload" if self.marker.exists() else outcome


_HOLD = ("import sys, time; from filelock import FileLock; lock = FileLock(sys.argv[1]); lock.acquire(); "
         "print('held', flush=True); time.sleep(120)")


class _Hang(Exception):
    pass


def _alarm(signum, frame):
    raise _Hang


CLASSES = [
    ("pickle payload (.pt) -> convert", "pickle_ckpt"),
    ("pickle payload named model.safetensors -> load_file", "pickle_safetensors"),
    ("HTML page", "html"),
    ("truncated file (random cut point)", "truncated"),
    ("oversized header length", "oversized_header"),
    ("malformed header JSON", "malformed_json"),
    ("wrong dtype (int where float)", "wrong_dtype"),
    ("wrong shape", "wrong_shape"),
    ("config that does not fit the tensors", "wrong_config"),
    ("random bytes", "random_bytes"),
    ("fuzzed header structure", "fuzzed_header"),
    ("bit flip in the header", "header_bitflip"),
    ("missing / unexpected / mis-shaped keys -> convert", "ckpt_keys"),
    ("hostile JSON and configs (dtype list, deep JSON, 4400+ digit int, inf/huge width)", "known_leaks"),
    ("float64 value that overflows float32 -> convert", "overflow"),
    ("negative BatchNorm running_var -> convert", "negative_var"),
    ("sparse or quantized tensor -> convert", "sparse_quantized"),
    ("FIFO, /dev/zero or folder -> load (with and without sha256)", "non_regular"),
    ("sparse file whose consistent header declares ~0.5-2 TB -> load_file", "sparse_terabyte"),
    ("fine-tuning checkpoint: flipped byte, edited epoch, other width / weights / data -> finetune(resume=True)",
     "ckpt_resume"),
    ("run folder locked by another process -> finetune", "ckpt_locked"),
]
CONTROL = ("control, not robustzoo: the same .pt payloads through torch.load(weights_only=False)", "control_unsafe")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=EPILOG)
    parser.add_argument("--n", type=int, default=50, help="variants per input class")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    rng = random.Random(args.seed)
    start = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        bench = Bench(Path(tmp), rng)
        for label, method in CLASSES:
            counts = Counter(bench.run(*getattr(bench, method)(i)) for i in range(args.n))
            rows.append((label, args.n, counts))
        control = Counter(bench.run(*bench.control_unsafe(i)) for i in range(args.n))
    print(f"robustzoo reliability_files: {args.n} variants per class, seed {args.seed}; "
          f"torch {torch.__version__}, Python {platform.python_version()}, {os.cpu_count()} CPU(s), "
          f"{time.perf_counter() - start:.1f} s\n")
    print("| input class | tries | clean project error | raw exception | payload executed | wrong weights loaded "
          "| hangs | loaded, identical weights |")
    print("|---|---|---|---|---|---|---|---|")
    for label, n, c in rows:
        print(f"| {label} | {n} | {c['clean']} | {c['raw']} | {c['payload']} | {c['wrong']} | {c['hang']} "
              f"| {c['harmless']} |")
    c = control
    print(f"| *{CONTROL[0]}* | {args.n} | {c['clean']} | {c['raw']} | {c['payload']} | {c['wrong']} | - | - |")
    bad = sum(c["raw"] + c["payload"] + c["wrong"] + c["hang"] for _, _, c in rows)
    print(f"\nfailures (raw + payload + wrong + hang): {bad}")
    sys.exit(0)


if __name__ == "__main__":
    main()
