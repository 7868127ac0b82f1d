"""GPU check: does every heavy stage of raymem use the GPU, and how well?

One run, one device. Its matmul peak, measured here (bf16 8192^3 on CUDA, fp32 1024^3 on
CPU), is the yardstick. On a BERT-base-sized model (random weights; --tiny: 2 layers, hidden
64) and synthetic texts of exactly 128 tokens (--tiny: 16), under Runtime(device):

    finetune    raymem.train.fine_tune, batch 32         FLOPs 6 x params x tokens
    precog      PrecogScorer, masked copies              FLOPs 2 x params x tokens per copy
    retraining  retraining_windows, 3 windows            FLOPs counted (torch FlopCounterMode)
    gradients   forgetting_gradient_scores               FLOPs counted
    hidden      pooled_hidden_states, batches of 64      FLOPs counted

("params": those outside the embedding block, whose look-ups are no matmuls.) Packing:
fine-tuning trials (batch 8) per hour on one GPU, 4 processes together against 1 alone
(--tiny: 2). Then a small real `raymem study` of every stage (precog, finetune,
counterfactual, hidden states, every localisation technique) on that model and raymem-mini
(--tiny: the tiny model only); its DuckDB `runs` table must show every precog, finetune,
counterfactual and localise trial on the device.

Prints a table, writes JSON; exits 1 if a check fails or, on CUDA without --tiny, a target is
missed (fine-tuning >= 35% and PreCog >= 40% of the measured peak, packing >= 2.5x).

    python benchmarks/gpu_check.py --out benchmarks/out/gpu_check.json
    python benchmarks/gpu_check.py --device cpu --tiny --out /tmp/g.json   (the test's size)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from raymem.models import ASSETS, ModelSpec, embedding_parameters, load_masked_lm, load_tokenizer  # noqa: E402
from raymem.runtime import Runtime  # noqa: E402
from raymem.train import Encoded, TrainSettings, fine_tune  # noqa: E402

TARGETS = {"finetune": 0.35, "precog": 0.40, "packing": 2.5}  # CUDA, full size only
N_LABELS = 3
ON_DEVICE = ("precog", "finetune", "counterfactual", "localise")  # stages whose runs rows name their device
SIZES = {  # model, sequence length, and how much work each measurement gets
    "full": dict(layers=12, hidden=768, heads=12, ffn=3072, seq=128, ft_steps=60, precog_examples=128,
                 clean=256, noisy=64, hidden_examples=1024, pack_procs=4, pack_steps=150,
                 subsample={"train": 64, "validation": 16, "test": 32}),
    "tiny": dict(layers=2, hidden=64, heads=2, ffn=256, seq=16, ft_steps=2, precog_examples=8,
                 clean=16, noisy=8, hidden_examples=64, pack_procs=2, pack_steps=3,
                 subsample={"train": 32, "validation": 8, "test": 16}),
}


# -- model, data, timing ----------------------------------------------------------------
def build_checkpoint(folder: Path, z: dict) -> str:
    """A masked-LM checkpoint folder raymem loads like any other: random weights, raymem-mini's
    tokenizer (its 64-token limit lifted to the model's 512 positions)."""
    from transformers import AutoTokenizer, BertConfig, BertForMaskedLM

    tokenizer = AutoTokenizer.from_pretrained(ASSETS / "raymem-mini")
    tokenizer.model_max_length = 512
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=z["hidden"], num_hidden_layers=z["layers"],
                        num_attention_heads=z["heads"], intermediate_size=z["ffn"], max_position_embeddings=512,
                        pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    BertForMaskedLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def random_texts(tokenizer, n: int, length: int, seed: int) -> list[str]:
    """Texts of `length` whole words of the vocabulary: each is at least one token, so with
    [CLS] and [SEP] every text truncates to exactly `length` tokens (no padding anywhere)."""
    words = sorted(w for w in tokenizer.get_vocab() if w.isalpha() and w.isascii())
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(words, length)) for _ in range(n)]


def synthetic(tokenizer, n: int, length: int, seed: int = 0) -> Encoded:
    labels = np.random.default_rng(seed).integers(0, N_LABELS, n)
    return Encoded(tokenizer, random_texts(tokenizer, n, length, seed), None, labels, length)


