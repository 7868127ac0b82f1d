"""First GPU run: everything a first run of raymem on a GPU node should show, in one script.

Built on benchmarks/gpu_check.py (its model, data and timing helpers, and its measurements:
every heavy stage's throughput and share of the matmul peak, packing 4 fine-tuning trials
against 1, and a real `raymem study` of every stage on raymem-mini and a BERT-base-sized
model whose `runs` rows must all name the device). Beside them, each check isolated (one
that fails is reported, the others still run):

    environment  driver, torch's CUDA, the pairing of raymem/gpu_stack.py (the node check's
                 verdict), bf16 without emulation, the precision `auto` picks, TF32 off
    ray_packing  a local Ray with one GPU; 8 trials at gpus 0.25 on reused workers: the
                 device each saw, GPU memory before, during and after (freed between trials)
    cuda_error   a device-side assert in a worker: raymem calls it sticky, the same worker's
                 next CUDA call fails, a fresh worker runs the next trial (on the CPU: the
                 error is raised as torch words it, and only the classification is checked)
    precog_pool  PreCog through a Ray Data actor pool at num_gpus 0.5 in its placement group
    numerics     bf16 against fp32 (logits, PreCog log-likelihoods) within TOLERANCES; the same
                 trial twice gives the same predictions; a trial stopped after epoch 1 and
                 resumed ends where a straight one does
    speed        PreCog at real tweet lengths against texts of one length; host reads of
                 device values per training step (on CUDA: torch's sync debug mode counts the
                 syncs; on the CPU: calls of item/all/bool/tolist), equal-length against padded

Prints a table, writes JSON (`failures` lists what failed); exits 1 on a failure. On one H100
the whole run takes about 7 minutes (each check's wall time is in the JSON).

    python benchmarks/gpu_first_run.py --out benchmarks/out/gpu_first_run.json
    python benchmarks/gpu_first_run.py --device cpu --tiny --out /tmp/f.json   (the test's size)
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

import gpu_check as base  # this folder: the script's own
import numpy as np
import torch

from raymem.models import ModelSpec, load_tokenizer
from raymem.runtime import Runtime
from raymem.train import TrainSettings, fine_tune, predict

# bf16 against fp32: logits of the classifier (random head, so of order 1) and PreCog's mean
# log-likelihood per token (nats); bf16 keeps 8 bits of mantissa, so about 1e-2 relative.
TOLERANCES = {"logits_max_abs": 0.1, "pll_mean_abs": 0.1, "precog_at_1_agree": 0.9}


def check_environment(ctx: dict) -> dict:
    from raymem import gpu_stack, nodecheck
    from raymem.runtime import tf32_matmuls

    facts = nodecheck.read_facts()
    out = {"torch": facts.torch_version, "torch_cuda": facts.torch_cuda, "cuda_available": facts.cuda_available,
           "nvidia_smi": (facts.nvidia_smi or facts.smi_error).strip(),
           "pairing": {"cuda": gpu_stack.CUDA, "min_driver": gpu_stack.min_driver(gpu_stack.CUDA),
                       "wheel": gpu_stack.gpu_torch(), "index": gpu_stack.GPU_INDEX_URL}}
    rt = Runtime(ctx["device"])
    out.update(precision_auto=rt.precision, tf32_after_runtime=tf32_matmuls())
    if not ctx["cuda"]:
        out["note"] = "no GPU: the driver pairing and bf16 support are checked on CUDA only"
        return {**out, "ok": not out["tf32_after_runtime"]}
    out.update(problems=nodecheck.problems(facts), capability=list(torch.cuda.get_device_capability()),
               bf16_native=torch.cuda.is_bf16_supported(including_emulation=False))
    out["ok"] = (not out["problems"] and out["bf16_native"] and rt.precision == "bf16"
                 and not out["tf32_after_runtime"])
    return out


def _ray(ctx: dict):
    import ray

    from raymem.localcluster import init_local_ray

    if not ray.is_initialized():  # one GPU (on the CPU a resource label only), as a GPU node has
        init_local_ray(num_cpus=ctx["z"]["ray_cpus"], num_gpus=1, include_dashboard=False)
    return ray


def check_ray_packing(ctx: dict) -> dict:
    ray, device = _ray(ctx), ctx["device"]

    @ray.remote(num_cpus=0.25, num_gpus=0.25, max_calls=0)  # max_calls=0: reused, as Tune's workers
    def trial(i: int, size: int) -> dict:
        from raymem.sweep import free_device_memory

        rt = Runtime("auto" if device == "cuda" else "cpu")
        used = (lambda: torch.cuda.memory_allocated()) if rt.device.type == "cuda" else (lambda: 0)
        before = used()
        x = torch.randn(size, size, device=rt.device)
        value = float((x @ x).sum())
        during = used()
        del x
        free_device_memory()  # as run_trial does after every trial
        return {"trial": i, "pid": os.getpid(), "device": rt.info["device"], "gpu_ids": ray.get_gpu_ids(),
                "bytes_before": before, "bytes_during": during, "bytes_after": used(), "finite": np.isfinite(value)}

    rows = ray.get([trial.remote(i, ctx["z"]["pack_matrix"]) for i in range(8)])
    pids = {r["pid"] for r in rows}
    on_device = all(r["device"].startswith("cuda") if ctx["cuda"] else r["device"] == "cpu" for r in rows)
    freed = all(r["bytes_after"] <= r["bytes_before"] for r in rows)
    return {"trials": rows, "workers": len(pids), "ok": on_device and freed and len(pids) < len(rows)
            and all(r["finite"] for r in rows), "reused_workers": len(pids) < len(rows)}


def check_cuda_error(ctx: dict) -> dict:
    ray, cuda = _ray(ctx), ctx["cuda"]

    @ray.remote(num_cpus=0.25, num_gpus=0.25)
    class Worker:
        def pid(self) -> int:
            return os.getpid()

        def assert_on_device(self) -> dict:
            from raymem.sweep import is_sticky_cuda_error

            try:
                if cuda:  # an out-of-range index: a device-side assert, raised at the sync
                    t = torch.zeros(4, device="cuda")
                    t[torch.tensor([10], device="cuda")] = 1.0
                    torch.cuda.synchronize()
                else:
                    raise RuntimeError("CUDA error: device-side assert triggered (raised on the CPU)")
            except Exception as exc:
                return {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}",
                        "sticky": is_sticky_cuda_error(exc)}
            return {"error": None, "sticky": False}

        def normal_trial(self) -> dict:
            rt = Runtime("auto" if cuda else "cpu")
            x = torch.ones(64, 64, device=rt.device)
            return {"device": rt.info["device"], "sum": float((x @ x).sum())}

    first = Worker.remote()
    pid = ray.get(first.pid.remote())
    failed = ray.get(first.assert_on_device.remote())
    try:  # what raymem avoids by ending the worker: its next CUDA call
        same = {"result": ray.get(first.normal_trial.remote(), timeout=120)}
    except Exception as exc:
        same = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"}
    ray.kill(first)  # raymem's sweep ends such a worker (WorkerEnded); Tune starts a fresh one
    fresh = Worker.remote()
    result = ray.get(fresh.normal_trial.remote())
    fresh_pid = ray.get(fresh.pid.remote())
    ray.kill(fresh)
    ok = failed["sticky"] and fresh_pid != pid and result["sum"] == 64.0 * 64 * 64
    if cuda:
        ok = ok and "error" in same  # the context is lost, as sweep.is_sticky_cuda_error assumes
    return {"assert": failed, "same_worker_after": same, "fresh_worker": result, "ok": ok,
            "simulated": not cuda}


def check_precog_pool(ctx: dict) -> dict:
    import polars as pl
    from ray.util.placement_group import remove_placement_group

    from raymem.config import PrecogConfig
    from raymem.data import precog_rows, reserve_pool

    _ray(ctx)
    cfg = PrecogConfig.model_validate({"k": [1], "max_length": 64, "examples_per_batch": 8, "actors": {
        "cpus": 0.5, "gpus": 0.5, "min_size": 1, "max_size": 2, "device": "auto" if ctx["cuda"] else "cpu"}})
    texts = base.random_texts(ctx["tok"], ctx["z"]["pool_examples"], 24, seed=7)
    examples = pl.DataFrame({"example_id": [f"e{i}" for i in range(len(texts))], "text": texts,
                             "text_pair": [None] * len(texts)}, schema_overrides={"text_pair": pl.Utf8})
    reserved, info = reserve_pool(cfg.actors), {}
    try:
        import ray

        ray.get(reserved.ready(), timeout=120)
        rows = precog_rows(examples, ModelSpec("gpu-check", ctx["path"]), cfg, info, reserved)
    finally:
        remove_placement_group(reserved)
    devices = info.get("device", "")
    return {"rows": rows.height, "device": devices, "precision": info.get("precision"),
            "ok": rows.height == len(texts) and rows["score"].is_not_null().all()
            and (devices.startswith("cuda") if ctx["cuda"] else devices == "cpu")}


def _logits(model, batch, rt: Runtime) -> torch.Tensor:
    with torch.inference_mode(), rt.autocast():
        return model(**batch).logits.float()


def check_numerics(ctx: dict) -> dict:
    from raymem.measures.precog import PrecogScorer, PrecogSettings
    from raymem.store import Store

    device, path, tok, z = ctx["device"], ctx["path"], ctx["tok"], ctx["z"]
    out = {"tolerances": TOLERANCES}
    fp32, bf16 = Runtime(device, "fp32"), Runtime(device, "bf16")
    model = base.classifier(fp32, path, tok).eval()
    batch = fp32.to_device(base.synthetic(tok, 16, z["seq"]).batch(list(range(16))))
    batch.pop("labels")
    out["logits_max_abs"] = float((_logits(model, batch, fp32) - _logits(model, batch, bf16)).abs().max())
    texts, scores = base.random_texts(tok, z["numerics_examples"], z["seq"], seed=8), {}
    for precision in ("fp32", "bf16"):
        scorer = PrecogScorer(ModelSpec("gpu-check", path), PrecogSettings(ks=(1,), max_length=z["seq"]),
                              device=device, precision=precision)
        scores[precision] = scorer.score(texts)
    out["pll_mean_abs"] = float(np.abs(scores["fp32"]["pll"] - scores["bf16"]["pll"]).mean())
    out["precog_at_1_agree"] = float(np.isclose(scores["fp32"]["precog_at_1"], scores["bf16"]["precog_at_1"],
                                                atol=0.05).mean())

    data, s = base.synthetic(tok, z["numerics_train"], z["seq"], seed=9), TrainSettings(
        epochs=2, lr=1e-4, batch_size=8, max_length=z["seq"])

    def trained(rt: Runtime) -> np.ndarray:
        m = base.classifier(rt, path, tok)
        fine_tune(m, data, s, seed=1, runtime=rt)
        return predict(m, data)

    twice = [trained(Runtime(device, deterministic=True)) for _ in range(2)]
    out["same_trial_twice_max_abs"] = float(np.abs(twice[0] - twice[1]).max())

    class StopsAfterEpoch1(Runtime):  # a worker lost right after epoch 1 was kept
        def save_progress(self, state, epoch):
            super().save_progress(state, epoch)
            if epoch == 1:
                raise InterruptedError("the node went away")

    store = Store(str(ctx["root"] / "resume-store"))
    with contextlib.suppress(InterruptedError):
        trained(StopsAfterEpoch1(device, store=store, trial_id="resume", deterministic=True))
    resumed_rt = Runtime(device, store=store, trial_id="resume", deterministic=True)
    resumed = trained(resumed_rt)
    out["resumed_from_epoch"] = resumed_rt.info.get("resumed_from_epoch")
    out["resumed_vs_straight_max_abs"] = float(np.abs(resumed - twice[0]).max())
    out["ok"] = (out["logits_max_abs"] <= TOLERANCES["logits_max_abs"]
                 and out["pll_mean_abs"] <= TOLERANCES["pll_mean_abs"]
                 and out["precog_at_1_agree"] >= TOLERANCES["precog_at_1_agree"]
                 and out["same_trial_twice_max_abs"] == 0.0 and out["resumed_from_epoch"] == 2
                 and out["resumed_vs_straight_max_abs"] == 0.0)
    return out


@contextlib.contextmanager
def count_syncs(cuda: bool):
    """Host reads of device values: on CUDA torch's own count of synchronising calls (its
    sync debug mode warns once per sync); on the CPU the calls that would sync on a GPU."""
    counts = {"syncs": 0}
    if cuda:
        torch.cuda.set_sync_debug_mode("warn")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                yield counts
            finally:
                torch.cuda.set_sync_debug_mode("default")
        counts["syncs"] = sum("synchroniz" in str(w.message) for w in caught)
        return
    names = ("item", "all", "tolist", "__bool__")
    originals = {n: getattr(torch.Tensor, n) for n in names}

    def counting(original):
        def wrapper(self, *args, **kwargs):
            counts["syncs"] += 1
            return original(self, *args, **kwargs)
        return wrapper

    for n in names:
        setattr(torch.Tensor, n, counting(originals[n]))
    try:
        yield counts
    finally:
        for n in names:
            setattr(torch.Tensor, n, originals[n])


def check_speed(ctx: dict) -> dict:
    from raymem.measures.precog import PrecogScorer, PrecogSettings
    from raymem.tasks import load_task

    device, path, tok, z = ctx["device"], ctx["path"], ctx["tok"], ctx["z"]
    _, splits = load_task("tweet_sentiment")
    tweets = splits["train"]["text"].head(z["tweets"]).to_list()
    lengths = [len(ids) for ids in tok(tweets, truncation=True, max_length=128)["input_ids"]]
    scorer = PrecogScorer(ModelSpec("gpu-check", path), PrecogSettings(ks=(1,), max_length=128), device=device)
    scorer.score(tweets[:4])  # warm-up
    out = {"tweet_tokens": {"median": float(np.median(lengths)), "min": min(lengths), "max": max(lengths)}}
    same_length = base.random_texts(tok, len(tweets), int(np.median(lengths)), seed=10)
    for name, texts in (("real_lengths", tweets), ("one_length", same_length)):
        got = {}
        seconds = base.timed(scorer.runtime.device, lambda texts=texts: got.update(scorer.score(texts)))
        out[f"precog_{name}_copies_per_s"] = float(got["n_units"].sum()) / seconds
    out["precog_real_over_one_length"] = out["precog_real_lengths_copies_per_s"] / out["precog_one_length_copies_per_s"]

    rt = Runtime(device)
    s = TrainSettings(epochs=1, lr=1e-5, batch_size=8, max_length=z["seq"])
    equal = base.synthetic(tok, 8 * z["sync_steps"], z["seq"], seed=11)
    long_tok = load_tokenizer(ModelSpec("gpu-check", path), 128)  # tweets of their own lengths: padded batches
    mixed = base.Encoded(long_tok, [t for t in tweets for _ in range(2)][:8 * z["sync_steps"]], None,
                         np.zeros(8 * z["sync_steps"], dtype=int), 128)
    for name, data in (("equal_lengths", equal), ("padded", mixed)):
        model = base.classifier(rt, path, tok)
        fine_tune(model, data.subset(range(8)), s, seed=1, runtime=rt)  # warm-up
        with count_syncs(ctx["cuda"]) as counted:
            fine_tune(model, data, s, seed=1, runtime=rt)
        out[f"syncs_per_step_{name}"] = counted["syncs"] / z["sync_steps"]
    out["ok"] = out["syncs_per_step_equal_lengths"] <= out["syncs_per_step_padded"]
    return out


CHECKS = {"environment": check_environment, "ray_packing": check_ray_packing, "cuda_error": check_cuda_error,
          "precog_pool": check_precog_pool, "numerics": check_numerics, "speed": check_speed}
SIZES = {"full": dict(ray_cpus=8, pack_matrix=4096, pool_examples=64, numerics_examples=32, numerics_train=64,
                      tweets=256, sync_steps=8),
         "tiny": dict(ray_cpus=2, pack_matrix=64, pool_examples=8, numerics_examples=4, numerics_train=16,
                      tweets=16, sync_steps=2)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--tiny", action="store_true", help="the CPU-test size")
    ap.add_argument("--skip", action="append", default=[], help="a check to leave out (repeatable): "
                    f"{', '.join(CHECKS)}, measure (gpu_check's stages, packing and study)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "out" / "gpu_first_run.json"))
    args = ap.parse_args()
    size = "tiny" if args.tiny else "full"
    z = {**base.SIZES[size], **SIZES[size]}
    if args.tiny:  # as gpu_check: one thread on a loaded machine
        os.environ["OMP_NUM_THREADS"] = "1"
        torch.set_num_threads(1)
    root = Path(tempfile.mkdtemp(prefix="gpu_first_run-"))
    result = {"size": size, "device": args.device, "checks": {}, "stages": {},
              "model": {k: z[k] for k in ("layers", "hidden", "heads", "ffn")}, "seq_len": z["seq"]}
    failures: list[str] = []
    started = time.perf_counter()
    try:
        path = base.build_checkpoint(root / "model", z)
        ctx = {"device": args.device, "cuda": args.device == "cuda", "z": z, "root": root, "path": path,
               "tok": load_tokenizer(ModelSpec("gpu-check", path), z["seq"])}
        for name, check in CHECKS.items():
            if name in args.skip:
                continue
            begun = time.perf_counter()
            try:
                r = check(ctx)
            except Exception:
                r = {"ok": False, "error": traceback.format_exc(limit=6)}
            r["wall"] = time.perf_counter() - begun
            result["checks"][name] = r
            if not r["ok"]:
                failures.append(f"{name}: {r.get('error') or 'see checks.' + name}")
            if ctx["cuda"]:
                torch.cuda.empty_cache()
        with contextlib.suppress(Exception):
            import ray

            ray.shutdown()  # gpu_check's study starts a local Ray of its own
        if "measure" not in args.skip:  # gpu_check's measurements, each isolated there
            begun = time.perf_counter()
            base.measure(argparse.Namespace(device=args.device, tiny=args.tiny, out=args.out), z, result, failures, root)
            result["measure_wall"] = time.perf_counter() - begun
    except Exception:
        failures.append(traceback.format_exc(limit=6))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    result["wall"] = time.perf_counter() - started
    result["failures"] = failures  # the report shows them
    report(result)
    return base.finish(result, failures, args.out)


def report(result: dict) -> None:
    print(f"\n| {'check':<12} | ok  | {'wall s':>7} | key figures")
    print(f"|{'-' * 14}|-----|{'-' * 9}|------------")
    keys = {"environment": ("torch", "torch_cuda", "precision_auto", "bf16_native", "problems"),
            "ray_packing": ("workers", "reused_workers"), "cuda_error": ("simulated",),
            "precog_pool": ("rows", "device"),
            "numerics": ("logits_max_abs", "pll_mean_abs", "precog_at_1_agree", "same_trial_twice_max_abs",
                         "resumed_vs_straight_max_abs"),
            "speed": ("precog_real_lengths_copies_per_s", "precog_one_length_copies_per_s",
                      "syncs_per_step_equal_lengths", "syncs_per_step_padded")}
    for name, r in result["checks"].items():
        figures = ", ".join(f"{k} {r[k]:.4g}" if isinstance(r.get(k), float) else f"{k} {r.get(k)}"
                            for k in keys.get(name, ()) if k in r)
        print(f"| {name:<12} | {'yes' if r['ok'] else 'NO ':<3} | {r['wall']:>7.1f} | {figures}")
    if result.get("stages") or "study" in result:
        result.setdefault("size", "")
        base.report(result)
    print(f"\ntotal {result['wall']:.0f}s; {len(result['failures'])} failure(s)")


if __name__ == "__main__":
    sys.exit(main())
