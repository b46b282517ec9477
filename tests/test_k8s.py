"""deploy/k8s, checked offline: every overlay renders, validates against the Kubernetes schemas (custom resources
against their CRDs' published schemas), and keeps the rules its comments state, read from the rendered YAML.

Also the Prometheus rules (promtool unit tests) and the prometheus-adapter rule the autoscaler depends on.
The real runs are scripts/kube-check.sh (podman kube play) and scripts/failover-check.sh (replicas under load).
"""

from __future__ import annotations

import copy
import json
import re

import pytest
import yaml
from commands import REPO, run, tool

K8S = REPO / "deploy/k8s"
OVERLAYS = sorted(path.parent.name for path in (K8S / "overlays").glob("*/kustomization.yaml"))
CUSTOM_GROUPS = ("monitoring.coreos.com/", "keda.sh/")
KUBERNETES_VERSIONS = ["1.30.0", "latest"]  # the oldest with every field used here, and the newest schema known
MARGIN_S = 5  # the least time the grace period must leave for the process to exit after its drain


@pytest.fixture(scope="session")
def rendered() -> dict[str, list[dict]]:
    kubectl = tool("kubectl")
    out = {}
    for overlay in OVERLAYS:
        result = run(kubectl, "kustomize", str(K8S / "overlays" / overlay))
        assert result.returncode == 0, f"{overlay}: {result.stderr}"
        out[overlay] = [document for document in yaml.safe_load_all(result.stdout) if document]
    return out


def objects(rendered, overlay: str, kind: str) -> list[dict]:
    return [item for item in rendered[overlay] if item["kind"] == kind]


def one(rendered, overlay: str, kind: str) -> dict:
    (found,) = objects(rendered, overlay, kind)
    return found


def container(deployment: dict) -> dict:
    (found,) = [c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "roberta"]
    return found


def env(deployment: dict) -> dict[str, dict]:
    return {item["name"]: item for item in container(deployment).get("env", [])}


def env_value(deployment: dict, name: str) -> str:
    return env(deployment)[name]["value"]


def prestop_sleep_s(deployment: dict) -> float:
    command = container(deployment)["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep" and len(command) == 2, command
    return float(command[1])


def test_there_are_overlays_for_cpu_gpu_keda_and_a_model_volume():
    assert {"cpu", "gpu", "keda", "models-volume"} <= set(OVERLAYS)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_the_service_with_one_autoscaler(rendered, overlay):
    kinds = [item["kind"] for item in rendered[overlay]]
    for kind in ("Namespace", "Deployment", "Service", "PodDisruptionBudget", "ServiceMonitor", "PrometheusRule"):
        assert kinds.count(kind) == 1, (overlay, kind, kinds)
    # Two autoscalers on one Deployment fight; KEDA makes its own HPA.
    assert kinds.count("HorizontalPodAutoscaler") + kinds.count("ScaledObject") == 1, kinds
    namespace = one(rendered, overlay, "Namespace")["metadata"]["name"]
    for item in rendered[overlay]:
        if item["kind"] != "Namespace":
            assert item["metadata"]["namespace"] == namespace, item["kind"]


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_builtin_objects_validate_against_the_kubernetes_schemas(rendered, overlay, version):
    import kubernetes_validate
    from kubernetes_validate.utils import latest_version

    version = latest_version() if version == "latest" else version
    builtin = [item for item in rendered[overlay] if not item["apiVersion"].startswith(CUSTOM_GROUPS)]
    assert builtin
    for item in builtin:
        # strict: an unknown field (a typo, or one newer than `version`) is an error too
        kubernetes_validate.validate(item, version, strict=True)


def test_the_schema_validation_refuses_a_broken_object(rendered):
    import kubernetes_validate

    deployment = copy.deepcopy(one(rendered, "cpu", "Deployment"))
    container(deployment)["readinessProbe"]["periodSecond"] = 5  # a typo
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, "1.30.0", strict=True)


@pytest.fixture(scope="session")
def validate_custom_resources():
    """Runs tests/k8s/validate-crds.mjs (kubernetes-models' compiled CRD schemas; installed here with `npm ci`)."""
    node, npm = tool("node"), tool("npm")
    folder = REPO / "tests/k8s"
    if not (folder / "node_modules").is_dir():
        result = run(npm, "ci", "--no-audit", "--no-fund", cwd=folder, timeout=300)
        assert result.returncode == 0, result.stderr

    def validate(items: list[dict]) -> list[dict]:
        result = run(node, "validate-crds.mjs", cwd=folder, stdin=json.dumps(items))
        assert result.returncode == 0, result.stdout + result.stderr
        return [json.loads(line) for line in result.stdout.splitlines()]

    return validate