def params(model) -> int:
    """Parameters outside the embedding block (a tied MLM decoder counts as embedding)."""
    embedding = {id(p) for p in embedding_parameters(model)}
    return sum(p.numel() for p in model.parameters() if id(p) not in embedding)


def classifier(rt: Runtime, path: str, tok, seed: int = 1):
    rt.seed(seed)  # the head's initialisation
    return rt.load_classifier(path, N_LABELS, tok.pad_token_id)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(device: torch.device, fn) -> float:
    """Seconds of fn(), its queued GPU work included."""
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def matmul_peak(device: torch.device, repeats: int = 20) -> float:
    n, dtype = (8192, torch.bfloat16) if device.type == "cuda" else (1024, torch.float32)
    a, b = (torch.randn(n, n, dtype=dtype, device=device) for _ in range(2))
    for _ in range(5):  # clocks up, cuBLAS picks its kernel
        a @ b
    return 2 * n ** 3 / statistics.median(timed(device, lambda: a @ b) for _ in range(repeats))


def counted_and_timed(rt: Runtime, work) -> tuple[float, float]:
    """(matmul FLOPs work() runs, forwards and backwards, counted by torch; its seconds).
    The counting run, slowed by the counter, is also the warm-up of the timed one."""
    from torch.utils.flop_counter import FlopCounterMode

    with rt.autocast():
        with FlopCounterMode(display=False) as counter:
            work()
        return float(counter.get_total_flops()), timed(rt.device, work)


# -- the stages: each -> items, their unit, seconds, FLOPs. Each imports its own modules:
# the packing workers run this file and need none of them.
def stage_finetune(rt: Runtime, path: str, tok, z: dict) -> dict:
    model, data = classifier(rt, path, tok), synthetic(tok, z["ft_steps"] * 32, z["seq"])
    s = TrainSettings(epochs=1, lr=1e-5, batch_size=32, max_length=z["seq"])
    with rt.autocast():
        fine_tune(model, data.subset(range(min(3 * 32, len(data)))), s, seed=1)  # warm-up
        seconds = timed(rt.device, lambda: fine_tune(model, data, s, seed=1))
    return {"items": len(data), "unit": "examples", "seconds": seconds, "flops_method": "6 x params x tokens",
            "flops": 6 * params(model) * len(data) * z["seq"]}


def stage_precog(rt: Runtime, path: str, tok, z: dict) -> dict:
    from raymem.measures.precog import PrecogScorer, PrecogSettings

    scorer = PrecogScorer(ModelSpec("gpu-check", path), PrecogSettings(ks=(1,), max_length=z["seq"]),
                          device=rt.device.type)
    texts, out = random_texts(tok, z["precog_examples"], z["seq"], seed=2), {}
    scorer.score(texts[:4])  # warm-up
    seconds = timed(rt.device, lambda: out.update(scorer.score(texts)))
    copies = int(out["n_units"].sum())  # one masked copy per token, each a forward of `seq` tokens
    return {"items": copies, "unit": "masked copies", "seconds": seconds, "flops_method": "2 x params x tokens",
            "flops": 2 * params(scorer.model) * copies * z["seq"]}


def stage_retraining(rt: Runtime, path: str, tok, z: dict) -> dict:
    from raymem.localise.retraining import retraining_windows

    memorised, pretrained = classifier(rt, path, tok, 1), classifier(rt, path, tok, 2)
    clean, noisy = synthetic(tok, z["clean"], z["seq"], 3), synthetic(tok, z["noisy"], z["seq"], 4)
    top = z["layers"]
    windows = sorted({(top, top), (top - 1, top)})  # and (1, L), which retraining always adds
    s, out = TrainSettings(epochs=1, lr=3e-5, batch_size=8, max_length=z["seq"]), {}
    flops, seconds = counted_and_timed(rt, lambda: out.update(frame=retraining_windows(
        memorised, pretrained, clean, noisy, s, seed=1, windows=windows)))
    return {"items": out["frame"].height, "unit": "windows", "seconds": seconds, "flops": flops,
            "flops_method": "counted"}


