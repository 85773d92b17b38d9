"""Attribution over a feature store split into shards, on a Ray cluster.

A datanet of tens of millions of records makes a feature store too big for one machine's
memory bandwidth. ``FeatureStore.split`` cuts it into shard files (whole blocks of 1024 rows,
rows in order); here each shard is scored in a Ray task on the node that reads it, and the
driver puts the scores together, reduces them per contributor and splits the pool to the wei.
The result equals the single-process one (``attribute_local``) exactly: TracIn and cosine
score every row on its own, and DataInf runs in passes whose per-block sums are the whole
store's (norms → ``datainf_lambdas`` → residuals → weights → scores). Exactly here means on
workers whose CPUs take the same kernels as the driver's (the dot products use AVX2 and FMA
when the CPU has them, plain loops otherwise: a cluster mixing the two agrees to rounding, not
to the bit), with the shards passed in the order ``FeatureStore.split`` returned them.

Install with ``pip install './bindings/python[ray]'``. Start Ray yourself (``ray.init`` with
your cluster's address) or, on one machine, with ``local_cluster``; every task opens its shard
by path, so each shard file must be readable where its task runs (a shared file system, or one
node).

    import openledger as ol, openledger.ray as olr
    with olr.local_cluster(num_cpus=2):
        shards = ol.FeatureStore.open("features.olfs").split("shards/", 4)
        result = olr.attribute(shards, query_gradients, pool_wei=10**15)
    result["split"]   # {contributor: wei}, summing to pool_wei
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sys
import tempfile
import time
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import numpy.typing as npt

from ._openledger import (
    FeatureStore,
    FeatureStoreWriter,
    Trainer,
    datainf_lambdas,
    split_scores,
)

__all__ = [
    "LOCAL_ENV",
    "attribute",
    "attribute_local",
    "featurize",
    "featurize_local",
    "local_cluster",
    "loopback_grpc",
    "reduce",
    "score",
]

_Path = Union[str, "os.PathLike[str]"]
_Layers = Optional[Sequence[Tuple[int, int]]]
_METHODS = ("tracin", "cosine", "datainf")


def _require(module: str, user: str, extra: str) -> Any:
    """``module`` imported, or an ``ImportError`` saying which extra of ours brings it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(f"{user} needs {module}: pip install './bindings/python[{extra}]'") from e


def _ray() -> Any:
    return _require("ray", "openledger.ray", "ray")


#: Set before Ray is imported (Ray reads them at import): the local node's address is 127.0.0.1,
#: so its services listen on loopback only (Ray otherwise binds every interface — this switch is
#: the one Ray 2.60 has for it, meant for single-node macOS/Windows clusters); no auth token
#: written to ~/.ray; no usage report sent.
LOCAL_ENV = {
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_AUTH_MODE": "disabled",
    "RAY_USAGE_STATS_ENABLED": "0",
}


def loopback_grpc() -> None:
    """Makes the gRPC servers of this worker process listen on loopback: Ray Serve 2.60's
    replicas start their inter-deployment gRPC server on ``[::]:0`` (every interface) whatever
    the node's address, through ``ray._common.tls_utils.add_port_to_grpc_server``; wrapped
    here, a wildcard address becomes ``127.0.0.1`` with the same port. ``local_cluster`` runs
    it in every worker as Ray's ``worker_process_setup_hook`` (before Serve's replica module is
    imported, so the replica takes the wrapped function). A Ray without that function is left
    as it is."""
    try:
        from ray._common import tls_utils
    except ImportError:  # pragma: no cover - another Ray layout
        return
    bind = getattr(tls_utils, "add_port_to_grpc_server", None)
    if bind is None or getattr(bind, "_openledger_loopback", False):
        return

    def on_loopback(server: Any, address: str) -> Any:
        host, _, port = address.rpartition(":")
        if host in ("[::]", "0.0.0.0", ""):
            address = f"127.0.0.1:{port}"
        return bind(server, address)

    on_loopback._openledger_loopback = True  # type: ignore[attr-defined]
    tls_utils.add_port_to_grpc_server = on_loopback


