"""Static checks of what deploys unirank: the Dockerfile (hadolint), docker-compose.yml (the compose
JSON schema), the Prometheus rules (promtool), the Grafana dashboard and the Kubernetes manifests
(kustomize overlays rendered, then validated against the Kubernetes schemas, offline).

No Docker engine or cluster exists where CI runs; these are the checks that need neither.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import jsonpatch
import jsonschema
import kubernetes_validate
import pytest
import yaml

from service.core.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
K8S_VERSION = "1.30.0"


# --- Dockerfile --------------------------------------------------------------------------------------


def dockerfile_stages() -> dict[str, str]:
    stages, name = {}, None
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        if m := re.match(r"FROM\s+\S+(?:\s+AS\s+(\S+))?", line, re.I):
            name = m.group(1) or "<default>"
            stages[name] = ""
        elif name and not line.lstrip().startswith("#"):
            stages[name] += line + "\n"
    return stages


def test_dockerfile_is_clean_under_hadolint():
    hadolint = Path(sys.executable).parent / "hadolint"
    result = subprocess.run(
        [str(hadolint), "--failure-threshold", "info", str(ROOT / "Dockerfile")], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_runtime_images_are_slim_non_root_and_health_checked():
    stages = dockerfile_stages()
    assert {"runtime", "gpu", "gpu-demo", "trainer", "demo", "baked", "loadtest"} <= stages.keys()
    # the service's venv installs the package with the object-store extra, not `train`: no torch in the runtime
    assert re.search(r'pip install "\.\[remote\]"\s*$', stages["service-venv"], re.M)
    assert "torch" not in stages["service-venv"] + stages["runtime"]
    for name in ("runtime", "gpu"):
        body = stages[name]
        assert re.search(r"^USER 10001$", body, re.M), name
        assert "HEALTHCHECK" in body and "/healthz" in body, name
        assert 'CMD ["unirank", "serve"]' in body, name
    assert "onnxruntime-gpu" in stages["gpu"]


# --- docker-compose ----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def compose_schema(tmp_path_factory) -> dict:
    """The Compose Specification JSON schema, as the docker-compose package on PyPI ships it."""
    where = tmp_path_factory.mktemp("compose")
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "docker-compose==1.29.2", "-d", str(where)],
        check=True,
    )
    wheel = next(where.glob("docker_compose-*.whl"))
    with zipfile.ZipFile(wheel) as z:
        return json.loads(z.read("compose/config/compose_spec.json"))


def test_compose_file_follows_the_compose_schema(compose_schema):
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    jsonschema.Draft7Validator(compose_schema).validate(compose)
    services = compose["services"]
    assert {"redis", "ranker", "prometheus", "grafana", "locust"} <= services.keys()
    stages = dockerfile_stages()
    for name, service in services.items():
        if "build" in service:
            assert service["build"]["target"] in stages, name
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            named = source in (compose.get("volumes") or {})
            # ./artifacts holds the bundles one trains (git-ignored, absent from a clean checkout); with the
            # short syntax docker creates a missing source directory, so only that one may be missing
            generated = source == "./artifacts" and "artifacts/" in (ROOT / ".gitignore").read_text().split()
            assert named or generated or (ROOT / source).exists(), f"{name} mounts {source}, which does not exist"
    assert services["ranker"]["environment"]["REDIS_URL"].startswith("redis://redis:")
    assert services["ranker"]["depends_on"]["redis"]["condition"] == "service_healthy"
    # the memory policy (docs/resilience.md, "Redis memory"): accepted state never evicted, the cache evictable, apart
    assert services["ranker"]["environment"]["UNIRANK_CACHE_REDIS_URL"].startswith("redis://redis-cache:")
    state, cache = services["redis"]["command"], services["redis-cache"]["command"]
    assert state[state.index("--maxmemory-policy") + 1] == "noeviction" and "--appendonly" in state
    assert cache[cache.index("--maxmemory-policy") + 1] == "allkeys-lru"
    scrape = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())["scrape_configs"][0]
    assert scrape["static_configs"][0]["targets"] == ["ranker:8000"]
    assert "http://ranker:8000" in services["locust"]["command"]


# --- Prometheus rules and the Grafana dashboard -----------------------------------------------------


@pytest.fixture(scope="session")
def promtool(prometheus_binaries) -> str:
    return prometheus_binaries["promtool"]


def test_alert_rules_pass_promtool_check_and_their_unit_tests(promtool):
    check = subprocess.run(
        [promtool, "check", "rules", str(ROOT / "deploy/prometheus/alerts.yml")], capture_output=True, text=True
    )
    declared = yaml.safe_load((ROOT / "deploy/prometheus/alerts.yml").read_text())["groups"]
    found = f"SUCCESS: {sum(len(g['rules']) for g in declared)} rules found"
    assert check.returncode == 0 and found in check.stdout, check.stdout + check.stderr
    unit = subprocess.run(
        [promtool, "test", "rules", str(ROOT / "deploy/prometheus/alerts_test.yml")], capture_output=True, text=True
    )
    assert unit.returncode == 0, unit.stdout + unit.stderr


def test_prometheus_rule_in_k8s_carries_the_same_alerts():
    alerts = yaml.safe_load((ROOT / "deploy/prometheus/alerts.yml").read_text())
    rule = yaml.safe_load((ROOT / "k8s/base/prometheusrule.yaml").read_text())
    assert rule["spec"]["groups"] == alerts["groups"]


def dashboard_queries() -> list[tuple[str, str]]:
    dashboard = json.loads((ROOT / "deploy/grafana/dashboards/unirank.json").read_text())
    return [(panel["title"], target["expr"]) for panel in dashboard["panels"] for target in panel["targets"]]


def test_dashboard_has_the_panels_operators_look_for():
    titles = " | ".join(title for title, _ in dashboard_queries()).lower()
    for wanted in (
        "p50 / p95 / p99 by task",
        "requests per second",
        "cache hit ratio",
        "errors",
        "candidates",
        "stage latency",
        "models loaded",
        "p99 by model",
        "shadow model",
    ):
        assert wanted in titles, wanted
    grafana = yaml.safe_load((ROOT / "deploy/grafana/provisioning/dashboards/unirank.yml").read_text())
    assert grafana["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"


# --- Kubernetes --------------------------------------------------------------------------------------


def render_kustomization(directory: Path) -> list[dict]:
    """The subset of kustomize these manifests use: resources, labels, namespace, images, JSON6902 patches."""
    spec = yaml.safe_load((directory / "kustomization.yaml").read_text())
    docs: list[dict] = []
    for resource in spec.get("resources", []):
        path = (directory / resource).resolve()
        docs += render_kustomization(path) if path.is_dir() else [d for d in yaml.safe_load_all(path.read_text()) if d]
    for label in spec.get("labels", []):
        for doc in docs:
            doc.setdefault("metadata", {}).setdefault("labels", {}).update(label["pairs"])
    for patch in spec.get("patches", []):
        target = patch["target"]
        ops = yaml.safe_load(patch["patch"])
        hits = [
            i for i, d in enumerate(docs) if d["kind"] == target["kind"] and d["metadata"]["name"] == target["name"]
        ]
        assert hits, f"patch target {target} matches nothing"
        for i in hits:
            docs[i] = jsonpatch.apply_patch(docs[i], ops)
    for image in spec.get("images", []):
        for doc in docs:
            for container in _containers(doc):
                name, _, tag = container["image"].partition(":")
                if name == image["name"]:
                    container["image"] = f"{image.get('newName', name)}:{image.get('newTag', tag)}"
    if namespace := spec.get("namespace"):
        for doc in docs:
            if doc["kind"] not in CLUSTER_SCOPED:
                doc["metadata"]["namespace"] = namespace
    return docs


CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding"}


def _containers(doc: dict) -> list[dict]:
    pod = doc.get("spec", {}).get("template", {}).get("spec", {})
    return pod.get("containers", []) + pod.get("initContainers", [])


def _by_kind(docs: list[dict]) -> dict[tuple[str, str], dict]:
    return {(d["kind"], d["metadata"]["name"]): d for d in docs}


OVERLAYS = ["cpu", "gpu"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_k8s_overlay_validates_against_the_kubernetes_schemas(overlay):
    docs = render_kustomization(ROOT / "k8s/overlays" / overlay)
    kinds = {d["kind"] for d in docs}
    assert {
        "Namespace",
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "ConfigMap",
        "StatefulSet",
        "ServiceMonitor",
        "PrometheusRule",
    } <= kinds
    for doc in docs:
        if doc["apiVersion"].startswith("monitoring.coreos.com/"):
            continue  # Prometheus Operator CRDs: no schema in Kubernetes itself; their content is checked below
        kubernetes_validate.validate(copy.deepcopy(doc), K8S_VERSION, strict=True)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_k8s_deployment_drains_probes_and_wires_up(overlay):
    objs = _by_kind(render_kustomization(ROOT / "k8s/overlays" / overlay))
    deployment = objs[("Deployment", "unirank")]
    pod = deployment["spec"]["template"]
    container = pod["spec"]["containers"][0]
    settings = objs[("ConfigMap", "unirank-settings")]["data"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    pre_stop = float(container["lifecycle"]["preStop"]["exec"]["command"][-1])
    shutdown = float(settings["UNIRANK_DRAIN_S"]) + float(settings["UNIRANK_GRACEFUL_SHUTDOWN_S"])
    assert pre_stop + shutdown < pod["spec"]["terminationGracePeriodSeconds"]
    assert container["resources"]["requests"] and container["resources"]["limits"]
    # every setting in the ConfigMap is one the service reads (a typo would be silently ignored)
    known = {f"UNIRANK_{name.upper()}" for name in Settings.model_fields} | {"REDIS_URL"}
    assert set(settings) <= known, set(settings) - known
    # the Service, the PDB and the ServiceMonitor select the ranker pods; the HPA scales the Deployment
    labels = pod["metadata"]["labels"]
    for kind in ("Service", "PodDisruptionBudget", "ServiceMonitor"):
        selector = objs[(kind, "unirank")]["spec"]["selector"]
        selector = selector.get("matchLabels", selector)
        assert selector.items() <= labels.items(), kind
    assert objs[("HorizontalPodAutoscaler", "unirank")]["spec"]["scaleTargetRef"]["name"] == "unirank"
    for url in (settings["REDIS_URL"], settings["UNIRANK_CACHE_REDIS_URL"]):
        assert ("Service", url.split("//")[1].split(":")[0]) in objs
    # accepted state never evicted, the cache evictable (docs/resilience.md, "Redis memory")
    state_args = objs[("StatefulSet", "unirank-redis")]["spec"]["template"]["spec"]["containers"][0]["args"]
    cache_args = objs[("Deployment", "unirank-redis-cache")]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert state_args[state_args.index("--maxmemory-policy") + 1] == "noeviction"
    assert cache_args[cache_args.index("--maxmemory-policy") + 1] == "allkeys-lru"
    gpu = container["resources"]["limits"].get("nvidia.com/gpu")
    if overlay == "gpu":
        assert (
            gpu == 1 and settings["UNIRANK_EXECUTION_PROVIDER"] == "cuda" and container["image"].endswith(":gpu-demo")
        )
    else:
        assert gpu is None and settings["UNIRANK_EXECUTION_PROVIDER"] == "cpu"


@pytest.mark.skipif(
    shutil.which("kubectl") is None,
    reason="kubectl not installed; the renderer above is checked against it where it is",
)
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_renderer_agrees_with_kubectl_kustomize(overlay):
    out = subprocess.run(["kubectl", "kustomize", str(ROOT / "k8s/overlays" / overlay)], capture_output=True, text=True)
    if out.returncode != 0:
        pytest.skip(f"kubectl kustomize failed here: {out.stderr.strip()[:200]}")
    theirs = _by_kind([d for d in yaml.safe_load_all(out.stdout) if d])
    ours = _by_kind(render_kustomization(ROOT / "k8s/overlays" / overlay))
    assert ours == theirs


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_k8s_overlay_creates_its_namespace_serves_a_bundle_and_never_blocks_a_drain(overlay):
    spec = yaml.safe_load((ROOT / "k8s/overlays" / overlay / "kustomization.yaml").read_text())
    objs = _by_kind(render_kustomization(ROOT / "k8s/overlays" / overlay))
    assert ("Namespace", spec["namespace"]) in objs
    # the pods get their start-up bundle: baked into the image (a Dockerfile target that copies /bundle)
    # or from an object-store URL
    settings = objs[("ConfigMap", "unirank-settings")]["data"]
    tag = objs[("Deployment", "unirank")]["spec"]["template"]["spec"]["containers"][0]["image"].rsplit(":", 1)[1]
    stages = dockerfile_stages()
    baked = tag in stages and "/bundle" in stages[tag] and settings["UNIRANK_BUNDLE"] == "/bundle"
    assert baked or "://" in settings["UNIRANK_BUNDLE"], (tag, settings["UNIRANK_BUNDLE"])
    # a node drain evicts one ranker at a time even when the HPA keeps a single one
    pdb = objs[("PodDisruptionBudget", "unirank")]["spec"]
    min_replicas = objs[("HorizontalPodAutoscaler", "unirank")]["spec"]["minReplicas"]
    assert pdb.get("maxUnavailable", 0) >= 1 or pdb.get("minAvailable", min_replicas) < min_replicas
