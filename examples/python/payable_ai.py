"""The Payable-AI loop end to end, from Python.

A datanet of drug facts from five contributors (one of whom submits re-worded copies of her
records) is published on an in-process EVM with a training grant; adapters are fine-tuned on it
and registered with their training-log heads and fees; requests for the adapters are served in
one mixed batch, streaming; every answer is attributed (training influence + RAG citations),
receipted (EIP-712) and paid on chain; the epoch closes into a Merkle root every contributor
claims from, checked to the wei.

    python examples/python/payable_ai.py [--quick] [--steps N] [--no-counterfactual]
        [--work-dir DIR] [--report FILE] [--events FILE] [--embedder DIR|none]

Records and answers are embedded by all-MiniLM-L6-v2 when ``bash scripts/fetch-models.sh`` has
fetched it (or ``--embedder DIR`` names a sentence-transformers folder), otherwise (or with
``--embedder none``) by a feature-hashing bag of words, which the output says.

Exits with status 1 when a balance does not match its claim or the contributor who submitted
near-duplicate copies earned more than without them; 2 when the loop stops with an error.
Needs only the standard library and the ``openledger`` package.
"""

import argparse
import json
import os
import sys
import time

import openledger

BAR_WIDTH = 28


def parse_args(argv):
    p = argparse.ArgumentParser(description="The Payable-AI loop, end to end.")
    p.add_argument("--quick", action="store_true", help="two adapters and four requests (one for their ensemble)")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps per adapter")
    p.add_argument(
        "--no-counterfactual",
        action="store_true",
        help="skip training again without the near-duplicate copies (no near-duplicate check)",
    )
    p.add_argument("--work-dir", default=os.path.join("target", "payable-ai-python"))
    p.add_argument("--report", default=None, help="JSON report (default: WORK_DIR/report.json)")
    p.add_argument("--events", default=None, help="also write every event as a JSON line here")
    p.add_argument(
        "--embedder",
        default=None,
        help="sentence-transformers folder, or none (default: all-MiniLM-L6-v2 when fetched)",
    )
    a = p.parse_args(argv)
    if a.embedder is None:
        models = os.environ.get("OPENLEDGER_MODELS", os.path.join("target", "models"))
        minilm = os.path.join(models, "all-MiniLM-L6-v2")
        a.embedder = minilm if os.path.exists(os.path.join(minilm, ".complete")) else None
    elif a.embedder == "none":
        a.embedder = None
    return a


class Screen:
    """Progress bars and streaming answers.

    On a terminal, bars redraw in place and each request's line grows as its tokens arrive;
    otherwise each bar prints once, when complete, and the answers print when serving ends.
    """

    def __init__(self, out=None, err=None):
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self.tty = self.out.isatty() and self.err.isatty()
        self.bar_open = False
        self.lines = {}
        self.order = []
        self.drawn = False

    def event(self, e):
        kind = e["kind"]
        if kind == "stage":
            self.close_bar()
            self.flush_answers()
            print(f"\n== {e['name']}", file=self.out, flush=True)
        elif kind == "progress":
            self.progress(e)
        elif kind == "token":
            self.token(e)

    def progress(self, e):
        done, total = e["done"], max(e["total"], 1)
        if not self.tty and done < e["total"]:
            return
        filled = BAR_WIDTH * done // total
        loss = "" if e.get("loss") is None else f"  loss {e['loss']:7.4f}"
        bar = "#" * filled + "." * (BAR_WIDTH - filled)
        self.err.write(f"\r  [{bar}] {done:>4}/{e['total']:<4} {e['item']}{loss}   ")
        self.err.flush()
        self.bar_open = True
        if done >= e["total"]:
            self.close_bar()

    def token(self, e):
        i = e["request"]
        if i not in self.lines:
            self.close_bar()
            self.lines[i] = f"  #{i:<2} {e['adapter']:<16} →"
            self.order.append(i)
            if self.tty:
                print(self.lines[i], file=self.out, flush=True)
                self.drawn = True
        self.lines[i] += " " + e["text"]
        if self.tty:
            # Up to the request's line, rewrite it, back down.
            up = len(self.order) - self.order.index(i)
            self.out.write(f"\x1b[{up}A\r\x1b[2K{self.lines[i]}\x1b[{up}B\r")
            self.out.flush()

    def flush_answers(self):
        """Prints the answers streamed so far (once, when not on a terminal)."""
        if self.lines and not self.drawn:
            for i in sorted(self.lines):
                print(self.lines[i], file=self.out)
        self.lines, self.order, self.drawn = {}, [], False

    def close_bar(self):
        if self.bar_open:
            self.err.write("\n")
            self.err.flush()
            self.bar_open = False


