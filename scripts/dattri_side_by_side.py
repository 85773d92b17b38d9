"""Our attribution side by side with dattri's, on the same task.

    cargo run --release -p openledger --example influence_audit -- 32 target/influence_audit.png target/dattri-task
    python scripts/dattri_side_by_side.py [target/dattri-task] [--out benches/results/dattri_side_by_side.json]

The first command runs our influence experiment (a tiny LLaMA pre-trained on a key→value
language, a rank-8 LoRA fine-tuned for 150 steps on 200 records, 40 with flipped labels; our
TracIn-CP and DataInf over five checkpoints; LDS over 32 retrainings on random halves) and
writes what a peer needs to repeat it: the pre-trained base as an HF folder, the token ids and
loss masks of the records and of the 32 queries, the fine-tune's settings, the LDS subsets with
our retrained models' query outputs, and our scores and seconds.

This script (needs torch, transformers, peft and dattri 0.3.0; not run by CI) then trains the same
LoRA on the same base and records in PEFT (same rank, alpha, targets, AdamW, cosine schedule,
clipping, batch size, steps and checkpoints), runs dattri's attributors on it — TracIn over the
same five checkpoints weighted by the summed learning rates (exact gradients, as ours, and
dattri's default 512-dimensional random projection), TRAK (dattri's default projection), and
influence functions (conjugate gradient, and DataInf) — and measures, for each:

- noisy-label AUC: self-influence ranking the 40 flipped records above the others (dattri's
  `mislabel_detection_auc`), and the harm to the 32 queries (minus the summed influence);
- LDS: Spearman correlation, per query, of the subset's summed scores with the retrained
  model's negative query loss over the same 32 subsets (dattri's `lds`), where dattri's methods
  are judged against the same subsets retrained in PEFT and ours against our retrainings;
- seconds of attribution (features / caches, queries and self-influence; training excluded).

Prints a table and writes the figures as JSON.
"""

import argparse
import inspect
import json
import math
import pathlib
import time

import numpy as np
import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaForCausalLM

from dattri.algorithm.influence_function import IFAttributorCG, IFAttributorDataInf
from dattri.algorithm.tracin import TracInAttributor
from dattri.algorithm.trak import TRAKAttributor
from dattri.metric import lds, mislabel_detection_auc
from dattri.task import AttributionTask

ROOT = pathlib.Path(__file__).resolve().parent.parent


def padded(examples):
    """Token ids and HF labels (-100 off the loss mask), right-padded to one length."""
    n = max(len(e["tokens"]) for e in examples)
    ids = torch.zeros(len(examples), n, dtype=torch.long)
    labels = torch.full((len(examples), n), -100, dtype=torch.long)
    for i, e in enumerate(examples):
        t = torch.tensor(e["tokens"])
        ids[i, : len(t)] = t
        m = torch.tensor(e["loss_mask"], dtype=torch.bool)
        labels[i, : len(t)] = torch.where(m, t, torch.tensor(-100))
    return ids, labels


def lora_model(base_dir, ft, seed):
    torch.manual_seed(seed)
    base = LlamaForCausalLM.from_pretrained(base_dir, dtype=torch.float32, attn_implementation="eager")
    cfg = LoraConfig(r=ft["r"], lora_alpha=ft["alpha"], target_modules="all-linear", lora_dropout=0.0)
    # "all-linear" leaves out the output head, as ours does.
    return get_peft_model(base, cfg)


def example_loss(model, ids, labels):
    """Mean token loss of each example (the loss our trainer takes per example)."""
    logits = model(input_ids=ids).logits[:, :-1]
    target = labels[:, 1:]
    lp = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), target.reshape(-1), reduction="none", ignore_index=-100
    ).view(target.shape)
    mask = (target != -100).float()
    return (lp * mask).sum(1) / mask.sum(1).clamp(min=1)


def lr_at(step, ft):
    """The learning rate of optimizer step `step` (1-based): cosine decay from the peak."""
    steps = ft["steps"]
    return ft["learning_rate"] * 0.5 * (1 + math.cos(math.pi * (step - 1) / steps))


def train(base_dir, ft, ids, labels, subset, seed, keep=()):
    """Fine-tunes a fresh LoRA in PEFT; returns the model and the LoRA state at `keep` steps."""
    model = lora_model(base_dir, ft, seed)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=ft["learning_rate"], betas=tuple(ft["betas"]), eps=ft["eps"],
                            weight_decay=ft["weight_decay"])
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_at(s + 1, ft) / ft["learning_rate"])
    g = torch.Generator().manual_seed(seed)
    order = []
    saved = []
    model.train()
    for step in range(1, ft["steps"] + 1):
        if len(order) < ft["batch_size"]:
            order += [subset[i] for i in torch.randperm(len(subset), generator=g).tolist()]
        batch, order = order[: ft["batch_size"]], order[ft["batch_size"]:]
        loss = example_loss(model, ids[batch], labels[batch]).mean()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, ft["max_grad_norm"])
        opt.step()
        sched.step()
        if step in keep:
            saved.append({k: v.detach().clone() for k, v in model.named_parameters() if v.requires_grad})
    model.eval()
    return model, saved