def stage_gradients(rt: Runtime, path: str, tok, z: dict) -> dict:
    from raymem.localise.gradients import forgetting_gradient_scores

    model, control = classifier(rt, path, tok, 1), classifier(rt, path, tok, 2)
    data = synthetic(tok, z["noisy"] + z["clean"], z["seq"], 5)
    noisy, clean = np.arange(z["noisy"]), np.arange(z["noisy"], len(data))
    flops, seconds = counted_and_timed(rt, lambda: forgetting_gradient_scores(
        model, control, data, noisy, clean, batch_size=32))
    return {"items": 2 * len(data), "unit": "example gradients", "seconds": seconds, "flops": flops,
            "flops_method": "counted"}


def stage_hidden(rt: Runtime, path: str, tok, z: dict) -> dict:
    from raymem.localise.layers import pooled_hidden_states

    model, data = classifier(rt, path, tok).eval(), synthetic(tok, z["hidden_examples"], z["seq"], 6)

    def work():  # as the hidden-state actors do: batches of 64, states back on the CPU
        for start in range(0, len(data), 64):
            batch = rt.to_device(data.batch(list(range(start, min(start + 64, len(data))))))
            pooled_hidden_states(model, batch).float().cpu()
    flops, seconds = counted_and_timed(rt, work)
    return {"items": len(data), "unit": "examples", "seconds": seconds, "flops": flops, "flops_method": "counted"}


STAGES = {"finetune": stage_finetune, "precog": stage_precog, "retraining": stage_retraining,
          "gradients": stage_gradients, "hidden": stage_hidden}


# -- packing: trials per hour with several processes on one GPU --------------------------
def worker(path: str, steps: int, seq: int, device: str) -> None:
    """One fine-tuning trial (batch 8): load and warm up, say READY, wait for a line on stdin,
    train, print its start and end (so startup is left out of the wall times)."""
    rt = Runtime(device)
    tok = load_tokenizer(ModelSpec("gpu-check", path), seq)
    model, data = classifier(rt, path, tok), synthetic(tok, steps * 8, seq)
    s = TrainSettings(epochs=1, lr=1e-5, batch_size=8, max_length=seq)
    with rt.autocast():
        fine_tune(model, data.subset(range(2 * 8)), s, seed=1)
        print("READY", flush=True)
        sys.stdin.readline()
        start = time.time()
        fine_tune(model, data, s, seed=1)
        sync(rt.device)
    print("TIMES", json.dumps({"start": start, "end": time.time()}), flush=True)


def expect(p: subprocess.Popen, word: str) -> str:
    """The rest of the worker's next line that starts with `word` (other output skipped)."""
    for line in p.stdout:
        if line.startswith(word):
            return line[len(word):]
    raise RuntimeError(f"packing worker exited with {p.wait()} before {word}")


def packing(path: str, z: dict, device: str) -> dict:
    """1 trial alone, then n together. All n + 1 workers load at once (one startup to wait
    for, not two); a loaded worker waiting for its line leaves the GPU alone."""
    n, started = z["pack_procs"], time.perf_counter()
    cmd = [sys.executable, __file__, "--worker", path, "--steps", str(z["pack_steps"]), "--seq", str(z["seq"]),
           "--device", device]
    procs = [subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) for _ in range(n + 1)]
    try:
        for p in procs:
            expect(p, "READY")
        walls = []
        for group in (procs[:1], procs[1:]):  # 1 alone, then n together: first start to last end
            for p in group:
                p.stdin.write("go\n")
                p.stdin.flush()
            times = [json.loads(expect(p, "TIMES")) for p in group]
            walls.append(max(t["end"] for t in times) - min(t["start"] for t in times))
        alone, together = walls
        if any(p.wait() for p in procs):
            raise RuntimeError("a packing worker failed")
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    per_hour = {"alone": 3600 / alone, "packed": 3600 * n / together}
    return {"processes": n, "steps_per_trial": z["pack_steps"], "batch_size": 8, "wall_alone": alone,
            "wall_packed": together, "wall": time.perf_counter() - started, "trials_per_hour_per_gpu": per_hour,
            "ratio": per_hour["packed"] / per_hour["alone"]}


