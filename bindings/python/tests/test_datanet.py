"""Datanets, training logs, quality, attribution records and epochs from Python: a datanet
built and committed, its records proved against a version root alone; a training run whose log
names the datanet's records, verified, proved and caught when tampered; near-duplicate
clusters whose copies earn nothing; records and epochs that add up to the wei."""

import json

import pytest

import openledger as ol

from conftest import TINY

ALICE = "0x" + "a1" * 20
BOB = "0x" + "b2" * 20
ERIN = "0x" + "e5" * 20


def line(content, who, **extra):
    return json.dumps({"content": content, "contributor": who, "license": "CC-BY-4.0", **extra})


def sample():
    net = ol.Datanet("drugs")
    report = net.import_jsonl(
        "\n".join(
            [
                line("aspirin treats pain", ALICE, metadata={"drug": "aspirin"}),
                line("metformin lowers glucose", BOB),
                line("aspirin treats pain", ERIN),  # an exact copy of line 1
            ]
        )
    )
    return net, report


def test_a_datanet_imports_commits_and_proves_its_records_against_the_root():
    net, report = sample()
    assert report == {"added": 2, "duplicates": [(3, 0)]}
    assert len(net) == 2 and net.name == "drugs"
    assert net.record(0)["metadata"] == {"drug": "aspirin"}
    assert net.record(0)["contributor"].lower() == ALICE
    v1 = net.commit()
    assert v1["number"] == 1 and v1["record_count"] == 2
    assert net.add("donepezil inhibits acetylcholinesterase", BOB, "MIT") == (2, True)
    assert net.add("aspirin treats pain", BOB, "MIT") == (0, False)
    v2 = net.commit()
    assert v2["root"] != v1["root"] and [v["number"] for v in net.versions] == [1, 2]
    for v in (v1, v2):
        for i in range(v["record_count"]):
            h = net.record(i)["hash"]
            proof = net.inclusion_proof(v["number"], i)
            assert ol.verify_record_proof(v["root"], h, proof)
            assert not ol.verify_record_proof(v["root"], net.record((i + 1) % 2)["hash"], proof)
    assert net.get(net.record(1)["hash"])["content"] == "metformin lowers glucose"
    assert net.get("0x" + "00" * 32) is None
    # The export round-trips, hashes included.
    again = ol.Datanet("copy")
    assert again.import_jsonl(net.export_jsonl(1))["added"] == 2
    assert again.commit()["root"] == v1["root"]


def test_bad_datanet_input_is_typed_and_changes_nothing(tmp_path):
    net, _ = sample()
    with pytest.raises(ol.InvalidArgumentError, match="line 2"):
        net.import_jsonl(line("fine", BOB) + "\n{not json")
    assert len(net) == 2
    lie = line("x", BOB, hash="0x" + "11" * 32)
    with pytest.raises(ol.IntegrityError, match="does not match"):
        net.import_jsonl(lie)
    with pytest.raises(ol.UnknownIdError):
        net.version(1)
    with pytest.raises(ol.InvalidArgumentError):
        net.add("x", "not an address", "MIT")
    with pytest.raises(FileNotFoundError) as e:
        net.import_file(tmp_path / "missing.jsonl")
    assert e.value.errno == 2 and e.value.filename.endswith("missing.jsonl")
    with pytest.raises(ol.InvalidArgumentError):
        ol.Datanet("empty").commit()
    path = tmp_path / "d.jsonl"
    path.write_text(line("from a file", ALICE))
    assert net.import_file(path)["added"] == 1


def test_training_logs_name_the_datanet_records_verify_and_prove_their_use():
    net, _ = sample()
    net.commit()
    examples = [
        {"prompt": [1, 10 + i, 7], "response": [100 + i], "record": net.record(i)["hash"], "datanet": 1}
        for i in range(len(net))
    ]
    t = ol.Trainer(TINY, ["q_proj"], 2, 4.0, steps=4, batch_size=2, learning_rate=1e-2, seed=1)
    assert t.training_log() is None
    genesis = t.start_log("0x" + "0b" * 32)
    t.train(examples)
    log = t.training_log()
    assert len(log) == 4 and log.genesis == genesis and log.verify() == log.head
    used = [r for e in log.entries() for r in e["records"]]
    assert set(used) <= {net.record(i)["hash"] for i in range(len(net))}
    rec = used[0]
    step = log.was_used(rec)[0]
    proof = log.prove(rec, step)
    assert ol.verify_usage_proof(proof, rec, log.head) == step
    assert ol.verify_usage_proof(proof, rec, "0x" + "00" * 32) is None
    with pytest.raises(ol.IntegrityError):
        ol.verify_usage_proof(proof[:-1], rec, log.head)
    # Saved, loaded, tampered.
    raw = bytearray(log.to_bytes())
    assert ol.TrainLog.from_bytes(bytes(raw)).head == log.head
    raw[8 + 32 + 32 + 8 + 50] ^= 1  # a bit of the first entry's loss
    tampered = ol.TrainLog.from_bytes(bytes(raw))
    with pytest.raises(ol.IntegrityError, match="entry 0"):
        tampered.verify()
    with pytest.raises(ol.IntegrityError):
        ol.TrainLog.from_bytes(b"OLTLOG0")
    # A log kept by hand (a trainer of one's own) chains the same way.
    mine = ol.TrainLog("0x" + "0b" * 32, "0x" + "0c" * 32)
    head = mine.append(1, [rec], 2.5, 1e-3)
    assert head == mine.head and mine.was_used(rec) == [1]
    with pytest.raises(ol.InvalidArgumentError):
        mine.append(1, [rec], 2.5, 1e-3)  # not after step 1