def auc(score, flipped):
    return float(mislabel_detection_auc(torch.as_tensor(score, dtype=torch.float64), flipped)[0])


def mean_lds(score, actual, subsets):
    """dattri's LDS, averaged over queries; `score` is (train, queries)."""
    corr, _ = lds(torch.as_tensor(score, dtype=torch.float64),
                  (torch.as_tensor(actual, dtype=torch.float64), torch.as_tensor(subsets)))
    return float(torch.nanmean(corr))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("task", nargs="?", default=str(ROOT / "target" / "dattri-task"))
    ap.add_argument("--out", default=str(ROOT / "benches" / "results" / "dattri_side_by_side.json"))
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    task_dir = pathlib.Path(a.task)
    t = json.loads((task_dir / "task.json").read_text())
    base_dir = str(task_dir / "base")
    ft = t["finetune"]
    ids, labels = padded(t["train"])
    q_ids, q_labels = padded(t["queries"])
    flipped = torch.tensor([e["flipped"] for e in t["train"]])
    n = len(t["train"])
    subsets = t["lds"]["subsets"]

    # The fine-tune in PEFT, with its checkpoints.
    t0 = time.perf_counter()
    model, ckpts = train(base_dir, ft, ids, labels, list(range(n)), seed=0, keep=set(ft["checkpoints"]))
    train_seconds = time.perf_counter() - t0
    with torch.no_grad():
        greedy = model(input_ids=q_ids).logits.argmax(-1)
    print(f"PEFT fine-tune: {train_seconds:.1f} s; final mean loss "
          f"{example_loss(model, ids, labels).mean().item():.3f}")
    bounds = [0] + ft["checkpoints"]
    weights = torch.tensor([sum(lr_at(s, ft) for s in range(bounds[k] + 1, bounds[k + 1] + 1))
                            for k in range(len(ft["checkpoints"]))])

    # The same subsets retrained in PEFT: the ground truth for dattri's LDS (kept beside the
    # task, so that a second run only attributes).
    cached = task_dir / "peft_lds_actual.json"
    if cached.exists():
        actual = json.loads(cached.read_text())
    else:
        t0 = time.perf_counter()
        actual = []
        for j, s in enumerate(subsets):
            m, _ = train(base_dir, ft, ids, labels, s, seed=j + 1)
            with torch.no_grad():
                actual.append((-example_loss(m, q_ids, q_labels)).tolist())
            print(f"\rretrained {j + 1}/{len(subsets)} subsets in PEFT", end="", flush=True)
        print(f" ({time.perf_counter() - t0:.0f} s)")
        cached.write_text(json.dumps(actual))

    def loss_func(params, data):
        """Mean token loss of one example (dattri's per-sample gradients), or the mean over
        examples of a batch (the influence functions' Hessian-vector products)."""
        x, y = data
        if x.dim() == 1:
            x, y = x.unsqueeze(0), y.unsqueeze(0)
        logits = torch.func.functional_call(model, params, (x,)).logits[:, :-1]
        target = y[:, 1:]
        lp = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), target.reshape(-1), reduction="none", ignore_index=-100
        ).view(target.shape)
        mask = (target != -100).float()
        return ((lp * mask).sum(1) / mask.sum(1).clamp(min=1)).mean()

    def correct_probability(params, data):
        return torch.exp(-loss_func(params, data))

    def load(model_, ckpt):
        for k, v in model_.named_parameters():
            if k in ckpt:
                v.data.copy_(ckpt[k])
        return model_

    train_loader = torch.utils.data.DataLoader(list(zip(ids, labels)), batch_size=16, shuffle=False)
    test_loader = torch.utils.data.DataLoader(list(zip(q_ids, q_labels)), batch_size=16, shuffle=False)
    whole_train_loader = torch.utils.data.DataLoader(list(zip(ids, labels)), batch_size=n, shuffle=False)

    def run(name, make, all_checkpoints=True):
        task = AttributionTask(loss_func=loss_func, model=model,
                               checkpoints=ckpts if all_checkpoints else ckpts[-1:],
                               checkpoints_load_func=load)
        t0 = time.perf_counter()
        att = make(task)
        if inspect.signature(att.cache).parameters:
            att.cache(train_loader)
        else:
            att.cache()
        if isinstance(att, TRAKAttributor):
            scores = att.attribute(test_loader).detach()
            # dattri 0.3.0's TRAK `self_attribute` refuses both a cached run (with a loader)
            # and no loader; the diagonal of the training set attributed to itself is the same
            # figure.
            selfs = torch.diagonal(att.attribute(train_loader).detach())
        elif isinstance(att, TracInAttributor):
            scores = att.attribute(train_loader, test_loader).detach()
            selfs = att.self_attribute(train_loader).detach()
        else:
            scores = att.attribute(train_loader, test_loader).detach()
            # dattri 0.3.0's inner-product `self_attribute` adds each batch's values to the
            # whole set's: it needs the training set as one batch.
            selfs = att.self_attribute(whole_train_loader).detach()
        seconds = time.perf_counter() - t0
        harm = -scores.sum(1)
        r = {
            "auc_self_influence": auc(selfs, flipped),
            "auc_query_harm": auc(harm, flipped),
            "lds": mean_lds(scores, actual, subsets),
            "seconds": seconds,
        }
        print(f"{name:<34} AUC self {r['auc_self_influence']:.4f}  AUC harm {r['auc_query_harm']:.4f}  "
              f"LDS {r['lds']:+.3f}  {seconds:7.1f} s", flush=True)
        return r

    def tracin(proj):
        def make(task):
            att = TracInAttributor(task=task, weight_list=weights, normalized_grad=False,
                                   projector_kwargs={"proj_dim": 512} if proj else None)
            if not proj:
                att.projector_kwargs = None
            return att
        return make

    results = {}
    results["dattri TracIn (exact, 5 checkpoints)"] = run("dattri TracIn (exact, 5 ckpts)", tracin(False))
    results["dattri TracIn (proj 512, 5 checkpoints)"] = run("dattri TracIn (proj 512, 5 ckpts)", tracin(True))
    results["dattri TRAK (proj 512, 5 checkpoints)"] = run(
        "dattri TRAK (proj 512, 5 ckpts)",
        lambda task: TRAKAttributor(task=task, correct_probability_func=correct_probability,
                                    projector_kwargs={"proj_dim": 512, "device": "cpu"}))
    results["dattri IF (CG, final)"] = run(
        "dattri IF (CG, final)",
        lambda task: IFAttributorCG(task=task, max_iter=10, regularization=1e-3), all_checkpoints=False)
    results["dattri IF (DataInf, final)"] = run(
        "dattri IF (DataInf, final)",
        lambda task: IFAttributorDataInf(task=task, regularization=1e-3), all_checkpoints=False)

    ours = t["ours"]
    sec = ours["seconds"]
    for name, key, harm, scores_key, secs in [
        ("ours TracIn-CP (exact, 5 checkpoints)", "lds_tracin", "auc_tracin_queries", "tracin",
         sec["index"] + sec["featurize"] + sec["tracin"] + sec["self_influence"]),
        ("ours DataInf (5 checkpoints)", "lds_datainf", "auc_datainf_queries", "datainf",
         sec["index"] + sec["featurize"] + sec["datainf"]),
    ]:
        scores = np.array(ours[scores_key]).T  # (train, queries)
        results[name] = {
            "auc_self_influence": ours["auc_self_influence"] if "TracIn" in name else None,
            "auc_query_harm": ours[harm],
            "lds": ours[key],
            # The same figure through dattri's own `lds` (Spearman per query, mean).
            "lds_by_dattri_metric": mean_lds(scores, t["lds"]["actual"], subsets),
            "seconds": secs,
        }
        self_auc = results[name]["auc_self_influence"]
        print(f"{name:<34} AUC self {'  -   ' if self_auc is None else f'{self_auc:.4f}'}  "
              f"AUC harm {ours[harm]:.4f}  LDS {ours[key]:+.3f}  {secs:7.1f} s")
    best = {
        "auc": max(r["auc_self_influence"] for k, r in results.items() if k.startswith("dattri")),
        "lds": max(r["lds"] for k, r in results.items() if k.startswith("dattri")),
        "fastest_seconds": min(r["seconds"] for k, r in results.items() if k.startswith("dattri")),
    }
    doc = {
        "peft_train_seconds": train_seconds,
        "results": results,
        "dattri_best": best,
        "threads": a.threads,
        "versions": {"torch": torch.__version__},
    }
    pathlib.Path(a.out).write_text(json.dumps(doc, indent=2) + "\n")
    mine = results["ours TracIn-CP (exact, 5 checkpoints)"]
    print(f"dattri's best: AUC {best['auc']:.4f}, LDS {best['lds']:+.3f}, fastest {best['fastest_seconds']:.1f} s; "
          f"ours (TracIn-CP): AUC {mine['auc_self_influence']:.4f}, LDS {mine['lds']:+.3f} in "
          f"{mine['seconds']:.1f} s ({mine['seconds'] / best['fastest_seconds']:.2f}x dattri's fastest) -> {a.out}")


if __name__ == "__main__":
    main()