def short(h):
    h = str(h)
    return f"{h[:10]}…{h[-6:]}" if len(h) > 18 else h


def name_of(report, account):
    return report["accounts"].get(account, short(account))


def copies_by_copier(d):
    """{(copier, owner): copies} over the records the datanet stage flagged as copies."""
    by = {}
    for c in d.get("copies", []):
        key = (c["contributor"], c["owner"])
        by[key] = by.get(key, 0) + 1
    return dict(sorted(by.items()))


def copiers_paid(r):
    """(copier, owner, paid wei) for everyone who copied someone else's records."""
    d, e = r.get("datanet"), r.get("epoch")
    if not d or not e:
        return []
    claimed = {c["account"]: c["claimed_wei"] for c in e["contributors"]}
    return [(who, owner, claimed.get(who, "0"))
            for who, owner in copies_by_copier(d) if who != owner]


def summary(r, out):
    def p(*a):
        print(*a, file=out)

    d = r.get("datanet")
    if d:
        p(
            f"\ndatanet {d['name']!r} id {d['id']} v{d['version']}: {d['records']} records from "
            f"{len(d['contributors'])} contributors, root {short(d['root'])}; "
            f"{len(d['near_duplicate_clusters'])} near-duplicate clusters, "
            f"{d['distinct_records']} distinct records"
        )
        p(f"  embedder: {d['embedder']}; {d['paraphrases']} clusters joined as paraphrases")
        for (who, owner), n in copies_by_copier(d).items():
            whose = "their own" if who == owner else f"{name_of(r, owner)}'s"
            p(f"  flagged: {n} records of {name_of(r, who)} copy {whose} earlier records "
              "(not trained on, not cited)")
    p(
        f"\n{'adapter':<17} {'rank':>5} {'params':>7} {'loss':>15} {'recall':>7} "
        f"{'log head':>17} {'artifact':>17} {'fee (wei)':>22}"
    )
    for a in r["adapters"]:
        rank = f"{a['rank']}{'D' if a['dora'] else ''}"
        loss = f"{a['first_loss']:7.3f}→{a['last_loss']:<7.3f}"
        p(
            f"{a['name']:<17} {rank:>5} {a['parameters']:>7} {loss:>15} "
            f"{100 * a['recall']:>6.0f}% {short(a['training_log_head']):>17} "
            f"{short(a['artifact_hash']):>17} {a['fee_wei']:>22}"
        )
    v = r.get("validation")
    if v:
        flagged = {}
        for f in v["flagged"]:
            who = name_of(r, f["contributor"])
            flagged[who] = flagged.get(who, 0) + 1
        who = ", ".join(f"{n} ×{k}" for n, k in sorted(flagged.items())) or "none"
        p(
            f"\nvalidation: influence of {v['records']} trained records on {v['answers']} gold "
            f"answers; {len(v['flagged'])} flagged: {who}; policy {v['policy']}"
        )
        if v.get("planted"):
            pl = v["planted"]
            p(f"  planted poison: {pl['caught']} of {pl['planted']} caught, "
              f"{pl['false_flags']} other records flagged, AUC {pl['auc']:.3f}")
    if r.get("reputation"):
        scores = ", ".join(
            f"{c['name']} {c['accepted']}/{c['harmful']}/{c['copies']} → {c['score']:.2f}"
            for c in r["reputation"]
        )
        p(f"reputation (accepted / harmful / copies of others' → the score weights are "
          f"multiplied by): {scores}")
    s = r.get("serving")
    if s:
        p(
            f"\nserved {s['requests']} requests for {s['adapters']} adapters in "
            f"{s['engine_steps']} engine steps; the first step ran all "
            f"{s['first_step_sequences']} sequences as one mixed batch"
        )
    w = max((len(q["adapter"]) for q in r["requests"]), default=7)
    p(
        f"\n{'#':<3} {'adapter':<{w}} {'prompt':<30} {'answer':<30} {'top citation':<20} "
        f"{'data pool (wei)':>20}"
    )
    for q in r["requests"]:
        cite = ""
        if q["citations"]:
            c = q["citations"][0]
            cite = f"{name_of(r, c['contributor'])} ({100 * c['share']:.0f}%)"
        p(
            f"{q['index']:<3} {q['adapter']:<{w}} {q['prompt']:<30} {q['answer']:<30} "
            f"{cite:<20} {q['data_pool_wei']:>20}"
        )
    # Ensembles: the fee is the members' fees weighted, the owners' part split by weight.
    for q in r["requests"]:
        if len(q["owner_shares_wei"]) > 1:
            owners = " + ".join(f"{v} to {a}'s owner" for a, v in q["owner_shares_wei"].items())
            p(
                f"#{q['index']} is an ensemble: fee {q['fee_wei']} wei (the members' fees, "
                f"weighted), owners {owners}; its pool's influence part is split between the "
                "members by weight, each over its own training records"
            )
    e = r.get("epoch")
    if e:
        p(f"\nepoch {e['number']}: pool {e['pool_wei']} wei, root {short(e['root'])} posted; claims:")
        p(
            f"{'contributor':<11} {'records':>7} {'claimed (wei)':>22} {'balance (wei)':>22} "
            f"{'without copies':>22} {'no clustering':>22}  balance = claim"
        )
        for c in e["contributors"]:
            p(
                f"{c['name']:<11} {c['records']:>7} {c['claimed_wei']:>22} {c['balance_wei']:>22} "
                f"{c['before_splitting_wei'] or '-':>22} {c['without_clustering_wei'] or '-':>22}  "
                f"{'yes' if c['matches'] else 'NO'}"
            )
        for _, name, amount in e["withdrawn"]:
            p(f"withdrawn by {name}: {amount} wei")
        p(
            f"left in the contracts: rewards {e['rewards_left_wei']} wei, payments "
            f"{e['payments_left_wei']} wei; every balance to the wei: "
            f"{'yes' if e['claims_match'] else 'NO'}"
        )
        for d in e.get("debts", []):
            p(f"debt: {d['name']} owes {d['charged_wei']} wei for the harm of its flagged records; "
              f"{d['taken_wei']} wei taken from its payout, {d['carried_wei']} wei carried")
        for who, owner, paid in copiers_paid(r):
            p(f"copies: {name_of(r, who)} copied {name_of(r, owner)}'s records and was paid {paid} wei "
              f"({'nothing' if paid == '0' else 'SOMETHING'})")
        n = e.get("near_duplicates")
        if n:
            p(
                f"near-duplicates: {n['name']} earned {n['paid_wei']} wei with her copies, "
                f"{n['before_splitting_wei']} wei without them "
                f"({'no more' if n['holds'] else 'MORE'}), {n['without_clustering_wei']} wei "
                f"if copies were not clustered"
            )
    secs = ", ".join(f"{k} {v:.1f}s" for k, v in r["seconds"].items())
    p(f"\ntime: {secs}")


