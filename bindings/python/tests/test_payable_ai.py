"""openledger.PayableAi: the example examples/python/payable_ai.py runs the whole loop (quick
configuration, 80 steps) and its report adds up to the wei: every contributor's balance is its
claim, the claims are the epoch's pool, every request's pool is split exactly, the contributor
who submitted near-duplicate copies earns no more than without them; events arrive stage by
stage with the tokens while serving. Stages called out of order and a failing callback raise
typed errors."""

import importlib.util
import io
import json

import pytest

import openledger as ol

from conftest import REPO

STAGES = ["datanet", "fine-tune", "serve", "attribute-and-pay", "epoch"]


def load_example():
    path = REPO / "examples" / "python" / "payable_ai.py"
    spec = importlib.util.spec_from_file_location("payable_ai_example", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """The example run once (quick, 80 steps, counterfactual on): status, report, events, output."""
    tmp = tmp_path_factory.mktemp("payable-ai")
    report, events = tmp / "out" / "report.json", tmp / "events.jsonl"
    out, err = io.StringIO(), io.StringIO()
    argv = ["--quick", "--steps", "80", "--work-dir", str(tmp / "work")]
    argv += ["--report", str(report), "--events", str(events)]
    status = load_example().main(argv, out=out, err=err)
    lines = events.read_text().splitlines()
    return {
        "status": status,
        "report": json.loads(report.read_text()),
        "events": [json.loads(line) for line in lines],
        "out": out.getvalue(),
        "err": err.getvalue(),
    }


def test_example_exits_zero_and_prints_the_summary(run):
    assert run["status"] == 0, run["err"]
    assert "every balance to the wei: yes" in run["out"]
    assert "near-duplicates: erin" in run["out"]
    # Plain-text progress bars, complete.
    assert "[" + "#" * 28 + "]" in run["err"]


def test_every_contributor_balance_equals_its_claim_and_claims_sum_to_the_pool(run):
    e = run["report"]["epoch"]
    assert e["claims_match"] is True
    # The five honest contributors claim; trent too when 80 steps are too few to flag his
    # poison (the Rust tests check it is caught at the quick configuration's 300).
    names = {c["name"] for c in e["contributors"]}
    assert {"alice", "bob", "carol", "dave", "erin"} <= names <= {
        "alice", "bob", "carol", "dave", "erin", "trent"
    }
    for c in e["contributors"]:
        assert c["matches"] is True
        assert int(c["balance_wei"]) == int(c["claimed_wei"])
    claimed = sum(int(c["claimed_wei"]) for c in e["contributors"])
    assert claimed == int(e["claimed_total_wei"]) == int(e["pool_wei"]) > 0
    assert int(e["rewards_left_wei"]) == 0 and int(e["payments_left_wei"]) == 0


def test_each_request_pool_is_split_exactly_and_the_pools_make_the_epoch(run):
    r = run["report"]
    assert len(r["requests"]) == 4
    pools = 0
    for q in r["requests"]:
        pool = int(q["data_pool_wei"])
        assert sum(int(v) for v in q["contributors"].values()) == pool > 0
        fee = int(q["owner_share_wei"]) + int(q["protocol_share_wei"]) + pool
        assert fee == int(q["fee_wei"])
        pools += pool
    assert pools == int(r["epoch"]["pool_wei"])


def test_near_duplicate_contributor_earns_no_more_than_without_her_copies(run):
    n = run["report"]["epoch"]["near_duplicates"]
    assert n is not None and n["name"] == "erin"
    assert n["holds"] is True
    assert int(n["paid_wei"]) <= int(n["before_splitting_wei"])
    assert run["report"]["datanet"]["copier"] == n["account"]


def test_copies_of_alices_records_are_flagged_and_pay_mallory_nothing(run):
    r = run["report"]
    names = r["accounts"]
    copies = [c for c in r["datanet"]["copies"] if c["contributor"] != c["owner"]]
    assert len(copies) == 36
    assert {names[c["owner"]] for c in copies} == {"alice"}
    mallory = {c["contributor"] for c in copies}
    assert sorted(names[m] for m in mallory) == ["mallory-1", "mallory-2", "mallory-3"]
    for q in r["requests"]:
        assert not mallory & set(q["contributors"]), q["index"]
    assert not mallory & {c["account"] for c in r["epoch"]["contributors"]}


def test_events_arrive_in_stage_order_with_tokens_while_serving(run):
    events = run["events"]
    stages = [e["name"] for e in events if e["kind"] == "stage"]
    assert stages == STAGES
    current, tokens = None, {}
    for e in events:
        if e["kind"] == "stage":
            current = e["name"]
        elif e["kind"] == "progress":
            assert e["stage"] == current
            assert 0 <= e["done"] <= e["total"]
        else:
            assert e["kind"] == "token" and current == "serve"
            tokens.setdefault(e["request"], []).append(e["text"])
    assert tokens, "no token was streamed"
    fine_tune = [e for e in events if e["kind"] == "progress" and e["stage"] == "fine-tune"]
    assert any(e["loss"] is not None for e in fine_tune)
    # The streamed words are the answer (special tokens are left out of answers).
    for q in run["report"]["requests"]:
        words = [t for t in tokens.get(q["index"], []) if t not in ("<unk>", "<s>")]
        assert " ".join(words) == q["answer"]


def test_stage_out_of_order_raises_stage_order_error(tmp_path):
    loop = ol.PayableAi(tmp_path, quick=True, steps=3, counterfactual=False)
    with pytest.raises(ol.StageOrderError, match="fine_tune needs publish_datanet"):
        loop.fine_tune()
    with pytest.raises(ol.StageOrderError, match="close_epoch needs attribute_and_pay"):
        loop.close_epoch()
    d = loop.publish_datanet()
    assert d["records"] > d["distinct_records"] > 0 and d["grants"] == 2
    with pytest.raises(ol.StageOrderError, match="serve needs fine_tune"):
        loop.serve()
    assert issubclass(ol.StageOrderError, ol.PayableAiError)
    assert issubclass(ol.PayableAiError, ol.OpenLedgerError)
    # The refused calls changed nothing: the report holds the published datanet only.
    r = loop.report()
    assert r["datanet"]["id"] == d["id"] and r["adapters"] == [] and r["epoch"] is None
    assert json.loads(loop.report_json()) == r


def test_callback_exception_propagates_as_itself_and_stops_further_calls(tmp_path):
    class Stop(Exception):
        pass

    calls = []

    def on_event(e):
        calls.append(e)
        raise Stop("enough")

    loop = ol.PayableAi(tmp_path, quick=True, steps=3, counterfactual=False)
    with pytest.raises(Stop, match="enough"):
        loop.publish_datanet(on_event)
    assert calls == [{"kind": "stage", "name": "datanet"}]


def test_bad_configuration_raises_invalid_argument_error(tmp_path):
    with pytest.raises(ol.InvalidArgumentError, match="steps 0"):
        ol.PayableAi(tmp_path, steps=0)
    with pytest.raises(ol.InvalidArgumentError, match="steps 2 and checkpoints 3"):
        ol.PayableAi.run(tmp_path, quick=True, steps=2)
    # A pretrained base: the counterfactual (which retrains every adapter) is refused, and a
    # missing model file is named.
    missing = tmp_path / "none.gguf"
    with pytest.raises(ol.InvalidArgumentError, match="counterfactual"):
        ol.PayableAi(tmp_path, model=missing, counterfactual=True)
    with pytest.raises(OSError, match="none.gguf"):
        ol.PayableAi(tmp_path, model=missing)


def test_run_goes_through_every_stage_and_settles_to_the_wei(tmp_path):
    events = []
    r = ol.PayableAi.run(tmp_path, quick=True, steps=3, counterfactual=False, on_event=events.append)
    assert [e["name"] for e in events if e["kind"] == "stage"] == STAGES
    assert [a["steps"] for a in r["adapters"]] == [3, 3]
    e = r["epoch"]
    assert e["claims_match"] is True and e["near_duplicates"] is None
    assert sum(int(c["claimed_wei"]) for c in e["contributors"]) == int(e["pool_wei"]) > 0
    assert all(c["before_splitting_wei"] is None for c in e["contributors"])