def test_custom_resources_validate_against_their_crds_published_schemas(rendered, validate_custom_resources):
    custom = [item for overlay in OVERLAYS for item in rendered[overlay] if item["apiVersion"].startswith(CUSTOM_GROUPS)]
    assert {item["kind"] for item in custom} == {"ServiceMonitor", "PrometheusRule", "ScaledObject"}
    for verdict in validate_custom_resources(custom):
        assert verdict["error"] is None, verdict


def test_the_crd_validation_refuses_a_broken_object(rendered, validate_custom_resources):
    monitor = copy.deepcopy(one(rendered, "cpu", "ServiceMonitor"))
    monitor["spec"]["endpoints"][0]["interval"] = "15 seconds"
    scaled = copy.deepcopy(one(rendered, "keda", "ScaledObject"))
    scaled["spec"]["triggers"][0]["metadata"]["threshold"] = 8  # KEDA's metadata values are strings
    verdicts = validate_custom_resources([monitor, scaled])
    assert "interval" in verdicts[0]["error"] and "threshold" in verdicts[1]["error"], verdicts


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_grace_period_covers_the_prestop_sleep_the_delay_and_the_drain(rendered, overlay):
    deployment = one(rendered, overlay, "Deployment")
    grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    sleep = prestop_sleep_s(deployment)
    delay = float(env_value(deployment, "ROBERTA_SHUTDOWN_DELAY_S"))
    timeout = float(env_value(deployment, "ROBERTA_SHUTDOWN_TIMEOUT_S"))
    assert sleep == delay, "the preStop sleep and ROBERTA_SHUTDOWN_DELAY_S are meant to match"
    assert grace >= sleep + delay + timeout + MARGIN_S, (grace, sleep, delay, timeout)
    # A request admitted just before the drain must be able to finish within it.
    assert float(env_value(deployment, "ROBERTA_REQUEST_TIMEOUT_S")) <= timeout


@pytest.fixture(scope="module")
def probe_server(exported_classifier):
    from app.settings import Settings
    from server import ServerThread

    with ServerThread(Settings(classify_model=exported_classifier, precision="fp32")) as server:
        yield server


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes_ask_the_server_the_right_questions(rendered, overlay, probe_server):
    import httpx

    deployment = one(rendered, overlay, "Deployment")
    spec = container(deployment)
    ports = {port["name"]: port["containerPort"] for port in spec["ports"]}
    assert ports["http"] == int(env_value(deployment, "ROBERTA_PORT"))
    # Which path answers which question is the server's to say: its OpenAPI summaries.
    operations = httpx.get(f"{probe_server.url}/openapi.json").json()["paths"]
    summaries = {path: item["get"]["summary"] for path, item in operations.items() if "get" in item}
    for probe, meaning in (("startupProbe", "Readiness"), ("readinessProbe", "Readiness"), ("livenessProbe", "Liveness")):
        check = spec[probe]["httpGet"]
        assert ports.get(check["port"], check["port"]) == ports["http"], probe
        assert summaries[check["path"]].startswith(meaning), (probe, check["path"], summaries[check["path"]])
        assert httpx.get(f"{probe_server.url}{check['path']}").status_code == 200, probe
    # Liveness must not depend on readiness: a draining or warming pod is alive, and must not be restarted.
    assert spec["livenessProbe"]["httpGet"]["path"] != spec["readinessProbe"]["httpGet"]["path"]


