"""openledger.ray_serve: two engine replicas on a local Ray cluster (2 CPUs, loopback only)
behind the OpenAI-compatible front, driven by the official `openai` client. Each answer equals
the one process's answer for the same adapter; requests for an adapter keep reaching the
replica that holds it; the attribution and receipt of an answer are paid by the contracts on
the embedded chain (payForInference / payForEnsemble), the data pool equal to the receipt's
split; bad requests get OpenAI's error objects; nothing listens beyond loopback and nothing is
left when the cluster stops."""

import json
import os
import pathlib
import shutil
import socket
import time

import httpx
import pytest

import openledger as ol

if os.environ.get("OPENLEDGER_REQUIRE_RAY"):
    import openai  # noqa: F401  (fail, rather than skip, when the extra is missing)
    from ray import serve  # noqa: F401
else:
    openai = pytest.importorskip("openai")
    pytest.importorskip("ray.serve")
import openai  # noqa: E402,F811
import openledger.ray as olr  # noqa: E402
import openledger.ray_serve as ols  # noqa: E402

from conftest import ADAPTERS, LOOPBACK, REPO, TINY, listening_hosts  # noqa: E402

FEE = 10**15
ADAPTER_IDS = ["all-r8-rslora", "attn-patterns", "qv-r4"]
ENSEMBLE = "qv-r4*0.6+attn-patterns*0.4"
DATANET = REPO / "openledger" / "data" / "drug-facts.jsonl"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def model_folders(tmp: pathlib.Path):
    """tiny-llama with the word-level tokenizer and chat template of the server's tests."""
    model = tmp / "tiny-llama"
    model.mkdir()
    for f in ["config.json", "generation_config.json", "model.safetensors"]:
        shutil.copy(TINY / f, model / f)
    for f in ["tokenizer.json", "tokenizer_config.json"]:
        shutil.copy(REPO / "fixtures" / "server" / f, model / f)
    adapters = tmp / "adapters"
    shutil.copytree(ADAPTERS, adapters)
    return model, adapters


def ok(result):
    assert result.success, (result.status, result.revert)
    return result


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The contracts on the embedded chain with the base model and each adapter registered by
    one owner at FEE, a funded payer; the application deployed on a local cluster with
    receipts in that chain's domain."""
    model, adapters = model_folders(tmp_path_factory.mktemp("serve"))
    chain = ol.EmbeddedChain()
    suite = chain.deploy_suite()
    acct = chain.dev_accounts
    owner, payer = acct[5], acct[6]
    for name in ["tiny-llama"] + ADAPTER_IDS:
        salt = ol.content_id(name.encode())
        ok(chain.transact(owner, suite["models"], "ModelRegistry", "registerModel",
                          [salt, "0x" + "00" * 32, salt, "0x" + "00" * 32, [], FEE]))
    ok(chain.transact(payer, suite["token"], "TestToken", "mint", [payer, 100 * FEE]))
    ok(chain.transact(payer, suite["token"], "TestToken", "approve", [suite["payments"], 2**256 - 1]))
    _, protocol, data = chain.call(suite["payments"], "InferencePayments", "split", [10_000])
    config = ols.AttributionConfig(
        str(DATANET), chain.dev_key(2), owner=owner, protocol=suite["treasury"],
        protocol_bps=protocol, data_pool_bps=data, fee_wei=FEE, chain_id=chain.chain_id,
        payments_contract=suite["payments"],
        epoch=chain.call(suite["payments"], "InferencePayments", "currentEpoch")[0],
    )
    marks = [pathlib.Path.home() / ".ray", pathlib.Path("/tmp/ray")]
    snapshot = lambda: {p: sorted(p.rglob("*")) if p.exists() else None for p in marks}  # noqa: E731
    before = snapshot()
    with olr.local_cluster(num_cpus=2, object_store_memory=100 * 1024 * 1024):
        url = ols.start(model, adapters, port=free_port(), attribution=config, replicas=2,
                        max_adapters_per_replica=2, replica_cpus=0.5,
                        engine_options={"max_context": 128})
        assert url.startswith("http://127.0.0.1:")
        client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=60)
        yield {"url": url, "client": client, "chain": chain, "suite": suite, "owner": owner,
               "payer": payer, "model": model, "adapters": adapters}
        ols.stop()
    left = [p for p in olr._descendants(os.getpid()) if olr._alive(p)]
    assert left == [], [pathlib.Path(f"/proc/{p}/cmdline").read_bytes()[:80] for p in left]
    assert snapshot() == before