# -- a real study on the device ----------------------------------------------------------
def study(root: Path, models: list[str], cuda: bool, log: Path, z: dict) -> dict:
    """Run a small study of every stage; read which device each trial ran on."""
    import duckdb
    import ray
    import yaml

    from raymem.cli import main as raymem

    gpus = lambda share: {"gpus": share} if cuda else {"gpus": 0, "device": "cpu"}  # noqa: E731
    spec = {"study": "gpu_check", "results": str(root / "results"), "models": models,
            "tasks": ["tweet_sentiment"], "seeds": [1], "subsample": z["subsample"],
            "precog": {"k": [1], "max_length": 64, "actors": {"min_size": 1, "max_size": 1, **gpus(1)}},
            "finetune": {"epochs": 2, "max_length": 64, "resources": gpus(0.5)},
            "counterfactual": {"enabled": True, "n_models": 2, "epochs": 1},
            "localise": {"enabled": True, "retrain_epochs": 1, "probe_seeds": [1], "probe_epochs": 2,
                         "resources": gpus(0.25), "hidden_resources": gpus(0.5),
                         "control": {"enabled": False}},
            "ray": {"num_cpus": 16 if cuda else 2}}
    (root / "study.yaml").write_text(yaml.safe_dump(spec))
    # in this process (torch and raymem are imported already), its output to the log; the
    # local Ray it starts is stopped here
    with open(log, "w") as out, contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        try:
            code = raymem(["study", str(root / "study.yaml")])
        except Exception:
            traceback.print_exc()
            code = -1
        finally:
            ray.shutdown()
    runs, db = [], root / "results" / "raymem.duckdb"
    if db.is_file():
        with duckdb.connect(str(db), read_only=True) as con:
            runs = [dict(zip(("stage", "model", "device", "status"), r)) for r in con.execute(
                "SELECT stage, model, device, status FROM runs WHERE stage IN ({}) ORDER BY stage, model"
                .format(", ".join(f"'{stage}'" for stage in ON_DEVICE))).fetchall()]
    on_device = (lambda d: d.startswith("cuda")) if cuda else (lambda d: d == "cpu")
    return {"exit_code": code, "log": str(log), "runs": runs, "stages": sorted({r["stage"] for r in runs}),
            "all_on_device": bool(runs) and all(on_device(r["device"]) for r in runs)}


# -- the run ---------------------------------------------------------------------------
def measure(args, z: dict, result: dict, failures: list[str], root: Path) -> None:
    """Every measurement; a failing one is recorded and the others still run."""
    cuda, rt = args.device == "cuda", Runtime(args.device)
    result.update(device=rt.info["device"], precision=rt.precision)
    result["peak_flops"] = peak = matmul_peak(rt.device)
    result["peak_kind"] = "bf16 8192^3" if cuda else "fp32 1024^3"
    path = build_checkpoint(root / "model", z)
    tok = load_tokenizer(ModelSpec("gpu-check", path), z["seq"])
    result["params"] = params(load_masked_lm(ModelSpec("gpu-check", path)))
    for name, stage in STAGES.items():
        try:
            started = time.perf_counter()
            r = stage(rt, path, tok, z)
            r.update(wall=time.perf_counter() - started,  # loading and warm-up included
                     items_per_s=r["items"] / r["seconds"], flop_s=r["flops"] / r["seconds"])
            result["stages"][name] = {**r, "share_of_peak": r["flop_s"] / peak}
        except Exception:
            failures.append(f"{name}: {traceback.format_exc(limit=4)}")
        if cuda:
            torch.cuda.empty_cache()  # the GPU's memory to the packing workers and the study
    try:
        result["packing"] = packing(path, z, args.device)
    except Exception:
        failures.append(f"packing: {traceback.format_exc(limit=4)}")
    log = Path(args.out).with_name(Path(args.out).stem + "_study.log")
    log.parent.mkdir(parents=True, exist_ok=True)
    # --tiny: the tiny model only (raymem-mini's 4 layers would double the localise trials)
    started = time.perf_counter()
    result["study"] = s = study(root, [path] if args.tiny else [path, "raymem-mini"], cuda, log, z)
    s["wall"] = time.perf_counter() - started
    if s["exit_code"] != 0:
        failures.append(f"study: `raymem study` exited {s['exit_code']} (see {log})")
    if s["stages"] != sorted(ON_DEVICE):
        failures.append(f"study: runs rows of stages {s['stages']}, expected {', '.join(sorted(ON_DEVICE))}")
    if not s["all_on_device"]:
        failures.append(f"study: not every trial ran on {args.device}: " + ", ".join(
            sorted({f"{r['stage']} on {r['device']}" for r in s["runs"]})))