def dockerfile_user(target: str) -> str:
    stages = re.split(r"^FROM ", (REPO / "Dockerfile").read_text(), flags=re.M)
    (stage,) = [text for text in stages if re.match(rf"\S+ AS {target}\s", text)]
    (user,) = re.findall(r"^USER (\S+)", stage, flags=re.M)
    return user


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_pod_runs_unprivileged_on_a_read_only_root(rendered, overlay):
    deployment = one(rendered, overlay, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    context = container(deployment)["securityContext"]
    assert context["runAsNonRoot"] is True and context["readOnlyRootFilesystem"] is True
    assert context["allowPrivilegeEscalation"] is False and context["capabilities"]["drop"] == ["ALL"]
    target = "gpu" if container(deployment)["image"].endswith(":gpu") else "cpu"
    assert str(context["runAsUser"]) == dockerfile_user(target)
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_roberta_variable_is_a_setting(rendered, overlay):
    from app.settings import Settings

    known = {f"ROBERTA_{name.upper()}" for name in Settings.model_fields}
    names = set(env(one(rendered, overlay, "Deployment")))
    assert names and names <= known, names - known


@pytest.mark.parametrize("overlay", [overlay for overlay in OVERLAYS if overlay != "gpu"])  # a GPU runs one batch at a time
def test_onnx_runtime_threads_follow_the_cpu_request(rendered, overlay):
    deployment = one(rendered, overlay, "Deployment")
    source = env(deployment)["ROBERTA_CONCURRENT_RUNS"]["valueFrom"]["resourceFieldRef"]
    assert source["resource"] == "requests.cpu" and source["containerName"] == container(deployment)["name"]
    assert env(deployment)["ROBERTA_INTRA_OP_THREADS"]["value"] == "1"  # one thread per run, a run per core
    assert "cpu" in container(deployment)["resources"]["requests"]


def selects(selector: dict, labels: dict) -> bool:
    return bool(selector) and all(labels.get(key) == value for key, value in selector.items())


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_service_budget_and_monitor_select_the_pods(rendered, overlay):
    deployment = one(rendered, overlay, "Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    service = one(rendered, overlay, "Service")
    assert selects(service["spec"]["selector"], pod_labels)
    assert selects(one(rendered, overlay, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"], pod_labels)
    assert selects(deployment["spec"]["selector"]["matchLabels"], pod_labels)
    port_names = {port["name"] for port in container(deployment)["ports"]}
    assert {port["targetPort"] for port in service["spec"]["ports"]} <= port_names
    monitor = one(rendered, overlay, "ServiceMonitor")
    assert selects(monitor["spec"]["selector"]["matchLabels"], service["metadata"]["labels"])
    assert {e["port"] for e in monitor["spec"]["endpoints"]} <= {port["name"] for port in service["spec"]["ports"]}
    assert {e["path"] for e in monitor["spec"]["endpoints"]} == {"/metrics"}


def adapter_rule() -> dict:
    (rule,) = yaml.safe_load((K8S / "prometheus-adapter/values.yaml").read_text())["rules"]["custom"]
    return rule


def exported_gauges() -> set[str]:
    from app.serving.metrics import Metrics

    return {family.name for family in Metrics().registry.collect() if family.type == "gauge"}


@pytest.mark.parametrize("overlay", [o for o in OVERLAYS if o != "keda"])
def test_the_hpa_scales_the_deployment_on_the_adapters_queue_metric(rendered, overlay):
    deployment = one(rendered, overlay, "Deployment")
    hpa = one(rendered, overlay, "HorizontalPodAutoscaler")
    assert "replicas" not in deployment["spec"], "the autoscaler owns the count"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": deployment["metadata"]["name"]}
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods" and metric["pods"]["target"]["type"] == "AverageValue"
    rule = adapter_rule()
    assert metric["pods"]["metric"]["name"] == rule["name"]["as"]
    series = re.match(r"(\w+)\{", rule["seriesQuery"]).group(1)
    assert re.fullmatch(rule["name"]["matches"], series) and series in exported_gauges()
    # CPU pods are cheap: keep two, so that the one the PDB lets go leaves another serving (GPU: one is allowed).
    assert hpa["spec"]["minReplicas"] >= (1 if overlay == "gpu" else 2)
    assert hpa["spec"]["maxReplicas"] > hpa["spec"]["minReplicas"]
    depth = float(metric["pods"]["target"]["averageValue"])
    assert 0 < depth < float(env_value(deployment, "ROBERTA_MAX_BATCH_SIZE")), "scale before a whole batch waits"


def test_keda_scales_on_the_same_queue_in_its_own_namespace(rendered):
    deployment = one(rendered, "keda", "Deployment")
    scaled = one(rendered, "keda", "ScaledObject")
    assert "replicas" not in deployment["spec"]
    assert scaled["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    (trigger,) = scaled["spec"]["triggers"]
    query = trigger["metadata"]["query"]
    assert trigger["type"] == "prometheus" and trigger["metricType"] == "AverageValue"
    assert f'namespace="{deployment["metadata"]["namespace"]}"' in query
    assert f'service="{one(rendered, "keda", "Service")["metadata"]["name"]}"' in query
    assert adapter_rule()["name"]["as"] in query
    cpu_target = one(rendered, "cpu", "HorizontalPodAutoscaler")["spec"]["metrics"][0]["pods"]["target"]["averageValue"]
    assert trigger["metadata"]["threshold"] == cpu_target, "KEDA and the HPA aim at the same depth per pod"


def test_the_gpu_overlay_asks_for_a_gpu_and_runs_the_gpu_image(rendered):
    spec = container(one(rendered, "gpu", "Deployment"))
    assert spec["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert spec["image"].endswith(":gpu") and re.search(r"^FROM .* AS gpu$", (REPO / "Dockerfile").read_text(), flags=re.M)
    tolerations = one(rendered, "gpu", "Deployment")["spec"]["template"]["spec"]["tolerations"]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in tolerations
    # The base's one run per requested core is for CPUs: on the GPU the service's own rule runs one at a time.
    assert env(one(rendered, "gpu", "Deployment"))["ROBERTA_CONCURRENT_RUNS"] == {"name": "ROBERTA_CONCURRENT_RUNS", "value": "0"}


def test_the_model_volume_is_the_model_repository(rendered):
    deployment = one(rendered, "models-volume", "Deployment")
    claim = one(rendered, "models-volume", "PersistentVolumeClaim")
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    (mount,) = [m for m in container(deployment)["volumeMounts"] if "persistentVolumeClaim" in volumes[m["name"]]]
    assert volumes[mount["name"]]["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    assert mount["readOnly"] is True
    assert env_value(deployment, "ROBERTA_MODEL_REPOSITORY") == mount["mountPath"]
    # The image's embedded models are left out (an empty setting means unset).
    assert env_value(deployment, "ROBERTA_CLASSIFY_MODEL") == env_value(deployment, "ROBERTA_FILL_MASK_MODEL") == ""


def test_the_prometheus_rule_holds_the_rules_file(rendered):
    rules = yaml.safe_load((REPO / "deploy/prometheus/rules.yml").read_text())
    for overlay in OVERLAYS:
        assert one(rendered, overlay, "PrometheusRule")["spec"] == rules, "run python scripts/k8s_rules.py"


def test_promtool_unit_tests_of_the_rules_pass():
    result = run(tool("promtool"), "test", "rules", "tests/prometheus/rules_test.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_adapters_query_gives_each_pod_its_largest_queue_of_the_last_minute(tmp_path):
    """The adapter's metricsQuery as the adapter expands it for an HPA asking about two pods, run by promtool."""
    rule = adapter_rule()
    query = (
        rule["metricsQuery"]
        .replace("<<.Series>>", "roberta_queue_depth")
        .replace("<<.LabelMatchers>>", 'namespace="roberta",pod=~"pod-a|pod-b"')
        .replace("<<.GroupBy>>", "pod")
    )
    assert "<<" not in query
    series = {  # two models in pod-a, one in pod-b, one pod of another namespace; a reading every 15 s
        'roberta_queue_depth{namespace="roberta",pod="pod-a",model="sst2"}': "0 4 12 3 0",
        'roberta_queue_depth{namespace="roberta",pod="pod-a",model="ner"}': "1 1 2 1 1",
        'roberta_queue_depth{namespace="roberta",pod="pod-b",model="sst2"}': "0 0 5 0 0",
        'roberta_queue_depth{namespace="other",pod="pod-a",model="sst2"}': "99 99 99 99 99",
    }
    empty = tmp_path / "none.yml"
    empty.write_text("groups: []\n")
    test = {
        "rule_files": [str(empty)],
        "tests": [{
            "interval": "15s",
            "input_series": [{"series": name, "values": values} for name, values in series.items()],
            "promql_expr_test": [{
                "expr": query,
                "eval_time": "1m",
                "exp_samples": [{"labels": '{pod="pod-a"}', "value": 14}, {"labels": '{pod="pod-b"}', "value": 5}],
            }],
        }],
    }
    (tmp_path / "adapter_test.yml").write_text(yaml.safe_dump(test))
    result = run(tool("promtool"), "test", "rules", str(tmp_path / "adapter_test.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