def _children() -> Dict[int, List[int]]:
    kids: Dict[int, List[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                kids.setdefault(ppid, []).append(int(d))
            except (OSError, IndexError, ValueError):
                continue
    return kids


def _descendants(root: int) -> List[int]:
    kids, out, stack = _children(), [], [root]
    while stack:
        for c in kids.get(stack.pop(), []):
            out.append(c)
            stack.append(c)
    return out


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@contextlib.contextmanager
def local_cluster(
    num_cpus: Optional[int] = None,
    object_store_memory: int = 100 * 1024 * 1024,
    stop_timeout: float = 10.0,
) -> Iterator[Any]:
    """A Ray cluster on this machine for the shards' tasks, stopped on exit with nothing left:
    ``num_cpus`` workers (all cores by default), every service on 127.0.0.1, no dashboard port,
    no auth-token file, no usage report, the object store capped at ``object_store_memory``
    bytes (at least 75 MiB; Ray otherwise takes a share of memory in /dev/shm), Ray Serve's
    replicas' gRPC servers on loopback too (``loopback_grpc``), its logs in a
    temporary folder removed on exit. Processes the cluster started that outlive
    ``ray.shutdown()`` by ``stop_timeout`` seconds are killed (found through /proc: Linux only;
    processes this one started before the cluster are left alone).

    The loopback binding is set through environment variables Ray reads when it is imported
    (``LOCAL_ENV``): import Ray after them, or set them yourself; a cluster that comes up on
    another address raises ``RuntimeError`` and is stopped. Yields the ``ray`` module."""
    if "ray" not in sys.modules:
        for k, v in LOCAL_ENV.items():
            os.environ.setdefault(k, v)
    ray = _ray()
    if ray.is_initialized():
        raise RuntimeError("Ray is already running in this process")
    # Processes of this one from before the cluster are not the cluster's to stop.
    before = set(_descendants(os.getpid()))
    # Short: Ray's socket paths under it must fit 107 bytes.
    tmp = tempfile.mkdtemp(prefix="olray-", dir="/tmp")
    try:
        ray.init(
            num_cpus=num_cpus,
            object_store_memory=object_store_memory,
            include_dashboard=False,
            _temp_dir=tmp,
            log_to_driver=False,
            configure_logging=False,
            runtime_env={"worker_process_setup_hook": "openledger.ray.loopback_grpc"},
        )
        ip = ray.util.get_node_ip_address()
        if ip != "127.0.0.1":
            raise RuntimeError(
                f"the local cluster came up on {ip}, not 127.0.0.1: set {LOCAL_ENV} before "
                "importing ray"
            )
        yield ray
    finally:
        procs = [p for p in _descendants(os.getpid()) if p not in before]
        ray.shutdown()
        deadline = time.time() + stop_timeout
        while time.time() < deadline and any(_alive(p) for p in procs):
            time.sleep(0.1)
        for p in procs:
            if _alive(p):
                try:
                    os.kill(p, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        shutil.rmtree(tmp, ignore_errors=True)


def _check(method: str) -> None:
    if method not in _METHODS:
        raise ValueError(f"method: expected one of {_METHODS}, found {method!r}")


def _gather(
    refs: List[Any],
    progress: Optional[Callable[[int, int], object]],
    deadline: Optional[float],
) -> List[Any]:
    """The tasks' results in order, ``progress(done, total)`` called as each finishes;
    ``TimeoutError`` (the tasks cancelled) past ``deadline`` (``time.monotonic()``)."""
    ray = _ray()
    total = len(refs)
    pending = list(refs)
    done = 0
    while pending:
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        ready, pending = ray.wait(pending, num_returns=1, timeout=left)
        if not ready:
            for r in pending:
                ray.cancel(r, force=True)
            raise TimeoutError(f"{len(pending)} of {total} shard tasks still running at the deadline")
        done += len(ready)
        if progress is not None:
            progress(done, total)
    return ray.get(refs)


#: The stores a worker process has opened, by file identity: opening checks every row's CRC, so
#: the passes of one query (and later queries) reuse the open store while its file is unchanged.
_OPEN: Dict[Tuple[str, int, int, int], FeatureStore] = {}


def _open(path: str) -> FeatureStore:
    """The store at `path`, opened once per worker process (again when the file changed)."""
    st = os.stat(path)
    key = (os.path.realpath(path), st.st_ino, st.st_mtime_ns, st.st_size)
    store = _OPEN.get(key)
    if store is None:
        if len(_OPEN) >= 64:
            _OPEN.clear()
        store = _OPEN[key] = FeatureStore.open(path)
    return store


def _tasks() -> Dict[str, Any]:
    """The remote functions (defined once Ray is imported)."""
    ray = _ray()
    if not hasattr(_tasks, "cache"):

        def scores(path: str, gradients: np.ndarray, method: str) -> np.ndarray:
            return _open(path).score(gradients, method=method)

        def norms(path: str, layers: _Layers) -> Dict[str, Any]:
            return _open(path).datainf_norms(layers=layers)

        def residual(path: str, gradients: np.ndarray, lambdas: List[float], layers: _Layers) -> Dict[str, Any]:
            return _open(path).datainf_residual(gradients, lambdas, layers=layers)

        def weighted(path: str, w: np.ndarray) -> np.ndarray:
            return _open(path).score_weights(w)

        def contributors(path: str) -> List[str]:
            return _open(path).contributors()

        _tasks.cache = {  # type: ignore[attr-defined]
            f.__name__: ray.remote(num_cpus=1)(f)
            for f in (scores, norms, residual, weighted, contributors, _featurize_range)
        }
    return _tasks.cache  # type: ignore[attr-defined]


def score(
    shards: Sequence[_Path],
    gradients: npt.ArrayLike,
    *,
    method: str = "tracin",
    layers: _Layers = None,
    lambda_scale: float = 0.1,
    progress: Optional[Callable[[int, int], object]] = None,
    timeout: Optional[float] = None,
) -> npt.NDArray[np.float32]:
    """Scores the query's float32 ``gradients`` ``[checkpoints, p]`` against every example of
    ``shards`` (``FeatureStore.split``'s paths, in order), one Ray task per shard and pass;
    returns the float32 scores in shard order, equal to ``FeatureStore.score`` on the whole
    store bit for bit. ``method``, ``layers`` and ``lambda_scale`` are ``FeatureStore.score``'s.
    ``progress(done, total)`` is called as tasks finish (DataInf runs three rounds of tasks);
    past ``timeout`` seconds the tasks are cancelled and ``TimeoutError`` raised. A task's
    error (a missing or corrupt shard, say) is raised as Ray's ``RayTaskError`` wrapping the
    SDK's typed error, which names the file."""
    _check(method)
    ray = _ray()
    if not ray.is_initialized():
        raise RuntimeError("Ray is not running: call ray.init (or use openledger.ray.local_cluster) first")
    paths = [os.fspath(p) for p in shards]
    if not paths:
        raise ValueError("shards: at least one shard is needed")
    g_local = np.ascontiguousarray(gradients, dtype=np.float32)
    g = ray.put(g_local)  # once, not once per task
    t = _tasks()
    layers = None if layers is None else [(int(a), int(b)) for a, b in layers]
    deadline = None if timeout is None else time.monotonic() + timeout
    if method != "datainf":
        parts = _gather([t["scores"].remote(p, g, method) for p in paths], progress, deadline)
        return np.concatenate(parts)
    norms = _gather([t["norms"].remote(p, layers) for p in paths], progress, deadline)
    lambdas = datainf_lambdas(norms, lambda_scale=lambda_scale).tolist()
    residuals = _gather([t["residual"].remote(p, g, lambdas, layers) for p in paths], progress, deadline)
    w = _open(paths[0]).datainf_weights(g_local, residuals, lambdas, layers=layers)
    parts = _gather([t["weighted"].remote(p, w) for p in paths], progress, deadline)
    return np.concatenate(parts)


def reduce(
    scores: npt.ArrayLike,
    contributors: Sequence[str],
    pool_wei: int,
    *,
    method: str = "tracin",
) -> Dict[str, Any]:
    """Per-contributor influence and the wei split of ``pool_wei``: each example's helpful
    score (its score, or minus it for DataInf, whose helpful examples score low) counts when
    positive; the totals per contributor (summed in example order, in float64) split the pool
    exactly (``split_scores``). Returns ``{"scores", "contributors": {address: weight},
    "split": {address: wei}}``; a pool no example helped raises ``SplitError``."""
    _check(method)
    s = np.asarray(scores, dtype=np.float32)
    if len(contributors) != len(s):
        raise ValueError(f"contributors: {len(contributors)} for {len(s)} scores")
    helpful = -s.astype(np.float64) if method == "datainf" else s.astype(np.float64)
    accounts, inverse = np.unique(np.asarray(contributors), return_inverse=True)
    totals = np.bincount(inverse, weights=np.where(helpful > 0, helpful, 0.0), minlength=len(accounts))
    keep = totals > 0
    kept = [str(a) for a in accounts[keep]]
    weights = totals[keep]
    split = split_scores(pool_wei, kept, weights)
    return {
        "scores": s,
        "contributors": dict(zip(kept, weights.tolist())),
        "split": {a: int(v) for a, v in split},
    }


def attribute(
    shards: Sequence[_Path],
    gradients: npt.ArrayLike,
    pool_wei: int,
    *,
    method: str = "tracin",
    layers: _Layers = None,
    lambda_scale: float = 0.1,
    progress: Optional[Callable[[int, int], object]] = None,
    timeout: Optional[float] = None,
) -> Dict[str, Any]:
    """``score`` over the shards on Ray, then ``reduce`` on the driver: the query's influence
    per contributor and ``pool_wei`` split between them to the wei, equal to
    ``attribute_local`` on the whole store."""
    deadline = None if timeout is None else time.monotonic() + timeout
    s = score(shards, gradients, method=method, layers=layers, lambda_scale=lambda_scale,
              progress=progress, timeout=timeout)
    t = _tasks()
    refs = [t["contributors"].remote(os.fspath(p)) for p in shards]
    who = [a for part in _gather(refs, None, deadline) for a in part]
    return reduce(s, who, pool_wei, method=method)


def attribute_local(
    store: Union[_Path, FeatureStore],
    gradients: npt.ArrayLike,
    pool_wei: int,
    *,
    method: str = "tracin",
    layers: _Layers = None,
    lambda_scale: float = 0.1,
) -> Dict[str, Any]:
    """``attribute`` in this process on one (unsplit) store: the reference the sharded run
    equals."""
    st = store if isinstance(store, FeatureStore) else FeatureStore.open(os.fspath(store))
    g = np.ascontiguousarray(gradients, dtype=np.float32)
    s = st.score(g, method=method, layers=layers, lambda_scale=lambda_scale)
    return reduce(s, st.contributors(), pool_wei, method=method)


def _featurize_range(
    trainer: Dict[str, Any],
    checkpoints: Sequence[Tuple[_Path, float]],
    examples: Sequence[Any],
    records: Sequence[str],
    contributors: Sequence[str],
    out: str,
    store: Dict[str, Any],
) -> str:
    """Writes the features of `examples` (with their records and contributors) at every
    checkpoint to a new store at `out`: the trainer loads each checkpoint's adapter and takes
    each example's gradient on its own, so the rows do not depend on which examples share the
    call."""
    spec = dict(trainer)
    t = Trainer(spec.pop("model_dir"), spec.pop("targets"), spec.pop("r"), spec.pop("alpha"), **spec)
    grads = np.zeros((len(examples), len(checkpoints), t.num_parameters), dtype=np.float32)
    for c, (adapter, _) in enumerate(checkpoints):
        t.load_adapter(os.fspath(adapter))
        for i, ex in enumerate(examples):
            grads[i, c] = t.example_gradient(ex)
    w = FeatureStoreWriter.create(
        out,
        input_dim=t.num_parameters,
        learning_rates=[float(lr) for _, lr in checkpoints],
        **store,
    )
    if len(examples):
        w.extend(list(records), list(contributors), grads)
    w.sync()
    return out


def _ranges(n: int, parts: int) -> List[Tuple[int, int]]:
    """`parts` consecutive ranges covering 0..n, sizes differing by at most one."""
    if parts < 1 or parts > max(n, 1):
        raise ValueError(f"shards: {parts} for {n} examples (1 to {max(n, 1)})")
    return [(j * n // parts, (j + 1) * n // parts) for j in range(parts)]


def _featurize_args(
    checkpoints: Sequence[Tuple[_Path, float]],
    examples: Sequence[Any],
    records: Sequence[str],
    contributors: Sequence[str],
    out: _Path,
    store: Dict[str, Any],
) -> Tuple[List[Tuple[str, float]], str, Dict[str, Any]]:
    """Checks a featurisation's inputs; returns the checkpoints, `out` and the store's options
    as the tasks take them."""
    if not (len(examples) == len(records) == len(contributors)):
        raise ValueError(
            f"examples, records, contributors: {len(examples)}, {len(records)} and "
            f"{len(contributors)} given, one each per example"
        )
    if os.path.exists(out):
        raise FileExistsError(f"{os.fspath(out)} exists: the store is not overwritten")
    return [(os.fspath(a), float(lr)) for a, lr in checkpoints], os.fspath(out), store


def featurize(
    trainer: Dict[str, Any],
    checkpoints: Sequence[Tuple[_Path, float]],
    examples: Sequence[Any],
    records: Sequence[str],
    contributors: Sequence[str],
    out: _Path,
    *,
    shards: int,
    k: int,
    projection: str = "rademacher",
    seed: int = 0,
    dtype: str = "f16",
    progress: Optional[Callable[[int, int], object]] = None,
    timeout: Optional[float] = None,
) -> FeatureStore:
    """The influence feature store of a training run, featurised in ``shards`` Ray tasks:
    each task builds the trainer ``trainer`` describes (``Trainer``'s arguments as a dict:
    ``model_dir``, ``targets``, ``r``, ``alpha`` and any keyword), loads every checkpoint
    (``(adapter folder, learning rate)``, as ``Trainer.save_adapter`` wrote them) and writes the
    per-example gradients of its consecutive range of ``examples`` (``Trainer``'s example
    forms), projected to ``k`` dimensions, to a store of its own; the driver merges them in
    order into ``out``, whose bytes equal ``featurize_local``'s. The model folder, the
    checkpoints and ``out``'s folder must be reachable at the same paths where the tasks run.
    ``progress(done, total)`` is called as tasks finish; the parts are removed afterwards."""
    cps, out, store = _featurize_args(
        checkpoints, examples, records, contributors, out,
        dict(k=k, projection=projection, seed=seed, dtype=dtype),
    )
    ray = _ray()
    if not ray.is_initialized():
        raise RuntimeError("Ray is not running: call ray.init (or use openledger.ray.local_cluster) first")
    ranges = _ranges(len(examples), shards)
    parts = [f"{out}.part-{j:03}-of-{shards:03}" for j in range(shards)]
    # A part path already taken is refused before anything is written (and never removed).
    for part in parts:
        if os.path.exists(part):
            raise FileExistsError(f"{part} exists: featurize writes its parts there")
    deadline = None if timeout is None else time.monotonic() + timeout
    t = _tasks()
    try:
        refs = [
            t["_featurize_range"].remote(
                trainer, cps, list(examples[a:b]), list(records[a:b]), list(contributors[a:b]), part, store
            )
            for (a, b), part in zip(ranges, parts)
        ]
        _gather(refs, progress, deadline)
        return FeatureStore.merge(parts, out)
    finally:
        for part in parts:
            if os.path.exists(part):
                os.remove(part)


def featurize_local(
    trainer: Dict[str, Any],
    checkpoints: Sequence[Tuple[_Path, float]],
    examples: Sequence[Any],
    records: Sequence[str],
    contributors: Sequence[str],
    out: _Path,
    *,
    k: int,
    projection: str = "rademacher",
    seed: int = 0,
    dtype: str = "f16",
) -> FeatureStore:
    """``featurize`` in this process, one range: the reference the sharded run equals."""
    cps, out, store = _featurize_args(
        checkpoints, examples, records, contributors, out,
        dict(k=k, projection=projection, seed=seed, dtype=dtype),
    )
    _featurize_range(trainer, cps, list(examples), list(records), list(contributors), out, store)
    return FeatureStore.open(out)