def report(result: dict) -> None:
    print(f"\n{result.get('device')} ({result.get('precision')}), {result['size']} size: model {result['model']}, "
          f"{result.get('params', 0) / 1e6:.1f}M non-embedding params, seq {result['seq_len']}; matmul peak "
          f"({result.get('peak_kind')}) {result.get('peak_flops', 0) / 1e12:.2f} TFLOP/s\n")
    print(f"| {'stage':<10} | {'items/s':>10} | {'unit':<17} | {'model TFLOP/s':>13} | {'% of peak':>9} | FLOPs |")
    print(f"|{'-' * 12}|{'-' * 12}|{'-' * 19}|{'-' * 15}|{'-' * 11}|-------|")
    for name, r in result["stages"].items():
        print(f"| {name:<10} | {r['items_per_s']:>10.1f} | {r['unit']:<17} | {r['flop_s'] / 1e12:>13.3f} "
              f"| {100 * r['share_of_peak']:>8.1f}% | {r['flops_method']} |")
    if "packing" in result:
        p, per_hour = result["packing"], result["packing"]["trials_per_hour_per_gpu"]
        print(f"\npacking: {p['processes']} trials together {per_hour['packed']:.0f} trials/h/GPU, 1 alone "
              f"{per_hour['alone']:.0f} trials/h/GPU: {p['ratio']:.2f}x")
    if "study" in result:
        s = result["study"]
        print(f"study: exit {s['exit_code']}, {len(s['runs'])} trials, devices "
              f"{sorted({(r['stage'], r['device']) for r in s['runs']})}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--tiny", action="store_true", help="the CPU-test size")
    ap.add_argument("--out", default=str(Path(__file__).parent / "out" / "gpu_check.json"))
    for name in ("--worker", "--steps", "--seq"):  # a packing worker's (internal)
        ap.add_argument(name, type=str if name == "--worker" else int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args.worker, args.steps, args.seq, args.device)
        return 0
    z = SIZES["tiny" if args.tiny else "full"]
    if args.tiny:  # one thread: a tiny model gains nothing from more, and on a loaded machine
        os.environ["OMP_NUM_THREADS"] = "1"  # OpenMP's barriers crawl (workers inherit it)
        torch.set_num_threads(1)
    result = {"size": "tiny" if args.tiny else "full", "model": {k: z[k] for k in ("layers", "hidden", "heads", "ffn")},
              "seq_len": z["seq"], "torch": torch.__version__, "stages": {}}
    failures, root = [], Path(tempfile.mkdtemp(prefix="gpu_check-"))
    try:
        measure(args, z, result, failures, root)
    except Exception:
        failures.append(traceback.format_exc(limit=6))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    report(result)
    if args.device == "cuda" and not args.tiny:  # targets mean something for a real model on a GPU only
        got = {"finetune": result["stages"].get("finetune", {}).get("share_of_peak", 0),
               "precog": result["stages"].get("precog", {}).get("share_of_peak", 0),
               "packing": result.get("packing", {}).get("ratio", 0)}
        result["targets"] = {k: {"target": TARGETS[k], "got": got[k], "met": got[k] >= TARGETS[k]} for k in TARGETS}
        failures += [f"target {k}: {got[k]:.2f} < {TARGETS[k]}" for k in TARGETS if got[k] < TARGETS[k]]
    return finish(result, failures, args.out)


def finish(result: dict, failures: list[str], out: str) -> int:
    """Write the result (with its failures) as JSON to `out`, name each failure; the exit code."""
    result["failures"] = failures
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(f"wrote {out}")
    for f in failures:
        print(f"FAILED {f}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