def chat(client, model, content, **kw):
    """A greedy chat answer and the replica that gave it."""
    raw = client.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": content}], max_tokens=6,
        temperature=0, **kw)
    return raw.parse(), raw.headers["x-openledger-replica"]


def test_models_are_the_base_and_the_hubs_adapters(world):
    assert [m.id for m in world["client"].models.list()] == ["tiny-llama"] + ADAPTER_IDS


def test_requests_for_an_adapter_reach_the_replica_holding_it(world):
    """A replica reports the ids it loaded every 0.1 s (Ray Serve's push interval) and the
    front's router learns them from the controller: once it has (two seconds here), a new adapter
    goes to the replica holding the fewest and later requests follow each adapter. It runs
    first (tests run in file order) so that no adapter is loaded yet."""
    client = world["client"]
    first = {}
    for m in ADAPTER_IDS[:2]:
        first[m] = chat(client, m, "w1")[1]
        time.sleep(2.0)
    assert first[ADAPTER_IDS[0]] != first[ADAPTER_IDS[1]], first
    for m in ADAPTER_IDS[:2]:
        assert {chat(client, m, f"w{i}")[1] for i in range(2, 8)} == {first[m]}, m


def test_each_answer_equals_the_one_process_answer(world):
    """The same folders served in this process: greedy chat and completion answers of the base,
    each adapter and an ensemble are the replicas' word for word."""
    pool = ol.AdapterPool(64 << 20)
    pool.register_hub(world["adapters"])
    with ol.Engine(world["model"], pool, max_context=128) as engine:
        for model in ["tiny-llama"] + ADAPTER_IDS + [ENSEMBLE]:
            adapter = None if model == "tiny-llama" else model
            r, _ = chat(world["client"], model, "w30 w31")
            text = engine.apply_chat_template([{"role": "user", "content": "w30 w31"}])
            ids = engine.encode(text, add_special_tokens=False)
            local = engine.generate(ids, adapter, max_new_tokens=6, stop_tokens=engine.eos_token_ids)
            local.collect()
            assert r.choices[0].message.content == local.text, model
            assert r.choices[0].finish_reason in ("stop", "length")
            assert r.usage.prompt_tokens == len(ids) == 7
            assert r.usage.completion_tokens == len(local.tokens)
            c = world["client"].completions.create(model=model, prompt="w7 w8", max_tokens=5, temperature=0)
            local = engine.generate("w7 w8", adapter, max_new_tokens=5, stop_tokens=engine.eos_token_ids)
            local.collect()
            assert c.choices[0].text == local.text, model
    # The adapters change the answers (or the comparison above proves little).
    answers = {m: chat(world["client"], m, "w30 w31")[0].choices[0].message.content
               for m in ["tiny-llama"] + ADAPTER_IDS}
    assert len(set(answers.values())) > 1, answers


