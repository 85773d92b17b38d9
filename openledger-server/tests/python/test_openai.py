"""The server as the official `openai` package sees it: `openledger serve` started on a free
loopback port, then chat, completions, streaming with usage, seeded choices, stop lists,
log-probabilities, and the exception classes the client raises for 400 / 401 / 403 / 404 / 429.

Run by scripts/test-server.sh (which builds the binary and sets OPENLEDGER_BIN).
"""
import os
import pathlib
import shutil
import signal
import subprocess

import httpx
import openai
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[3]
FIXTURES = ROOT / "fixtures"
BIN = os.environ.get("OPENLEDGER_BIN", str(ROOT / "target" / "debug" / "openledger"))


def model_dirs(tmp: pathlib.Path):
    model = tmp / "tiny-llama"
    model.mkdir()
    peft = FIXTURES / "peft" / "tiny-llama"
    for f in ["config.json", "generation_config.json", "model.safetensors"]:
        shutil.copy(peft / f, model / f)
    for f in ["tokenizer.json", "tokenizer_config.json"]:
        shutil.copy(FIXTURES / "server" / f, model / f)
    adapters = tmp / "adapters"
    shutil.copytree(peft / "adapters", adapters)
    return model, adapters


class Served:
    def __init__(self, tmp: pathlib.Path, keys: str | None = None, datanet: bool = False):
        model, adapters = model_dirs(tmp)
        args = [BIN, "serve", "--model", str(model), "--adapters", str(adapters),
                "--port", "0", "--max-context", "128"]
        if datanet:
            args += ["--datanet", str(ROOT / "openledger" / "data" / "drug-facts.jsonl")]
        if keys is not None:
            (tmp / "keys.txt").write_text(keys)
            args += ["--api-keys", str(tmp / "keys.txt")]
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        if "http://" not in line:
            self.proc.kill()
            raise RuntimeError(f"server did not start: {line}{self.proc.stderr.read()}")
        self.url = line.strip().rsplit(" ", 1)[-1]
        assert self.url.startswith("http://127.0.0.1:"), self.url

    def client(self, key="none"):
        return openai.OpenAI(base_url=self.url + "/v1", api_key=key, max_retries=0, timeout=60)

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        assert self.proc.wait(timeout=30) == 0


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    s = Served(tmp_path_factory.mktemp("open"), datanet=True)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def client(served):
    return served.client()


def test_models_are_the_base_and_its_adapters(client):
    ids = [m.id for m in client.models.list()]
    assert ids == ["tiny-llama", "all-r8-rslora", "attn-patterns", "qv-r4"]


def test_chat_and_completions(client):
    r = client.chat.completions.create(
        model="qv-r4", messages=[{"role": "user", "content": "w30 w31"}], max_tokens=5, temperature=0)
    assert r.object == "chat.completion"
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].finish_reason in ("length", "stop")
    assert r.usage.prompt_tokens == 7  # <|im_start|> user w30 w31 <|im_end|> <|im_start|> assistant
    assert r.usage.completion_tokens == len(r.choices[0].message.content.split())
    c = client.completions.create(model="tiny-llama", prompt="w30 w31", max_tokens=4, temperature=0)
    assert c.object == "text_completion"
    assert c.usage.prompt_tokens == 3
    assert len(c.choices[0].text.split()) == c.usage.completion_tokens


