"""The engine on Ray Serve: replicas that multiplex adapters by id behind an OpenAI-compatible
front, each answer returned with its attribution and the operator's signed receipt.

One ``openledger serve`` process holds one model and the adapters its pool keeps resident; past
that, Ray Serve runs several replicas of the engine and routes each request to a replica that
already holds the request's adapter (``@serve.multiplexed``, keyed by the OpenAI ``model``
field: the base model's name, an adapter id of the hub folder, or an ensemble spelled
``"a*0.7+b*0.3"``). A replica keeps at most ``max_adapters_per_replica`` adapters pinned in its
pool; Ray Serve evicts the least recently used one when another arrives.

The front is a deployment of its own (``OpenAIFront``) behind Ray Serve's HTTP proxy:
``GET /v1/models``, ``POST /v1/chat/completions`` and ``POST /v1/completions`` with the request
and response bodies of the OpenAI API (streaming too, as server-sent events), so the official
``openai`` client talks to it unchanged. A request with
``"openledger": true`` (or ``{"payer": "0x…"}``) gets the ``openledger`` field that
``openledger serve --datanet`` returns: the datanet records retrieval cites for the question,
the fee split to the wei, and the EIP-712 receipt the operator signs, which the payer submits
to ``InferencePayments`` (``payForInference``, or ``payForEnsemble`` for an ensemble).

    import openledger.ray as olr, openledger.ray_serve as ols
    with olr.local_cluster(num_cpus=2):
        url = ols.start("models/tiny-llama", "adapters/", port=8000, replicas=2,
                        attribution=ols.AttributionConfig("datanet.jsonl", operator_key))
        client = openai.OpenAI(base_url=url + "/v1", api_key="none")
        r = client.chat.completions.create(model="qv-r4", messages=[...],
                                           extra_body={"openledger": True})
        r.model_extra["openledger"]["receipt"]
        ols.stop()

Install with ``pip install './bindings/python[serve]'``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import json
import os
import pathlib
import secrets
import time
import uuid
from typing import Any, AsyncIterator, Dict, List, Optional, Tuple, Union

from .ray import _require
from ._openledger import (
    AdapterPool,
    AttributionReceipt,
    Datanet,
    Engine,
    EnsembleReceipt,
    FeeSplit,
    HashingEmbedder,
    InvalidArgumentError,
    InvalidIdError,
    OpenLedgerError,
    OperatorSigner,
    RagIndex,
    SentenceEmbedder,
    UnknownIdError,
    content_id,
    ensemble_fee,
    hub_ids,
    ensemble_owner_shares,
    ensemble_shares,
    model_id,
    parse_adapter_id,
    relevance_weights,
    weights_hash,
)

__all__ = [
    "AttributionConfig",
    "Attributor",
    "EngineReplica",
    "OpenAIFront",
    "app",
    "start",
    "stop",
]

_Path = Union[str, "os.PathLike[str]"]
ZERO_ADDRESS = "0x" + "00" * 20
#: Largest request body the front reads (bytes); larger ones get 413.
MAX_BODY_BYTES = 1 << 20
#: The EIP-712 domain receipts are signed in (``InferencePayments``'s).
DOMAIN_NAME, DOMAIN_VERSION = "OpenLedger InferencePayments", "1"
#: Dimension of the feature-hashing embedder used without a sentence model (the server's).
HASHING_DIM = 512


def _serve() -> Any:
    return _require("ray.serve", "openledger.ray_serve", "serve")


@dataclasses.dataclass(frozen=True)
class AttributionConfig:
    """Where attribution data comes from and how fees split: ``openledger serve --datanet``'s
    settings. The receipts name ``epoch`` (the contract's ``currentEpoch`` when the deployment
    starts) and are signed with ``operator_key`` in the domain of ``payments_contract`` on
    ``chain_id``; model ids are ``model_id(owner, keccak256(name))``, as the registry derives
    them for the base model and each adapter registered under its name."""

    #: The datanet: JSONL records (``content``, ``contributor``, …).
    datanet: str
    #: The operator's secret key (0x-prefixed hex), which signs the receipts.
    operator_key: str
    #: A sentence-transformers folder (all-MiniLM-L6-v2); none: feature hashing.
    embedder: Optional[str] = None
    #: Records cited per answer.
    top_k: int = 3
    #: The fee of one inference, in wei.
    fee_wei: int = 10**15
    #: The model owner's account (gets the rest of the fee).
    owner: str = ZERO_ADDRESS
    #: The protocol treasury.
    protocol: str = ZERO_ADDRESS
    #: The protocol's share in basis points.
    protocol_bps: int = 500
    #: The data contributors' share in basis points.
    data_pool_bps: int = 3000
    #: The chain of the receipts' EIP-712 domain.
    chain_id: int = 31337
    #: The ``InferencePayments`` contract of the domain.
    payments_contract: str = ZERO_ADDRESS
    #: The epoch the receipts name.
    epoch: int = 0


class Attributor:
    """The datanet indexed for retrieval, the split and the signer: what a replica attaches to
    each answer. Raises ``InvalidArgumentError`` for bad settings and the datanet's own errors
    (``FileNotFoundError``, ``InvalidArgumentError`` naming the line) for a bad file."""

    def __init__(self, c: AttributionConfig) -> None:
        if c.top_k < 1:
            raise InvalidArgumentError("top_k: must be at least 1")
        if c.fee_wei < 0:
            raise InvalidArgumentError("fee_wei: must not be negative")
        if c.protocol_bps < 0 or c.data_pool_bps < 0 or c.protocol_bps + c.data_pool_bps > 10_000:
            raise InvalidArgumentError("protocol_bps, data_pool_bps: each at least 0, together at most 10000")
        name = pathlib.Path(c.datanet).stem or "datanet"
        datanet = Datanet(name)
        datanet.import_file(c.datanet)
        records = datanet.records()
        if not records:
            raise InvalidArgumentError(f"datanet: {c.datanet} has no record")
        self.vectors: Union[HashingEmbedder, SentenceEmbedder] = (
            SentenceEmbedder.from_dir(c.embedder) if c.embedder else HashingEmbedder(HASHING_DIM)
        )
        self.embedder_name = "all-MiniLM-L6-v2" if c.embedder else "feature-hashing"
        self.index = RagIndex(self.vectors.dim, "cosine")
        for r, v in zip(records, self.vectors.embed([r["content"] for r in records])):
            # A record with no word the hashing embedder keeps has no direction: not citable.
            if v.any():
                self.index.add(r["hash"], r["contributor"], r["content"], v)
        self.split = FeeSplit(c.owner, c.protocol, c.protocol_bps, c.data_pool_bps)
        self.unattributed = FeeSplit(c.owner, c.protocol, c.protocol_bps, 0)
        self.signer = OperatorSigner(c.operator_key)
        self.config = c
        self.datanet = name

    def info(self) -> Dict[str, Any]:
        """What clients learn of the set-up (as ``openledger serve``'s ``/openledger/info``)."""
        c = self.config
        return {
            "datanet": self.datanet,
            "records": len(self.index),
            "embedder": self.embedder_name,
            "fee_wei": str(c.fee_wei),
            "operator": self.signer.address,
            "protocol_bps": c.protocol_bps,
            "data_pool_bps": c.data_pool_bps,
            "chain_id": c.chain_id,
            "payments_contract": c.payments_contract,
            "epoch": c.epoch,
        }

    def attribute(
        self,
        question: str,
        inference: str,
        base: str,
        adapter: Optional[str],
        payer: Optional[str] = None,
    ) -> Dict[str, Any]:
        """The ``openledger`` field of one answer, as ``openledger serve`` builds it: the records
        nearest ``question`` cited, their relevance weights splitting the fee's data pool (with
        nothing cited the pool goes to the owner), and the receipt of the inference ``inference``
        (its id is ``keccak256(inference)``) on the base model ``base`` with ``adapter`` (an id,
        an ensemble's spelling, or ``None``), paid by ``payer``."""
        c = self.config
        query = self.vectors.embed([question])[0]
        cited = []
        if query.any():
            cited = [x for x in self.index.search(query, c.top_k) if x["score"] > 0.0]
        weights = relevance_weights(cited) if cited else []
        split = (self.split if weights else self.unattributed).split(
            c.fee_wei, [a for a, _ in weights], [w for _, w in weights]
        )
        pool = [(_word(a), amount) for a, amount in split["contributors"]]
        wh = weights_hash(pool)
        salt = lambda name: content_id(name.encode())  # noqa: E731 - keccak256 of the name
        base_id = model_id(c.owner, salt(base))
        members = parse_adapter_id(adapter)[1] if adapter else []
        ids = [model_id(c.owner, salt(m)) for m, _ in members]
        payer = payer or ZERO_ADDRESS
        inference_id = content_id(inference.encode())
        fields: Dict[str, Any]
        owner_parts: List[Optional[str]] = [None] * len(members)
        # A spelled ensemble (canonical: "a*0.5" is one, "a*1" is "a"), even of one weighted
        # adapter, is paid as an ensemble.
        if adapter is not None and _is_ensemble(adapter):
            shares = ensemble_shares([w for _, w in members])
            amount = ensemble_fee(ids, [c.fee_wei] * len(ids), shares)
            parts = ensemble_owner_shares(ids, split["owner"][1], shares)
            owner_parts = [str(p) for p in parts]
            receipt: Union[AttributionReceipt, EnsembleReceipt] = EnsembleReceipt(
                inference_id, ids, shares, payer, amount, c.epoch, wh
            )
            fields = {"modelIds": ids, "shares": [str(s) for s in shares]}
        else:
            amount = c.fee_wei
            receipt = AttributionReceipt(inference_id, base_id, ids, payer, amount, c.epoch, wh)
            fields = {"modelId": base_id, "adapterIds": ids}
        signature = self.signer.sign(receipt, c.chain_id, c.payments_contract)
        payout = lambda p: {"account": p[0], "amount_wei": str(p[1])}  # noqa: E731
        return {
            "datanet": self.datanet,
            "embedder": self.embedder_name,
            "citations": cited,
            "contributors": [{"account": a, "weight": w} for a, w in weights],
            "adapters": [
                {"name": m, "weight": w, "adapterId": i, "owner_part_wei": part}
                for (m, w), i, part in zip(members, ids, owner_parts)
            ],
            "fee_wei": str(c.fee_wei),
            "split": {
                "owner": payout(split["owner"]),
                "protocol": payout(split["protocol"]),
                "contributors": [payout(p) for p in split["contributors"]],
            },
            "receipt": {
                "inferenceId": inference_id,
                "payer": receipt.payer,
                "amount": str(amount),
                "epoch": c.epoch,
                "weightsHash": wh,
                **fields,
            },
            "domain": {
                "name": DOMAIN_NAME,
                "version": DOMAIN_VERSION,
                "chainId": c.chain_id,
                "verifyingContract": c.payments_contract,
            },
            "signature": "0x" + signature.hex(),
            "signer": self.signer.address,
            "payment": None,
        }


def _word(address: str) -> str:
    """An address left-padded to 32 bytes (how the receipt's weights name contributors)."""
    return "0x" + address[2:].lower().rjust(64, "0")


def _is_ensemble(canonical: str) -> bool:
    return "+" in canonical or "*" in canonical


#: The engine's finish reasons as OpenAI names them.
_FINISH = {
    "max_new_tokens": "length",
    "max_context": "length",
    "stop_token": "stop",
    "stop_string": "stop",
    "cancelled": "abort",
}


def _finish(reason: Optional[str]) -> str:
    return _FINISH.get(reason or "", "stop")


def _address(v: Any, name: str) -> str:
    """``v`` if it is a 0x-prefixed 20-byte hex address (else 400 naming ``name``)."""
    ok = isinstance(v, str) and len(v) == 42 and v[:2] in ("0x", "0X")
    if ok:
        try:
            int(v[2:], 16)
        except ValueError:
            ok = False
    if not ok:
        raise ApiError(400, f"{v!r} is not a 0x-prefixed address", name)
    return v


def _text(content: Any, i: int) -> str:
    """A message's text: a string, null (empty), or text parts joined by newlines (as
    ``openledger serve`` reads them)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise ApiError(400, "content must be a string, null or a list of parts", f"messages[{i}].content")
    texts = []
    for j, p in enumerate(content):
        param = f"messages[{i}].content[{j}]"
        kind = p.get("type") if isinstance(p, dict) else None
        if kind == "text":
            if not isinstance(p.get("text"), str):
                raise ApiError(400, "a text part needs a `text` string", param)
            texts.append(p["text"])
        elif kind is None:
            raise ApiError(400, "a content part needs a `type`", param)
        else:
            raise ApiError(400, f"content parts of type {kind!r} are not supported: text only", param)
    return "\n".join(texts)


class ApiError(Exception):
    """A request the API refuses: the HTTP status and OpenAI's error object."""

    def __init__(self, status: int, message: str, param: Optional[str] = None, code: Optional[str] = None):
        super().__init__(message)
        self.status = status
        kind = {401: "authentication_error", 404: "invalid_request_error"}.get(status)
        kind = kind or ("invalid_request_error" if status < 500 else "server_error")
        self.body = {"error": {"message": message, "type": kind, "param": param, "code": code}}


def _int(body: Dict[str, Any], key: str, default: Optional[int], lo: int, hi: int) -> Optional[int]:
    v = body.get(key, default)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise ApiError(400, f"{key} must be an integer in [{lo}, {hi}], got {v!r}", key)
    return v


def _float(body: Dict[str, Any], key: str, default: Optional[float], lo: float, hi: float) -> Optional[float]:
    v = body.get(key, default)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi:
        raise ApiError(400, f"{key} must be a number in [{lo}, {hi}], got {v!r}", key)
    return float(v)


class _Held:
    """Adapters pinned in a replica's pool while Ray Serve keeps the model id loaded; released
    (once) when Ray Serve evicts it."""

    def __init__(self, pool: AdapterPool, ids: List[str]) -> None:
        self.pool, self.ids, self.released = pool, [], False
        try:
            for i in ids:
                pool.pin(i)
                self.ids.append(i)
        except BaseException:
            self.__del__()
            raise

    def __del__(self) -> None:
        # Ray Serve calls it on eviction, and the object is collected later: release once.
        if self.released:
            return
        self.released = True
        for i in self.ids:
            try:
                self.pool.unpin(i)
            except OpenLedgerError:
                pass


class EngineReplica:
    """One replica: the model served by the continuous-batching engine, the hub's adapters
    registered in its pool (pinned while Ray Serve holds their id here), and the attributor.
    ``app`` makes a Ray Serve deployment of it with ``get_adapter`` multiplexed."""

    def __init__(
        self,
        model_dir: str,
        adapters_dir: Optional[str],
        attribution: Optional[AttributionConfig],
        engine_options: Dict[str, Any],
        pool_budget_bytes: int,
        max_threads: int = 36,
    ) -> None:
        self.pool = AdapterPool(pool_budget_bytes)
        if adapters_dir is not None:
            self.pool.register_hub(adapters_dir)
        self.engine = Engine(model_dir, self.pool, **engine_options)
        self.base = pathlib.Path(model_dir).name
        self.attributor = Attributor(attribution) if attribution is not None else None
        self.executor = concurrent.futures.ThreadPoolExecutor(max_threads, thread_name_prefix="openledger")
        self.loop_ready = False
        try:
            self.replica = _serve().get_replica_context().replica_id.unique_id
        except Exception:  # outside a Serve replica (tests of the class itself)
            self.replica = "local"

    def hold(self, model: str) -> _Held:
        """Pins the adapters ``model`` (a canonical id or ensemble) names, loading them into the
        pool."""
        if model == self.base:
            return _Held(self.pool, [])
        return _Held(self.pool, [m for m, _ in parse_adapter_id(model)[1]])

    def _run(self, fn: Any, *args: Any) -> Any:
        """``fn(*args)`` on the replica's own threads (not the event loop's default executor,
        which has a handful of threads and would cap the requests running at once)."""
        return asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    def _own_loop(self) -> None:
        # The token streams' async iteration reads in the loop's default executor: make it
        # the replica's, sized for the requests it takes at once.
        if not self.loop_ready:
            asyncio.get_running_loop().set_default_executor(self.executor)
            self.loop_ready = True

    async def _start(self, body: Dict[str, Any], chat: bool) -> Tuple[Optional[Tuple[_Plan, Any]], Optional[ApiError]]:
        """Holds the request's adapters, plans it and submits it to the engine: the plan and
        its token stream, or why not."""
        self._own_loop()
        try:
            model = body.get("model")
            if model != self.base:
                # The canonical spelling, as the front routed it.
                await self.get_adapter(parse_adapter_id(model)[0])  # type: ignore[attr-defined]
            plan = await self._run(self._plan, body, chat)
            return (plan, await self._run(self._generate, plan)), None
        except Exception as e:  # noqa: BLE001 - every failure is answered, none escapes
            return None, _api_error(e)

    async def complete(self, body: Dict[str, Any], chat: bool) -> Tuple[int, Dict[str, Any], str]:
        """Answers one OpenAI request whole: ``(status, body, replica id)``; a refused request
        is its error object, never an exception. A cancelled call (the client went away)
        cancels the engine request."""
        started, err = await self._start(body, chat)
        if started is not None:
            plan, stream = started
            try:
                await self._run(stream.collect)
                return 200, await self._run(self._answer, plan, stream), self.replica
            except asyncio.CancelledError:
                stream.cancel()
                raise
            except Exception as e:  # noqa: BLE001
                stream.cancel()
                err = _api_error(e)
        assert err is not None
        return err.status, err.body, self.replica

    async def complete_stream(self, body: Dict[str, Any], chat: bool) -> AsyncIterator[Any]:
        """Answers one OpenAI request with ``stream: true``: first ``(status, error body or
        None, replica id)`` — a request the engine refuses is refused here, before any event —
        then the data of each server-sent event as ``openledger serve`` sends them (the role,
        one chunk per piece of text, the finish reason, the usage and the ``openledger`` field
        in a last chunk without choices when asked, and ``[DONE]``). A failure after the start
        is sent as an error event; a cancelled stream cancels the engine request."""
        started, err = await self._start(body, chat)
        if started is None:
            assert err is not None
            yield err.status, err.body, self.replica
            return
        plan, stream = started
        yield 200, None, self.replica
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        obj = "chat.completion.chunk" if chat else "text_completion"

        def chunk(choices: List[Dict[str, Any]], **extra: Any) -> str:
            c = {"id": rid, "object": obj, "created": int(time.time()), "model": plan.model, "choices": choices}
            if plan.include_usage:
                c["usage"] = None
            c.update(extra)
            return json.dumps(c)

        try:
            if chat:
                yield chunk([{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                              "finish_reason": None}])
            async for _ in stream:
                piece = stream.new_text()
                if piece:
                    delta = {"delta": {"content": piece}} if chat else {"text": piece}
                    yield chunk([{"index": 0, **delta, "logprobs": None, "finish_reason": None}])
            piece = stream.new_text()
            done = {"delta": {"content": piece} if piece else {}} if chat else {"text": piece}
            yield chunk([{"index": 0, **done, "logprobs": None, "finish_reason": _finish(stream.finish_reason)}])
            extra: Dict[str, Any] = {}
            if plan.include_usage:
                extra["usage"] = _usage(plan, len(stream.tokens))
            if plan.ledger:
                extra["openledger"] = await self._run(self._attribute, plan, rid)
            if extra:
                yield chunk([], **extra)
        except Exception as e:  # noqa: BLE001 - sent as the stream's error event
            yield json.dumps(_api_error(e).body)
        finally:
            stream.cancel()
        yield "[DONE]"

    def _plan(self, body: Dict[str, Any], chat: bool) -> _Plan:
        """Checks a request and turns it into the engine's terms (``ApiError`` naming the
        field otherwise)."""
        model = body["model"]
        engine = self.engine
        if chat:
            messages = body.get("messages")
            if not isinstance(messages, list) or not messages:
                raise ApiError(400, "messages must be a non-empty list", "messages")
            flat = []
            for i, m in enumerate(messages):
                if not isinstance(m, dict) or not isinstance(m.get("role"), str):
                    raise ApiError(400, "a message is an object with a string `role`", f"messages[{i}]")
                flat.append({"role": m["role"], "content": _text(m.get("content"), i)})
            for key in ("tools", "functions"):
                if body.get(key):
                    raise ApiError(400, f"{key} are not supported", key)
            fmt = body.get("response_format")
            if fmt is not None and not (isinstance(fmt, dict) and fmt.get("type") == "text"):
                raise ApiError(400, 'only {"type": "text"} is supported', "response_format")
            prompt = engine.encode(engine.apply_chat_template(flat), add_special_tokens=False)
            question = next((m["content"] for m in reversed(flat) if m["role"] == "user"), "")
        else:
            p = body.get("prompt")
            if isinstance(p, str):
                prompt, question = engine.encode(p), p
            elif isinstance(p, list) and p and all(isinstance(t, int) and not isinstance(t, bool) for t in p):
                bad = next((t for t in p if not 0 <= t < engine.vocab_size), None)
                if bad is not None:
                    raise ApiError(400, f"token {bad} is outside the vocabulary of {engine.vocab_size}", "prompt")
                prompt, question = p, engine.decode(p)
            else:
                raise ApiError(400, "prompt must be a string or a non-empty list of token ids", "prompt")
        limit = engine.max_context
        where = "messages" if chat else "prompt"
        if not prompt:
            raise ApiError(400, "the prompt has no token", where)
        if len(prompt) >= limit:
            raise ApiError(400, f"the prompt ({len(prompt)} tokens) fills the context of {limit} tokens", where)
        key = "max_completion_tokens" if chat and body.get("max_completion_tokens") is not None else "max_tokens"
        max_new = _int(body, key, limit - len(prompt) if chat else 16, 1, limit) or 1
        if len(prompt) + max_new > limit:
            raise ApiError(
                400,
                f"the prompt ({len(prompt)} tokens) and {key} ({max_new}) exceed the context of {limit} tokens",
                key,
            )
        _int(body, "n", 1, 1, 1)
        if body.get("logprobs") or body.get("top_logprobs"):
            raise ApiError(400, "log-probabilities are served by openledger serve, not here", "logprobs")
        for key in ("presence_penalty", "frequency_penalty"):
            if _float(body, key, 0.0, -2.0, 2.0):
                raise ApiError(400, f"{key} is not supported; use repetition_penalty", key)
        if body.get("logit_bias"):
            raise ApiError(400, "logit_bias is not supported", "logit_bias")
        stream = body.get("stream", False)
        if not isinstance(stream, bool):
            raise ApiError(400, "stream must be true or false", "stream")
        options = body.get("stream_options") or {}
        if not isinstance(options, dict):
            raise ApiError(400, "stream_options must be an object", "stream_options")
        stop = body.get("stop")
        if isinstance(stop, str):
            stop = [stop]
        if stop is not None and (
            not isinstance(stop, list) or len(stop) > 4 or not all(isinstance(s, str) and s for s in stop)
        ):
            raise ApiError(400, "stop must be a string or a list of at most 4 non-empty strings", "stop")
        ledger = body.get("openledger")
        payer = None
        if isinstance(ledger, dict):
            if ledger.get("payer") is not None:
                payer = _address(ledger["payer"], "openledger.payer")
            ledger = True
        elif ledger is not None and not isinstance(ledger, bool):
            raise ApiError(400, 'openledger must be true, false or {"payer": "0x…"}', "openledger")
        if ledger and self.attributor is None:
            raise ApiError(400, "the deployment has no datanet: it does not attribute", "openledger")
        adapter = None if model == self.base else parse_adapter_id(model)[0]
        if ledger and adapter is not None and _is_ensemble(adapter):
            # The receipt's shares: weights that give none are refused before generating.
            ensemble_shares([w for _, w in parse_adapter_id(adapter)[1]])
        top_p = _float(body, "top_p", None, 0.0, 1.0)
        if top_p is not None and top_p <= 0.0:
            raise ApiError(400, f"top_p must be in (0, 1], not {top_p}", "top_p")
        seed = _int(body, "seed", None, -(2**63), 2**64 - 1)
        seed = secrets.randbits(64) if seed is None else seed & (2**64 - 1)
        return _Plan(
            model=model,
            adapter=adapter,
            chat=chat,
            prompt=prompt,
            question=question,
            generate={
                "max_new_tokens": max_new,
                "temperature": _float(body, "temperature", 1.0, 0.0, 2.0),
                "top_p": top_p if top_p is not None and top_p < 1.0 else None,
                "seed": seed,
                "stop_tokens": engine.eos_token_ids,
                "stop_strings": stop or None,
            },
            ledger=bool(ledger),
            payer=payer,
            include_usage=bool(stream and options.get("include_usage")),
        )

    def _generate(self, plan: _Plan) -> Any:
        return self.engine.generate(plan.prompt, plan.adapter, **plan.generate)

    def _attribute(self, plan: _Plan, rid: str) -> Dict[str, Any]:
        assert self.attributor is not None
        return self.attributor.attribute(plan.question, rid, self.base, plan.adapter, plan.payer)

    def _answer(self, plan: _Plan, stream: Any) -> Dict[str, Any]:
        tokens = stream.tokens
        rid = ("chatcmpl-" if plan.chat else "cmpl-") + uuid.uuid4().hex
        choice: Dict[str, Any] = {"index": 0, "logprobs": None, "finish_reason": _finish(stream.finish_reason)}
        if plan.chat:
            choice["message"] = {"role": "assistant", "content": stream.text}
        else:
            choice["text"] = stream.text
        out: Dict[str, Any] = {
            "id": rid,
            "object": "chat.completion" if plan.chat else "text_completion",
            "created": int(time.time()),
            "model": plan.model,
            "choices": [choice],
            "usage": _usage(plan, len(tokens)),
        }
        if plan.ledger:
            out["openledger"] = self._attribute(plan, rid)
        return out


@dataclasses.dataclass
class _Plan:
    """A checked request in the engine's terms."""

    model: str
    adapter: Optional[str]
    chat: bool
    prompt: List[int]
    question: str
    generate: Dict[str, Any]
    ledger: bool
    payer: Optional[str]
    include_usage: bool


def _usage(plan: _Plan, completion: int) -> Dict[str, int]:
    n = len(plan.prompt)
    return {"prompt_tokens": n, "completion_tokens": completion, "total_tokens": n + completion}


def _api_error(e: BaseException) -> ApiError:
    """The API's answer to a failure: a refusal as it is, the SDK's bad-input errors as 400 (an
    unknown id 404), anything else 500 naming its type."""
    if isinstance(e, ApiError):
        return e
    if isinstance(e, (InvalidArgumentError, InvalidIdError)):
        return ApiError(400, str(e))
    if isinstance(e, UnknownIdError):
        return ApiError(404, str(e), "model", "model_not_found")
    return ApiError(500, f"{type(e).__name__}: {e}")


class OpenAIFront:
    """The HTTP ingress: parses and bounds each request, refuses unknown models, and hands the
    request to a replica holding its adapter (``multiplexed_model_id`` = the ``model`` field).
    The replica that answered is named in the ``x-openledger-replica`` header."""

    def __init__(self, replicas: Any, base: str, adapters: List[str]) -> None:
        self.replicas = replicas
        self.base = base
        self.adapters = adapters

    def _check_model(self, model: Any) -> str:
        """The model's canonical spelling (the multiplexed id), after checking each member is
        an adapter of the hub."""
        if not isinstance(model, str) or not model:
            raise ApiError(400, "model must be a non-empty string", "model")
        if model == self.base:
            return model
        try:
            canonical, members = parse_adapter_id(model)
        except InvalidIdError as e:
            raise ApiError(400, str(e), "model") from None
        for name, _ in members:
            if name not in self.adapters:
                raise ApiError(404, f"The model `{name}` does not exist", "model", "model_not_found")
        return canonical

    async def __call__(self, request: Any) -> Any:
        from starlette.responses import JSONResponse, StreamingResponse

        path = request.url.path.rstrip("/")
        try:
            if request.method == "GET" and path == "/v1/models":
                ids = [self.base] + self.adapters
                return JSONResponse({
                    "object": "list",
                    "data": [{"id": i, "object": "model", "created": 0, "owned_by": "openledger"} for i in ids],
                })
            if request.method != "POST" or path not in ("/v1/chat/completions", "/v1/completions"):
                raise ApiError(404, f"no route {request.method} {path}")
            declared = request.headers.get("content-length")
            if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
                raise ApiError(413, f"the body exceeds {MAX_BODY_BYTES} bytes")
            raw = b""
            async for chunk in request.stream():
                raw += chunk
                if len(raw) > MAX_BODY_BYTES:
                    raise ApiError(413, f"the body exceeds {MAX_BODY_BYTES} bytes")
            try:
                body = json.loads(raw)
            except (ValueError, UnicodeDecodeError) as e:
                raise ApiError(400, f"the body is not JSON: {e}") from None
            if not isinstance(body, dict):
                raise ApiError(400, "the body must be a JSON object")
            model = self._check_model(body.get("model"))
            chat = path.endswith("chat/completions")
            mux = "" if model == self.base else model
            if body.get("stream") is True:
                events = self.replicas.options(multiplexed_model_id=mux, stream=True).complete_stream.remote(body, chat)
                status, refusal, replica = await events.__anext__()
                if refusal is not None:
                    return JSONResponse(refusal, status_code=status, headers={"x-openledger-replica": replica})

                async def sse() -> AsyncIterator[bytes]:
                    try:
                        async for data in events:
                            yield f"data: {data}\n\n".encode()
                    finally:
                        events.cancel()  # the client went away: the replica stops generating

                headers = {"x-openledger-replica": replica, "cache-control": "no-cache"}
                return StreamingResponse(sse(), media_type="text/event-stream", headers=headers)
            handle = self.replicas.options(multiplexed_model_id=mux)
            status, answer, replica = await handle.complete.remote(body, chat)
            return JSONResponse(answer, status_code=status, headers={"x-openledger-replica": replica})
        except ApiError as e:
            return JSONResponse(e.body, status_code=e.status)
        except Exception as e:  # noqa: BLE001 - no failure escapes as a bare 500 page
            err = ApiError(500, f"{type(e).__name__}: {e}")
            return JSONResponse(err.body, status_code=err.status)


def app(
    model_dir: _Path,
    adapters_dir: Optional[_Path] = None,
    *,
    attribution: Optional[AttributionConfig] = None,
    replicas: int = 2,
    max_adapters_per_replica: int = 4,
    pool_budget_bytes: int = 256 << 20,
    replica_cpus: float = 1.0,
    max_ongoing_requests: int = 32,
    engine_options: Optional[Dict[str, Any]] = None,
) -> Any:
    """The Ray Serve application: ``replicas`` replicas of ``EngineReplica`` (``replica_cpus``
    CPUs each) on the model folder ``model_dir`` with the adapters of the hub folder
    ``adapters_dir`` (``<dir>/<id>/adapter_config.json``), each holding at most
    ``max_adapters_per_replica`` model ids and taking up to ``max_ongoing_requests`` requests at
    once (Ray Serve's default, 5, would starve the engine's batches), and the ``OpenAIFront``
    ingress. ``engine_options``
    go to ``Engine`` (``max_running``, ``max_context``, …). Run it with ``serve.run`` or
    ``start``."""
    serve = _serve()
    if min(replicas, max_adapters_per_replica, max_ongoing_requests) < 1:
        raise InvalidArgumentError(
            "replicas, max_adapters_per_replica and max_ongoing_requests must be at least 1"
        )
    model_dir = os.fspath(model_dir)
    hub = None if adapters_dir is None else os.fspath(adapters_dir)
    adapters = [] if hub is None else hub_ids(hub)

    class Replica(EngineReplica):
        @serve.multiplexed(max_num_models_per_replica=max_adapters_per_replica)
        async def get_adapter(self, model: str) -> _Held:
            return await asyncio.to_thread(self.hold, model)

    replica = serve.deployment(
        Replica,
        name="EngineReplica",
        num_replicas=replicas,
        max_ongoing_requests=max_ongoing_requests,
        ray_actor_options={"num_cpus": replica_cpus},
    ).bind(model_dir, hub, attribution, dict(engine_options or {}), pool_budget_bytes, max_ongoing_requests + 4)
    front = serve.deployment(
        OpenAIFront,
        name="OpenAIFront",
        max_ongoing_requests=replicas * max_ongoing_requests,
        ray_actor_options={"num_cpus": 0},
    )
    return front.bind(replica, pathlib.Path(model_dir).name, adapters)


def start(
    model_dir: _Path,
    adapters_dir: Optional[_Path] = None,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    name: str = "openledger",
    **options: Any,
) -> str:
    """Starts Ray Serve's HTTP proxy on ``host:port`` (loopback by default) and deploys ``app``
    (``options`` are its own) under ``name``; returns the base URL once every replica is up.
    Ray must be running (``ray.init``, or ``openledger.ray.local_cluster``)."""
    serve = _serve()
    serve.start(http_options={"host": host, "port": port})
    serve.run(app(model_dir, adapters_dir, **options), name=name, route_prefix="/")
    return f"http://{host}:{port}"


def stop() -> None:
    """Removes every application and stops Ray Serve (its controller, proxy and replicas)."""
    _serve().shutdown()