def test_streams_carry_the_whole_answer_and_its_receipt(world):
    client = world["client"]
    kw = dict(model=ENSEMBLE, messages=[{"role": "user", "content": "what does aspirin treat"}],
              max_completion_tokens=12, temperature=0.8, seed=21)
    whole = client.chat.completions.create(**kw)
    chunks = list(client.chat.completions.create(**kw, stream=True, stream_options={"include_usage": True},
                                                 extra_body={"openledger": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.choices[0].finish_reason
    assert whole.choices[0].finish_reason in ("stop", "length")
    last = chunks[-1]
    assert last.choices == [] and last.usage.completion_tokens == whole.usage.completion_tokens
    ext = last.model_extra["openledger"]
    assert ext["receipt"]["inferenceId"] == ol.content_id(last.id.encode())
    assert [int(s) for s in ext["receipt"]["shares"]] == [600_000, 400_000]
    parts = list(client.completions.create(model="qv-r4", prompt="w7", max_tokens=6, temperature=0, stream=True))
    plain = client.completions.create(model="qv-r4", prompt="w7", max_tokens=6, temperature=0)
    assert "".join(p.choices[0].text for p in parts) == plain.choices[0].text


def test_an_answers_receipt_is_paid_by_the_contracts(world):
    chain, suite, payer = world["chain"], world["suite"], world["payer"]
    payments = suite["payments"]
    r, _ = chat(world["client"], "qv-r4", "what does aspirin treat", extra_body={"openledger": {"payer": payer}})
    ext = r.model_extra["openledger"]
    assert ext["citations"][0]["snippet"] == "what does aspirin treat => pain and fever"
    split = ext["split"]
    amounts = [int(split[k]["amount_wei"]) for k in ("owner", "protocol")]
    pool = [int(p["amount_wei"]) for p in split["contributors"]]
    assert sum(amounts) + sum(pool) == FEE and sum(pool) > 0
    rc = ext["receipt"]
    assert rc["weightsHash"] == ol.weights_hash(
        [("0x" + p["account"][2:].lower().rjust(64, "0"), int(p["amount_wei"])) for p in split["contributors"]])
    receipt = ol.AttributionReceipt(rc["inferenceId"], rc["modelId"], rc["adapterIds"], rc["payer"],
                                    int(rc["amount"]), rc["epoch"], rc["weightsHash"])
    sig = bytes.fromhex(ext["signature"][2:])
    assert receipt.recover_signer(sig, chain.chain_id, payments) == suite["operator"] == ext["signer"]
    assert rc["inferenceId"] == ol.content_id(r.id.encode())
    struct = (receipt.inference_id, receipt.model_id, receipt.adapter_ids, receipt.payer,
              receipt.amount, receipt.epoch, receipt.weights_hash)
    paid = ok(chain.transact(payer, payments, "InferencePayments", "payForInference", [struct, sig]))
    ev = next(e for e in paid.events if e.name == "InferencePaid")
    assert (ev.args["ownerShare"], ev.args["protocolShare"]) == tuple(amounts)
    assert ev.args["dataShare"] == sum(pool)

    # An ensemble: paid with payForEnsemble, the owners' part split by share as the answer says.
    r, _ = chat(world["client"], ENSEMBLE, "what does aspirin treat", extra_body={"openledger": {"payer": payer}})
    ext = r.model_extra["openledger"]
    rc = ext["receipt"]
    shares = [int(s) for s in rc["shares"]]
    assert shares == [600_000, 400_000]
    struct = (rc["inferenceId"], rc["modelIds"], shares, rc["payer"], int(rc["amount"]), rc["epoch"],
              rc["weightsHash"])
    sig = bytes.fromhex(ext["signature"][2:])
    paid = ok(chain.transact(payer, payments, "InferencePayments", "payForEnsemble", [struct, sig]))
    ev = next(e for e in paid.events if e.name == "EnsemblePaid")
    assert ev.args["ownerShares"] == [int(a["owner_part_wei"]) for a in ext["adapters"]]
    assert ev.args["dataShare"] == sum(int(p["amount_wei"]) for p in ext["split"]["contributors"])
    # A receipt paid once is refused the second time.
    again = chain.transact(payer, payments, "InferencePayments", "payForEnsemble", [struct, sig])
    assert again.revert["name"] == "InferenceAlreadyPaid"


def test_text_parts_and_spellings_read_as_the_server_reads_them(world):
    client = world["client"]
    parts = [{"type": "text", "text": "w30"}, {"type": "text", "text": "w31"}]
    joined = chat(client, "qv-r4", "w30\nw31")[0]
    r = client.chat.completions.create(model="qv-r4", messages=[{"role": "user", "content": parts}],
                                       max_tokens=6, temperature=0)
    assert r.choices[0].message.content == joined.choices[0].message.content
    assert r.usage.prompt_tokens == joined.usage.prompt_tokens
    # "qv-r4*1" is qv-r4 itself: a plain receipt; unseeded sampling differs between calls.
    r, _ = chat(client, "qv-r4*1", "what does aspirin treat", extra_body={"openledger": True})
    assert "modelId" in r.model_extra["openledger"]["receipt"] and r.model == "qv-r4*1"
    kw = dict(model="qv-r4", messages=[{"role": "user", "content": "w1"}], max_tokens=12, temperature=1.0)
    answers = {client.chat.completions.create(**kw).choices[0].message.content for _ in range(3)}
    assert len(answers) > 1, answers


def test_bad_requests_get_openai_errors_and_the_service_goes_on(world):
    client, url = world["client"], world["url"]
    with pytest.raises(openai.NotFoundError, match="no-such-adapter"):
        chat(client, "no-such-adapter", "w1")
    with pytest.raises(openai.NotFoundError, match="nope"):
        chat(client, "qv-r4*0.5+nope*0.5", "w1")
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        client.completions.create(model="qv-r4", prompt="w1", max_tokens=0)
    with pytest.raises(openai.BadRequestError, match="temperature"):
        client.completions.create(model="qv-r4", prompt="w1", temperature=5)
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        client.completions.create(model="qv-r4", prompt="w1", max_tokens=0, stream=True)
    with pytest.raises(openai.BadRequestError, match="payer"):
        chat(client, "qv-r4", "w1", extra_body={"openledger": {"payer": "mallory"}})
    with pytest.raises(openai.BadRequestError, match="top_p"):
        client.completions.create(model="qv-r4", prompt="w1", top_p=0)
    with pytest.raises(openai.BadRequestError, match="image"):
        client.chat.completions.create(model="qv-r4", messages=[{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "data:,"}}]}])
    # Refused before the stream starts: a token outside the vocabulary, a payer that is not an
    # address, an ensemble weight that gives no share.
    with pytest.raises(openai.BadRequestError, match="vocabulary"):
        client.completions.create(model="qv-r4", prompt=[1, 10**6], stream=True)
    with pytest.raises(openai.BadRequestError, match="payer"):
        client.completions.create(model="qv-r4", prompt="w1", stream=True,
                                  extra_body={"openledger": {"payer": "0x" + "zz" * 20}})
    with pytest.raises(openai.BadRequestError, match="weight"):
        client.completions.create(model="qv-r4*1e-9+attn-patterns", prompt="w1", stream=True,
                                  extra_body={"openledger": True})
    with pytest.raises(openai.BadRequestError, match="openledger"):
        client.completions.create(model="qv-r4", prompt="w1", extra_body={"openledger": 1})
    with pytest.raises(openai.BadRequestError, match="model"):
        client.completions.create(model="qv-r4+qv-r4", prompt="w1")
    with pytest.raises(openai.BadRequestError, match="context"):
        client.completions.create(model="qv-r4", prompt=" ".join(["w1"] * 200))
    with httpx.Client(base_url=url, timeout=60) as http:
        r = http.post("/v1/chat/completions", content=b'{"model": "qv-r4", "messages": [')
        assert r.status_code == 400 and "not JSON" in r.json()["error"]["message"]
        r = http.post("/v1/completions", content=b"[1, 2]")
        assert r.status_code == 400 and r.json()["error"]["message"] == "the body must be a JSON object"
        big = json.dumps({"model": "qv-r4", "prompt": "w1 " * (1 << 19)}).encode()
        r = http.post("/v1/completions", content=big)
        assert r.status_code == 413 and "exceeds" in r.json()["error"]["message"]
        r = http.post("/v1/completions", json={"model": "qv-r4", "prompt": [1, 2, 10**9]})
        assert r.status_code == 400, r.text
        assert http.get("/v1/nothing").status_code == 404
    before = chat(client, "qv-r4", "w1")[0].choices[0].message.content
    assert chat(client, "qv-r4", "w1")[0].choices[0].message.content == before


def test_every_process_listens_on_loopback_only(world):
    pids = [p for p in olr._descendants(os.getpid()) if olr._alive(p)]
    hosts = listening_hosts(pids + [os.getpid()])
    assert hosts, "the cluster listens somewhere"
    assert set(hosts) <= LOOPBACK, hosts