def test_streaming_with_usage_carries_the_whole_answer(client):
    kw = dict(model="all-r8-rslora", messages=[{"role": "user", "content": "w40"}],
              max_completion_tokens=12, temperature=0.8, seed=21)
    whole = client.chat.completions.create(**kw)
    chunks = list(client.chat.completions.create(**kw, stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.choices[0].finish_reason
    # Completions stream too.
    parts = list(client.completions.create(model="qv-r4", prompt="w7", max_tokens=6, temperature=0, stream=True))
    plain = client.completions.create(model="qv-r4", prompt="w7", max_tokens=6, temperature=0)
    assert "".join(p.choices[0].text for p in parts) == plain.choices[0].text


def test_seeded_choices_are_reproducible(client):
    kw = dict(model="attn-patterns", messages=[{"role": "user", "content": "w50 w51"}],
              max_tokens=10, temperature=1.3, seed=7, n=4)
    a = client.chat.completions.create(**kw)
    b = client.chat.completions.create(**kw)
    texts = [c.message.content for c in a.choices]
    assert texts == [c.message.content for c in b.choices]
    assert [c.index for c in a.choices] == [0, 1, 2, 3]
    assert len(set(texts)) > 1


def test_stop_lists_cut_before_the_stop(client):
    full = client.completions.create(model="tiny-llama", prompt="w90", max_tokens=8, temperature=0).choices[0].text
    words = full.split(" ")
    r = client.completions.create(model="tiny-llama", prompt="w90", max_tokens=8, temperature=0,
                                  stop=["w99999", words[2]])
    assert r.choices[0].text == full[: full.index(words[2])]
    assert r.choices[0].finish_reason == "stop"


def test_logprobs_rank_the_greedy_token_first(client):
    r = client.chat.completions.create(
        model="qv-r4", messages=[{"role": "user", "content": "w11 w12"}], max_tokens=6, temperature=0,
        logprobs=True, top_logprobs=5)
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens
    for t in content:
        assert len(t.top_logprobs) == 5
        assert t.top_logprobs[0].token == t.token
        assert t.top_logprobs[0].logprob == pytest.approx(t.logprob)
        assert all(x.logprob >= y.logprob for x, y in zip(t.top_logprobs, t.top_logprobs[1:]))
    c = client.completions.create(model="qv-r4", prompt="w11 w12", max_tokens=4, temperature=0, logprobs=2)
    lp = c.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 4
    for tok, top in zip(lp.tokens, lp.top_logprobs):
        assert max(top, key=top.get) == tok


def test_the_openledger_extension_rides_along_unseen_by_plain_requests(client):
    r = client.chat.completions.create(
        model="qv-r4", messages=[{"role": "user", "content": "what class is aspirin"}], max_tokens=3,
        extra_body={"openledger": {"payer": "0x00000000000000000000000000000000000000aa"}})
    ext = r.model_extra["openledger"]
    assert ext["citations"][0]["snippet"].startswith("what class is aspirin")
    split = ext["split"]
    total = int(split["owner"]["amount_wei"]) + int(split["protocol"]["amount_wei"]) + sum(
        int(c["amount_wei"]) for c in split["contributors"])
    assert total == int(ext["fee_wei"]) == 10**15
    assert ext["receipt"]["payer"].lower() == "0x00000000000000000000000000000000000000aa"
    plain = client.chat.completions.create(
        model="qv-r4", messages=[{"role": "user", "content": "what class is aspirin"}], max_tokens=3)
    assert "openledger" not in (plain.model_extra or {})


def test_bad_requests_raise_the_clients_error_classes(client):
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "w5"}])
    assert e.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="qv-r4", prompt=[9] * 200)
    assert e.value.code == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="qv-r4", messages=[{"role": "user", "content": "w5"}], temperature=7)
    assert e.value.param == "temperature"


def test_keys_401_403_429(tmp_path):
    s = Served(tmp_path, keys="sk-user-0123456789abcdef rpm=3\nsk-admin-0123456789abcdef admin\n")
    try:
        with pytest.raises(openai.AuthenticationError):
            s.client("sk-wrong-0000000000000000").models.list()
        user = s.client("sk-user-0123456789abcdef")
        user.completions.create(model="qv-r4", prompt="w5", max_tokens=1)
        # Only admin keys load adapters.
        with pytest.raises(openai.PermissionDeniedError):
            user.post("/load_lora_adapter", cast_to=httpx.Response,
                      body={"lora_name": "again", "lora_path": "qv-r4"})
        user.completions.create(model="qv-r4", prompt="w5", max_tokens=1)
        # Three requests a minute: the fourth is refused.
        with pytest.raises(openai.RateLimitError) as e:
            user.completions.create(model="qv-r4", prompt="w5", max_tokens=1)
        assert int(e.value.response.headers["retry-after"]) >= 1
        admin = s.client("sk-admin-0123456789abcdef")
        admin.post("/load_lora_adapter", cast_to=httpx.Response, body={"lora_name": "again", "lora_path": "qv-r4"})
        assert "again" in [m.id for m in admin.models.list()]
    finally:
        s.stop()


def test_a_pretrained_gguf_model_answers_through_the_client(tmp_path):
    gguf = ROOT / "target" / "models" / "SmolLM2-135M-Instruct"
    if not (gguf / ".complete").exists():
        if os.environ.get("OPENLEDGER_REQUIRE_MODELS") == "1":
            pytest.fail(f"{gguf} is absent: run `bash scripts/fetch-models.sh`")
        pytest.skip(f"{gguf} is absent (run `bash scripts/fetch-models.sh`)")
    proc = subprocess.Popen([BIN, "serve", "--model", str(gguf / "SmolLM2-135M-Instruct.Q4_1.gguf"),
                             "--port", "0", "--max-context", "256"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = proc.stdout.readline().strip().rsplit(" ", 1)[-1]
        client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0)
        [model] = [m.id for m in client.models.list()]
        stream = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "What is the capital of France?"}],
            max_tokens=16, temperature=0, stream=True)
        text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        assert text == "The capital of France is Paris."
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