def main(argv=None, out=None, err=None):
    """Runs the loop; returns the exit status."""
    a = parse_args(argv)
    out = out or sys.stdout
    err = err or sys.stderr
    report_path = a.report or os.path.join(a.work_dir, "report.json")
    started = time.monotonic()
    screen = Screen(out, err)
    events = open(a.events, "w", encoding="utf-8") if a.events else None

    def on_event(e):
        if events:
            events.write(json.dumps(e) + "\n")
        screen.event(e)

    try:
        loop = openledger.PayableAi(
            a.work_dir,
            quick=a.quick,
            steps=a.steps,
            counterfactual=False if a.no_counterfactual else None,
            embedder=a.embedder,
        )
        d = loop.publish_datanet(on_event)
        print(
            f"  {d['records']} records, {d['distinct_records']} distinct; "
            f"{d['grants']} training grants approved",
            file=out,
        )
        for ad in loop.fine_tune(on_event):
            print(
                f"  {ad['name']}: loss {ad['first_loss']:.3f} → {ad['last_loss']:.3f}, "
                f"registered as {short(ad['model_id'])}",
                file=out,
            )
        loop.serve(on_event)
        screen.flush_answers()
        paid = loop.attribute_and_pay(on_event)
        print(f"  {len(paid)} inferences paid on chain", file=out)
        epoch = loop.close_epoch(on_event)
        print(f"  epoch {epoch['number']} closed, {len(epoch['contributors'])} claims", file=out)
    except openledger.OpenLedgerError as e:
        screen.close_bar()
        print(f"error: {type(e).__name__}: {e}", file=err)
        return 2
    finally:
        if events:
            events.close()
    screen.close_bar()
    report = loop.report()
    summary(report, out)
    directory = os.path.dirname(report_path)
    if directory:
        os.makedirs(directory, exist_ok=True)
    with open(report_path, "w", encoding="utf-8") as f:
        f.write(loop.report_json())
    print(f"report: {report_path} ({time.monotonic() - started:.1f} s in all)", file=out)
    if not epoch["claims_match"]:
        print("a balance does not match its claim", file=err)
        return 1
    if any(paid != "0" for _, _, paid in copiers_paid(report)):
        print("a contributor was paid for copies of someone else's records", file=err)
        return 1
    n = epoch.get("near_duplicates")
    if n is not None and not n["holds"]:
        print("the near-duplicate contributor earned more than before splitting", file=err)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