def test_a_datanet_id_without_its_record_is_refused():
    with pytest.raises(ol.InvalidArgumentError, match="record"):
        ol.Trainer(TINY, ["q_proj"], 2, 4.0, steps=1).train([{"tokens": [1, 2, 3], "datanet": 1}])


def test_near_duplicates_cluster_and_copies_earn_nothing():
    texts = [
        "Aspirin irreversibly inhibits cyclooxygenase, reducing prostaglandins.",
        "Metformin lowers hepatic glucose production in type 2 diabetes.",
        "Aspirin irreversibly inhibits cyclooxygenase, reducing prostaglandins!",
        "aspirin irreversibly inhibits   cyclooxygenase, reducing prostaglandins.",
    ]
    clusters = ol.cluster_near_duplicates(texts)
    assert clusters == [0, 1, 0, 0]
    who = [ALICE, BOB, ERIN, ERIN]
    scores = [1.0, 1.0, 1.0, 1.0]
    first = dict(ol.cluster_rewards(clusters, who, scores))
    assert {k.lower(): v for k, v in first.items()} == {ALICE: 1.0, BOB: 1.0}
    # Shared per contributor, erin's copies of alice's record would take half of it.
    shared = dict(ol.cluster_rewards(clusters, who, scores, share="per_contributor"))
    assert {k.lower(): v for k, v in shared.items()} == {ALICE: 0.5, BOB: 1.0, ERIN: 0.5}
    copies = ol.flag_copies(clusters, who)
    assert [(c["index"], c["original"], c["owner"].lower()) for c in copies] == [
        (2, 0, ALICE),
        (3, 0, ALICE),
    ]
    assert {c["contributor"].lower() for c in copies} == {ERIN}
    with pytest.raises(ol.InvalidArgumentError, match="cluster_of\\[0\\]"):
        ol.flag_copies([1, 1], who[:2])
    flags = ol.flag_negative(who, [0.5, -0.2, 0.1, -0.4])
    assert [(f["index"], f["score"]) for f in flags] == [(1, -0.2), (3, -0.4)]
    penalised = ol.apply_penalties([(BOB, 1.0), (ERIN, 1.0)], flags, policy="forfeit", factor=2.0)
    assert [w for _, w in penalised] == pytest.approx([1.0 - 2 * 0.2, 1.0 - 2 * 0.4])
    excluded = ol.apply_penalties([(ALICE, 1.0), (ERIN, 1.0)], flags, policy="exclude", max_flags=1)
    assert [w for _, w in excluded] == [1.0, 0.0]
    with pytest.raises(ol.InvalidArgumentError):
        ol.cluster_rewards(clusters, who, scores, share="loudest")
    with pytest.raises(ol.InvalidArgumentError):
        ol.cluster_near_duplicates(texts, shingle="bytes")
    with pytest.raises(ol.InvalidArgumentError):
        ol.cluster_rewards([0, 9], who[:2], scores[:2])
    with pytest.raises(ol.InvalidArgumentError):
        ol.flag_negative(who, [float("nan")] * 4)


def test_records_encode_canonically_and_epochs_add_up_to_the_wei():
    inference, model = "0x" + "01" * 32, "0x" + "02" * 32
    rec = ol.AttributionRecord.from_scores(inference, model, ["0x" + "03" * 32], "tracin", [ALICE, BOB], [3.0, 1.0])
    assert rec.method == "tracin" and sum(w for _, w in rec.weights) == ol.WEIGHT_UNIT
    assert [w for _, w in rec.weights] == [750_000_000_000_000_000, 250_000_000_000_000_000]
    again = ol.AttributionRecord.decode(rec.encode())
    assert again == rec and again.id == rec.id
    with pytest.raises(ol.InvalidArgumentError):
        ol.AttributionRecord.decode(rec.encode() + b"\x00")
    with pytest.raises(ol.InvalidArgumentError, match="not one of"):
        ol.AttributionRecord.from_scores(inference, model, [], "vibes", [ALICE], [1.0])
    epoch = ol.Epoch(7)
    epoch.add(rec, 1_000_003)
    rag = ol.AttributionRecord.from_scores(inference, model, [], "rag_relevance", [BOB, ERIN], [1.0, 1.0])
    epoch.add(rag, 10**30 + 1)
    assert epoch.pooled == 1_000_003 + 10**30 + 1
    assert sum(a for _, a in epoch.payouts()) == epoch.pooled
    claims = epoch.claims()
    assert [c[0] for c in claims] == list(range(len(claims)))
    assert sum(c[2] for c in claims) == epoch.pooled
    assert epoch.records == [rec.id, rag.id]
    tree = ol.StandardMerkleTree.of([[i, a, amt] for i, a, amt in claims], ["uint256", "address", "uint256"])
    assert len(tree.values()) == len(claims)
