"""Data-parallel training: two gloo processes under torchrun train and export a bundle that passes the
export's parity check and that the service loads and scores, in memory and out of core (each rank on its
share of the requests); the Kubernetes training Job renders and validates."""

from __future__ import annotations

import copy
import json

import kubernetes_validate
import numpy as np

from model_export.distributed import launch
from model_export.train import TrainConfig
from service.core.settings import Settings
from service.model.bundle import LoadedBundle
from tests.test_deploy import K8S_VERSION, ROOT, _by_kind, render_kustomization


def test_two_processes_train_and_export_a_bundle(data_dir, tmp_path):
    out = tmp_path / "ddp"
    # sparse id tables, as a log large enough for several processes gets them by default (gloo all-reduces
    # their sparse gradients)
    assert launch(data_dir, out, TrainConfig(epochs=2, seed=0, sparse_embeddings=True), nproc=2) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["training_data"]["processes"] == 2
    assert manifest["training"]["sparse_embeddings"] is True
    assert manifest["parity_max_abs_diff"] < 1e-4
    epochs = manifest["training"]["epochs"]
    assert epochs and all(e["rows_per_s"] > 0 and np.isfinite(e["val_logloss"]) for e in epochs)
    tasks = manifest["metrics"]["tasks"]
    assert set(tasks) == {"search", "prequery", "more_like_this"}
    assert all(m["model"]["ndcg@10"] > m["popularity"]["ndcg@10"] for m in tasks.values()), tasks
    bundle = LoadedBundle.load(out, Settings(bundle=str(out)))
    bundle.check()  # the service's own load-time check: it ranks a request of every task


def test_two_processes_train_out_of_core_each_on_its_share(data_dir, tmp_path):
    """Out of core, each rank encodes only its share of the fit window's requests: together the shares are
    the whole window, and the model is as good as one process's."""
    from model_export.event_log import EventLog
    from model_export.train import request_share

    source = EventLog(data_dir, 7_000)
    for chunk in source.chunks("fit"):
        shares = [request_share(chunk, r, 2) for r in range(2)]
        assert sum(s.num_rows for s in shares) == chunk.num_rows
        ids = [set(s.column("request_id").to_pylist()) for s in shares]
        assert not ids[0] & ids[1] and min(len(i) for i in ids) > 0.4 * (len(ids[0]) + len(ids[1]))

    out = tmp_path / "ddp-ooc"
    cfg = TrainConfig(epochs=2, seed=0)
    assert launch(data_dir, out, cfg, nproc=2, chunk_rows=7_000, in_memory_rows=0) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["training_data"]["processes"] == 2
    assert manifest["training_data"]["out_of_core"]["fit_slices"] >= 2  # rank 0's share, in slices
    assert manifest["parity_max_abs_diff"] < 1e-4
    tasks = manifest["metrics"]["tasks"]
    assert all(m["model"]["ndcg@10"] > m["popularity"]["ndcg@10"] for m in tasks.values()), tasks
    LoadedBundle.load(out, Settings(bundle=str(out))).check()


def test_the_training_job_renders_and_validates():
    docs = render_kustomization(ROOT / "k8s/training")
    for doc in docs:
        kubernetes_validate.validate(copy.deepcopy(doc), K8S_VERSION, strict=True)
    objs = _by_kind(docs)
    job, service = objs[("Job", "unirank-train")], objs[("Service", "unirank-train")]
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed" and spec["completions"] == spec["parallelism"] >= 2
    pod = spec["template"]["spec"]
    assert pod["subdomain"] == service["metadata"]["name"] and service["spec"]["clusterIP"] == "None"
    assert service["spec"]["selector"] == {"job-name": job["metadata"]["name"]}
    container = pod["containers"][0]
    args = container["args"]
    nodes = next(a for a in args if a.startswith("--nnodes="))
    assert nodes == f"--nnodes={spec['completions']}"
    assert "--node-rank=$(JOB_COMPLETION_INDEX)" in args
    assert "JOB_COMPLETION_INDEX" in {e["name"] for e in container["env"]}
    endpoint = next(a for a in args if a.startswith("--rdzv-endpoint="))
    assert endpoint.startswith(f"--rdzv-endpoint={job['metadata']['name']}-0.{service['metadata']['name']}:")
    assert "model_export.distributed" in args
    assert all(d["metadata"]["namespace"] == "unirank" for d in docs)
