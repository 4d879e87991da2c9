"""The Kubernetes manifests under deploy/k8s render, validate against the Kubernetes schemas, and agree
with each other and with Settings; the gateway image definition has the shape the manifests assume.

No kubectl or kustomize here, so the kustomization is rendered in Python: the subset of kustomize this
project uses (``resources``, ``components``, ``namespace``, ``labels``/``commonLabels``, ``images``).
Any other kustomization field fails the test, so the renderer cannot silently ignore what kustomize
would apply. Objects are validated with ``kubernetes-validate`` (the Kubernetes OpenAPI schemas,
shipped in the wheel; strict: unknown fields are errors); Strimzi's KafkaTopic, whose CRD is not in
those schemas, against an excerpt of its CRD schema.

Each structural check is a function that raises AssertionError; ``test_checks_catch_broken_manifests``
feeds them broken copies so that every check is known to be able to fail.
"""

from __future__ import annotations

import copy
import re
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import kubernetes_validate
import pytest
import yaml

from flywheel.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "k8s"
BASE = K8S / "base"
OVERLAY = K8S / "overlays" / "example"
SECRET_EXAMPLE = K8S / "examples" / "secret.example.yaml"
K8S_VERSION = "1.33"  # oldest Kubernetes these manifests target (preStop `sleep` needs >= 1.30)

Obj = dict[str, Any]
KUSTOMIZE_FIELDS = {"apiVersion", "kind", "namespace", "labels", "commonLabels", "images", "resources", "components"}
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "PersistentVolume", "StorageClass"}
WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet", "Job"}
SECRET_NAME = "flywheel-secrets"
SETTINGS_MAP = "flywheel-settings"
# Environment names that are not Settings fields but are read elsewhere on purpose.
NON_SETTING_ENV = {"FLYWHEEL_ADMIN_KEY"}  # the operator CLI's --key (flywheel/commands/policy.py)

# Excerpt of Strimzi's KafkaTopic CRD (kafka.strimzi.io/v1beta2) openAPIV3Schema: the fields used here.
KAFKA_TOPIC_SCHEMA: Obj = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "kafka.strimzi.io/v1beta2"},
        "kind": {"const": "KafkaTopic"},
        "metadata": {
            "type": "object",
            "required": ["name", "labels"],
            "properties": {"labels": {"type": "object", "required": ["strimzi.io/cluster"]}},
        },
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "required": ["partitions", "replicas"],
            "properties": {
                "topicName": {"type": "string"},
                "partitions": {"type": "integer", "minimum": 1},
                "replicas": {"type": "integer", "minimum": 1, "maximum": 32767},
                "config": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
            },
        },
    },
}


# --- rendering ------------------------------------------------------------------------------------
def _load_yaml(path: Path) -> list[Obj]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def _split_image(image: str) -> tuple[str, str | None]:
    """``registry:5000/a/b:tag`` → (``registry:5000/a/b``, ``tag``); digests are kept with the name."""
    slash = image.rfind("/")
    colon = image.rfind(":")
    if colon > slash and "@" not in image:
        return image[:colon], image[colon + 1 :]
    return image, None


def _pod_specs(obj: Obj) -> Iterator[Obj]:
    if obj["kind"] in WORKLOADS:
        yield obj["spec"]["template"]["spec"]


def _set_labels(obj: Obj, pairs: dict[str, str], selectors: bool, templates: bool) -> None:
    obj.setdefault("metadata", {}).setdefault("labels", {}).update(pairs)
    if templates and obj["kind"] in WORKLOADS:
        obj["spec"]["template"].setdefault("metadata", {}).setdefault("labels", {}).update(pairs)
    if selectors:
        if obj["kind"] in WORKLOADS | {"PodDisruptionBudget"}:
            obj["spec"].setdefault("selector", {}).setdefault("matchLabels", {}).update(pairs)
        if obj["kind"] == "Service":
            obj["spec"].setdefault("selector", {}).update(pairs)


def _apply(kustomization: Obj, objects: list[Obj]) -> None:
    for obj in objects:
        for entry in kustomization.get("labels", []):
            _set_labels(obj, entry["pairs"], entry.get("includeSelectors", False), entry.get("includeTemplates", False))
        if kustomization.get("commonLabels"):
            _set_labels(obj, kustomization["commonLabels"], True, True)
        if kustomization.get("namespace") and obj["kind"] not in CLUSTER_SCOPED:
            obj["metadata"]["namespace"] = kustomization["namespace"]
        for pod in _pod_specs(obj):
            for container in pod.get("initContainers", []) + pod["containers"]:
                name, tag = _split_image(container["image"])
                for image in kustomization.get("images", []):
                    if image["name"] == name:
                        name, tag = image.get("newName", name), image.get("newTag", tag)
                container["image"] = f"{name}:{tag}" if tag else name


def render(directory: Path, kind: str = "Kustomization") -> list[Obj]:
    """The objects ``kustomize build directory`` would print, for the subset of kustomize used here."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    assert kustomization["kind"] == kind, f"{directory}: expected a {kind}"
    unknown = set(kustomization) - KUSTOMIZE_FIELDS
    assert not unknown, f"{directory}/kustomization.yaml uses {sorted(unknown)}: teach render() first"
    objects: list[Obj] = []
    for entry in kustomization.get("resources", []):
        path = (directory / entry).resolve()
        objects += render(path) if path.is_dir() else _load_yaml(path)
    for entry in kustomization.get("components", []):
        objects += render((directory / entry).resolve(), kind="Component")
    _apply(kustomization, objects)
    keys = [(o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]) for o in objects]
    assert len(keys) == len(set(keys)), f"duplicate objects in {directory}"
    return objects


# --- lookups --------------------------------------------------------------------------------------
def one(objects: list[Obj], kind: str, name: str) -> Obj:
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def settings_map(objects: list[Obj]) -> dict[str, str]:
    return one(objects, "ConfigMap", SETTINGS_MAP)["data"]


def container(deployment: Obj) -> Obj:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1, f"{deployment['metadata']['name']}: one container expected"
    return containers[0]


def flag(args: list[str], name: str) -> str:
    values = [a.split("=", 1)[1] for a in args if a.startswith(f"{name}=")]
    assert len(values) == 1, f"{name}=... expected once in {args}"
    return values[0]


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def flywheel_image(directory: Path) -> str:
    """The image name the Flywheel processes run, after the kustomization's ``images`` rewrite."""
    return next(i["newName"] for i in yaml.safe_load((directory / "kustomization.yaml").read_text())["images"])


def flywheel_deployments(objects: list[Obj]) -> list[Obj]:
    names = {flywheel_image(BASE), flywheel_image(OVERLAY)}
    return [
        o for o in objects
        if o["kind"] == "Deployment" and _split_image(container(o)["image"])[0] in names
    ]  # fmt: skip


# --- checks (each raises AssertionError) ----------------------------------------------------------
def check_schema(obj: Obj) -> None:
    if obj["kind"] == "KafkaTopic":
        try:
            jsonschema.validate(obj, KAFKA_TOPIC_SCHEMA)
        except jsonschema.ValidationError as exc:
            where = "/".join(str(p) for p in exc.path)
            raise AssertionError(f"KafkaTopic/{obj['metadata']['name']} at {where}: {exc.message}") from None
        return
    try:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        where = "/".join(str(p) for p in exc.path)
        raise AssertionError(f"{obj['kind']}/{obj['metadata']['name']} at {where}: {exc.message}") from None
    except kubernetes_validate.SchemaNotFoundError as exc:
        raise AssertionError(exc.message) from None


_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
_DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")


def check_names(obj: Obj) -> None:
    name = obj["metadata"]["name"]
    pattern = _DNS_LABEL if obj["kind"] in {"Service", "Namespace"} else _DNS_SUBDOMAIN
    assert pattern.match(name), f"{obj['kind']} name {name!r} is not a valid Kubernetes name"


def check_settings(objects: list[Obj], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Every FLYWHEEL_* name given to a pod is a real setting, and the ConfigMap's values parse."""
    known = {f"FLYWHEEL_{name.upper()}" for name in Settings.model_fields}
    data = settings_map(objects)
    unknown = {k for k in data if k not in known}
    assert not unknown, f"ConfigMap keys that are no setting (ignored at run time): {sorted(unknown)}"
    for deployment in flywheel_deployments(objects):
        for env in container(deployment).get("env", []):
            name = env["name"]
            assert name in known | NON_SETTING_ENV, f"{deployment['metadata']['name']}: {name} is no setting"
    monkeypatch.chdir(tmp_path)  # no .env / flywheel.toml of the checkout
    for key, value in data.items():
        monkeypatch.setenv(key, value)
    settings = Settings()
    assert settings.port == int(data["FLYWHEEL_PORT"]) and settings.host == data["FLYWHEEL_HOST"]
    if settings.safety_enabled and "classifier" in settings.safety_input_filters:
        # Nothing trains the head in the cluster (the models volume is read-only): without it a gateway
        # must refuse to start rather than serve on the pattern filters alone (safety/chain.py).
        assert settings.safety_classifier_required, "set FLYWHEEL_SAFETY_CLASSIFIER_REQUIRED=true: fail closed"


def check_env_references(objects: list[Obj], secret_keys: set[str]) -> None:
    """Each Flywheel container reads the settings ConfigMap, and its secrets from the Secret only."""
    deployments = flywheel_deployments(objects)
    assert {d["metadata"]["name"] for d in deployments} >= {
        "flywheel-gateway", "flywheel-consumer", "flywheel-canary-controller"
    }  # fmt: skip
    one(objects, "ConfigMap", SETTINGS_MAP)
    for deployment in deployments:
        c, name = container(deployment), deployment["metadata"]["name"]
        assert {"configMapRef": {"name": SETTINGS_MAP}} in c.get("envFrom", []), f"{name}: no envFrom {SETTINGS_MAP}"
        env = {e["name"]: e for e in c.get("env", [])}
        assert "FLYWHEEL_DATABASE_URL" in env, f"{name}: no FLYWHEEL_DATABASE_URL"
        for e in env.values():
            if e["name"].endswith(("_KEYS", "_KEY", "_SECRET", "_SALT", "DATABASE_URL")):
                ref = e.get("valueFrom", {}).get("secretKeyRef")
                assert ref, f"{name}: {e['name']} must come from a Secret, not a literal"
                assert ref["name"] == SECRET_NAME and ref["key"] in secret_keys, f"{name}: {e['name']} -> {ref}"


def check_gateway(objects: list[Obj]) -> None:
    settings = settings_map(objects)
    gateway = one(objects, "Deployment", "flywheel-gateway")
    c = container(gateway)
    assert c["args"] == ["serve"]
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports.get("http") == int(settings["FLYWHEEL_PORT"]), "container port != FLYWHEEL_PORT"

    def probe_port(probe: Obj) -> int:
        port = probe["httpGet"]["port"]
        return ports[port] if isinstance(port, str) else port

    probes = (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz"), ("startupProbe", "/healthz"))
    for probe_name, path in probes:
        probe = c[probe_name]
        assert probe["httpGet"]["path"] == path, f"{probe_name} must GET {path}"
        assert probe_port(probe) == ports["http"], f"{probe_name} must hit the container port"

    service = one(objects, "Service", "flywheel-gateway")
    pod_labels = gateway["spec"]["template"]["metadata"]["labels"]
    assert selects(service["spec"]["selector"], pod_labels), "gateway Service does not select the gateway pods"
    assert selects(gateway["spec"]["selector"]["matchLabels"], pod_labels)
    target = service["spec"]["ports"][0]["targetPort"]
    assert (ports.get(target) if isinstance(target, str) else target) == ports["http"]
    others = [o for o in objects if o["kind"] == "Deployment" and o is not gateway]
    assert not any(selects(service["spec"]["selector"], o["spec"]["template"]["metadata"]["labels"]) for o in others)

    hpa = one(objects, "HorizontalPodAutoscaler", "flywheel-gateway")
    ref = hpa["spec"]["scaleTargetRef"]
    assert (ref["apiVersion"], ref["kind"], ref["name"]) == ("apps/v1", "Deployment", "flywheel-gateway")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert any(m["type"] == "Resource" and m["resource"]["name"] == "cpu" for m in hpa["spec"]["metrics"])
    assert hpa["spec"]["minReplicas"] >= 2, "N >= 2 gateways"
    assert "replicas" not in gateway["spec"], "the HPA owns the gateway replica count"
    assert c["resources"]["requests"].get("cpu"), "CPU utilisation needs a CPU request"

    pdb = one(objects, "PodDisruptionBudget", "flywheel-gateway")
    assert selects(pdb["spec"]["selector"]["matchLabels"], pod_labels)
    assert pdb["spec"]["minAvailable"] < hpa["spec"]["minReplicas"], "a PDB at minReplicas blocks every drain"

    var_dir = settings["FLYWHEEL_VAR_DIR"]
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    models = next(path for path, name in mounts.items() if name == "models")
    assert settings["FLYWHEEL_SAFETY_CLASSIFIER_PATH"].startswith(models + "/"), "safety head on the models volume"
    volumes = {v["name"]: v for v in gateway["spec"]["template"]["spec"]["volumes"]}
    assert var_dir in mounts and "emptyDir" in volumes[mounts[var_dir]], "FLYWHEEL_VAR_DIR must be a writable volume"


def check_controller(objects: list[Obj]) -> None:
    controller = one(objects, "Deployment", "flywheel-canary-controller")
    assert controller["spec"]["replicas"] == 1, "exactly one canary controller"
    assert controller["spec"]["strategy"]["type"] == "Recreate", "never two controllers during a rollout"
    args = container(controller)["args"]
    assert args[:2] == ["canary", "watch"]
    url = args[args.index("--url") + 1]
    service = one(objects, "Service", "flywheel-gateway")
    assert url == f"http://{service['metadata']['name']}:{service['spec']['ports'][0]['port']}"
    # Error rates: every gateway pod's /metrics, through a headless Service that selects them all.
    metrics_urls = settings_map(objects)["FLYWHEEL_CANARY_GATEWAY_METRICS_URLS"].split(",")
    gateway = one(objects, "Deployment", "flywheel-gateway")
    for metrics_url in metrics_urls:
        parts = urlsplit(metrics_url)
        assert parts.scheme == "dns+http" and parts.path == "/metrics", f"{metrics_url}: one URL per pod needs dns+"
        pods = one(objects, "Service", parts.hostname or "")
        assert pods["spec"].get("clusterIP") == "None", f"{pods['metadata']['name']} must be headless"
        assert selects(pods["spec"]["selector"], gateway["spec"]["template"]["metadata"]["labels"])
        assert parts.port == pods["spec"]["ports"][0]["port"]


def check_consumer(objects: list[Obj]) -> None:
    settings = settings_map(objects)
    partitions = int(settings["FLYWHEEL_TOPIC_PARTITIONS"])
    consumer = one(objects, "Deployment", "flywheel-consumer")
    assert container(consumer)["args"] == ["consume"]
    assert 1 <= consumer["spec"]["replicas"] <= partitions, "consumer replicas beyond the partitions sit idle"
    topics = [o for o in objects if o["kind"] == "KafkaTopic"]
    if topics:  # the Strimzi component is rendered: topics match the settings
        wanted = {settings[f"FLYWHEEL_TOPIC_{t}"] for t in ("INTERACTIONS", "FEEDBACK", "DEADLETTER")}
        assert {t["spec"].get("topicName", t["metadata"]["name"]) for t in topics} == wanted
        for topic in topics:
            assert topic["spec"]["partitions"] == partitions, f"{topic['metadata']['name']}: partitions"
            assert topic["spec"]["replicas"] >= 3 and int(topic["spec"]["config"]["min.insync.replicas"]) >= 2


def check_vllm(objects: list[Obj]) -> None:
    """The stable server agrees with the gateway's settings and sees artifacts at the gateway's paths."""
    settings = settings_map(objects)
    vllm = one(objects, "Deployment", "flywheel-vllm")
    c = container(vllm)
    args = c["args"]
    assert "--enable-lora" in args
    assert flag(args, "--max-loras") == settings["FLYWHEEL_VLLM_MAX_LORAS"]
    assert flag(args, "--max-lora-rank") == settings["FLYWHEEL_VLLM_MAX_LORA_RANK"]
    assert flag(args, "--served-model-name") == settings["FLYWHEEL_SEED_MODEL_NAME"]
    assert args[0] == settings["FLYWHEEL_SEED_MODEL_PATH"], "vLLM must serve the seed the registry hashes"
    assert {"name": "VLLM_ALLOW_RUNTIME_LORA_UPDATING", "value": "True"} in c["env"]
    # Several replicas serve canaries only through the shared resolver directory (policies/lora_directory.py).
    resolver = {"name": "VLLM_LORA_RESOLVER_CACHE_DIR", "value": settings.get("FLYWHEEL_VLLM_LORA_RESOLVER_DIR")}
    assert vllm["spec"]["replicas"] == 1 or resolver in c["env"], "runtime LoRA loads through the API reach one pod"

    service = one(objects, "Service", "flywheel-vllm")
    stable_pods = vllm["spec"]["template"]["metadata"]["labels"]
    selected = [o for o in objects if o["kind"] == "Deployment"
                and selects(service["spec"]["selector"], o["spec"]["template"]["metadata"]["labels"])]  # fmt: skip
    assert selected == [vllm] and selects(service["spec"]["selector"], stable_pods)
    port = service["spec"]["ports"][0]["port"]
    assert settings["FLYWHEEL_VLLM_URL"] == f"http://{service['metadata']['name']}:{port}"

    gateway = one(objects, "Deployment", "flywheel-gateway")
    models = {m["name"]: m["mountPath"] for m in container(gateway)["volumeMounts"]}["models"]
    assert {m["name"]: m["mountPath"] for m in c["volumeMounts"]}["models"] == models, "same artifact paths"
    assert settings["FLYWHEEL_SEED_MODEL_PATH"].startswith(models + "/")
    if resolver in c["env"]:  # gateways publish to the very volume every replica resolves from
        def adapters_volume(d: Obj, read_only: bool) -> str:
            mount = next(m for m in container(d)["volumeMounts"] if m["mountPath"] == resolver["value"])
            assert bool(mount.get("readOnly")) is read_only, f"{d['metadata']['name']}: adapters readOnly={read_only}"
            volume = next(v for v in d["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"])
            return str(volume["persistentVolumeClaim"]["claimName"])

        claim = adapters_volume(gateway, read_only=False)
        assert adapters_volume(vllm, read_only=True) == claim
        assert one(objects, "PersistentVolumeClaim", claim)["spec"]["accessModes"] == ["ReadWriteMany"]

    policy = one(objects, "NetworkPolicy", "flywheel-vllm-from-gateways")
    servers = [o for o in objects if o["kind"] == "Deployment" and container(o)["image"].startswith("vllm/")]
    assert vllm in servers
    for server in servers:
        assert selects(policy["spec"]["podSelector"]["matchLabels"], server["spec"]["template"]["metadata"]["labels"])
    allowed = policy["spec"]["ingress"][0]["from"][0]["podSelector"]["matchLabels"]
    assert selects(allowed, gateway["spec"]["template"]["metadata"]["labels"])


def check_pod_security(objects: list[Obj]) -> None:
    for obj in objects:
        for pod in _pod_specs(obj):
            name = obj["metadata"]["name"]
            assert pod["securityContext"]["runAsNonRoot"] is True, f"{name}: runAsNonRoot"
            assert pod.get("automountServiceAccountToken") is False, f"{name}: no API token needed"
            for c in pod["containers"]:
                sc = c["securityContext"]
                assert sc["allowPrivilegeEscalation"] is False, f"{name}: allowPrivilegeEscalation"
                assert sc["readOnlyRootFilesystem"] is True, f"{name}: readOnlyRootFilesystem"
                assert sc["capabilities"]["drop"] == ["ALL"], f"{name}: capabilities"
                for part in ("requests", "limits"):
                    assert {"cpu", "memory"} <= set(c["resources"][part]), f"{name}: {part} cpu+memory"


def check_namespace(objects: list[Obj], namespace: str) -> None:
    for obj in objects:
        assert obj["metadata"].get("namespace") == namespace, f"{obj['kind']}/{obj['metadata']['name']}: namespace"


STRUCTURE: list[Callable[[list[Obj]], None]] = [check_gateway, check_controller, check_consumer, check_vllm,
                                                check_pod_security]  # fmt: skip


# --- tests ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def secret_keys() -> set[str]:
    (secret,) = _load_yaml(SECRET_EXAMPLE)
    check_schema(secret)
    return set(secret["stringData"])


@pytest.mark.parametrize("directory", [BASE, OVERLAY], ids=["base", "overlay-example"])
def test_manifests_render_and_validate(
    directory: Path, secret_keys: set[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    objects = render(directory)
    for obj in objects:
        check_schema(obj)
        check_names(obj)
    check_namespace(objects, "flywheel")
    check_settings(objects, monkeypatch, tmp_path)
    check_env_references(objects, secret_keys)
    for check in STRUCTURE:
        check(objects)


def test_renderer_applies_the_kustomizations() -> None:
    base = render(BASE)
    overlay = render(OVERLAY)
    gateway = one(base, "Deployment", "flywheel-gateway")
    assert container(gateway)["image"] == "ghcr.io/example/flywheel:0.1.0"
    assert gateway["metadata"]["labels"]["app.kubernetes.io/part-of"] == "flywheel"
    assert gateway["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/part-of"] == "flywheel"
    assert "app.kubernetes.io/part-of" not in gateway["spec"]["selector"]["matchLabels"]  # selectors are immutable
    overlay_image = container(one(overlay, "Deployment", "flywheel-gateway"))["image"]
    assert overlay_image == "registry.example.com/flywheel/gateway:0.1.0"
    assert {o["kind"] for o in overlay} - {o["kind"] for o in base} == {"KafkaTopic", "Ingress"}
    public = [p["path"] for rule in one(overlay, "Ingress", "flywheel-public")["spec"]["rules"]
              for p in rule["http"]["paths"]]  # fmt: skip
    assert public == ["/v1", "/web", "/"], "only the API and the chat page are public (docs/security.md)"
    full = one(overlay, "Deployment", "flywheel-vllm-v7")
    assert "--enable-lora" not in container(full)["args"], "a full-checkpoint server serves one version"
    assert selects(one(overlay, "Service", "flywheel-vllm-v7")["spec"]["selector"],
                   full["spec"]["template"]["metadata"]["labels"])  # fmt: skip
    assert not any(o["kind"] == "KafkaTopic" for o in base), "Strimzi CRs stay out of the base (CRD may be absent)"


def _broken(objects: list[Obj], kind: str, name: str, change: Callable[[Obj], object]) -> list[Obj]:
    copied = copy.deepcopy(objects)
    change(one(copied, kind, name))
    return copied


def test_checks_catch_broken_manifests(secret_keys: set[str]) -> None:
    objects = render(OVERLAY)
    gw = "flywheel-gateway"
    with pytest.raises(AssertionError, match="replica"):  # a typo'd field: unknown in the strict schema
        check_schema(one(_broken(objects, "Deployment", gw, lambda d: d["spec"].update(replica=2)), "Deployment", gw))
    with pytest.raises(AssertionError, match="integer"):
        check_schema(one(_broken(objects, "Deployment", "flywheel-consumer",
                                 lambda d: d["spec"].update(replicas="three")), "Deployment", "flywheel-consumer"))
    with pytest.raises(AssertionError, match="partitions"):
        check_schema(one(_broken(objects, "KafkaTopic", "flywheel.feedback",
                                 lambda t: t["spec"].update(partitions=0)), "KafkaTopic", "flywheel.feedback"))
    cases: list[tuple[Callable[[list[Obj]], None], str, str, Callable[[Obj], object]]] = [
        (check_gateway, "Deployment", gw, lambda d: container(d)["readinessProbe"]["httpGet"].update(path="/healthz")),
        (check_gateway, "Deployment", gw, lambda d: container(d)["livenessProbe"]["httpGet"].update(port=9000)),
        (check_gateway, "Service", gw, lambda s: s["spec"]["selector"].update({"app.kubernetes.io/name": "other"})),
        (check_gateway, "HorizontalPodAutoscaler", gw, lambda h: h["spec"]["scaleTargetRef"].update(name="x")),
        (check_controller, "Deployment", "flywheel-canary-controller", lambda d: d["spec"].update(replicas=2)),
        (check_controller, "Deployment", "flywheel-canary-controller",
         lambda d: d["spec"].update(strategy={"type": "RollingUpdate"})),
        (check_controller, "Service", "flywheel-gateway-pods", lambda s: s["spec"].update(clusterIP="10.0.0.9")),
        (check_controller, "ConfigMap", SETTINGS_MAP,
         lambda m: m["data"].update(FLYWHEEL_CANARY_GATEWAY_METRICS_URLS="http://flywheel-gateway:8000/metrics")),
        (check_vllm, "Deployment", "flywheel-vllm", lambda d: container(d)["env"].remove(
            {"name": "VLLM_LORA_RESOLVER_CACHE_DIR", "value": "/var/lib/flywheel/adapters"})),
        (check_vllm, "Deployment", "flywheel-vllm", lambda d: container(d)["volumeMounts"][1].update(readOnly=False)),
        (check_consumer, "Deployment", "flywheel-consumer", lambda d: d["spec"].update(replicas=13)),
        (check_consumer, "KafkaTopic", "flywheel.interactions", lambda t: t["spec"].update(partitions=6)),
        (check_vllm, "Deployment", "flywheel-vllm", lambda d: container(d)["args"].remove("--max-loras=16")),
        (check_vllm, "ConfigMap", SETTINGS_MAP, lambda m: m["data"].update(FLYWHEEL_VLLM_MAX_LORAS="8")),
        (check_pod_security, "Deployment", gw, lambda d: d["spec"]["template"]["spec"]["securityContext"].update(
            runAsNonRoot=False)),
    ]
    for check, kind, name, change in cases:
        with pytest.raises(AssertionError):
            check(_broken(objects, kind, name, change))
    with pytest.raises(AssertionError, match="Secret"):
        check_env_references(_broken(objects, "Deployment", gw, lambda d: container(d)["env"].append(
            {"name": "FLYWHEEL_FEEDBACK_SECRET", "value": "literal"})), secret_keys)
    with pytest.raises(AssertionError, match="envFrom"):
        check_env_references(_broken(objects, "Deployment", "flywheel-consumer",
                                     lambda d: container(d).pop("envFrom")), secret_keys)


def test_settings_check_rejects_unknown_names(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    objects = _broken(render(BASE), "ConfigMap", SETTINGS_MAP, lambda m: m["data"].update(FLYWHEEL_REGISTRY_CACHE="1"))
    with pytest.raises(AssertionError, match="FLYWHEEL_REGISTRY_CACHE"):
        check_settings(objects, monkeypatch, tmp_path)


def test_settings_check_requires_the_safety_head(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    objects = _broken(render(BASE), "ConfigMap", SETTINGS_MAP,
                      lambda m: m["data"].pop("FLYWHEEL_SAFETY_CLASSIFIER_REQUIRED"))  # fmt: skip
    with pytest.raises(AssertionError, match="SAFETY_CLASSIFIER_REQUIRED"):
        check_settings(objects, monkeypatch, tmp_path)


def test_render_refuses_kustomize_fields_it_does_not_implement(tmp_path: Path) -> None:
    (tmp_path / "kustomization.yaml").write_text("kind: Kustomization\nresources: []\npatches: []\n")
    with pytest.raises(AssertionError, match="patches"):
        render(tmp_path)


def test_gateway_image_definition() -> None:
    dockerfile = (ROOT / "deploy" / "docker" / "Dockerfile").read_text()
    lines = [line.strip() for line in dockerfile.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    froms = [line.split()[1] for line in lines if line.startswith("FROM ")]
    assert froms and all(image == "python:3.11-slim" for image in froms)
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users and users[-1].split(":")[0] not in {"0", "root"}, "the image runs as a non-root user"
    uid = int(users[-1].split(":")[0])
    pods = [p for o in render(BASE) for p in _pod_specs(o)
            if any(c["image"].startswith(flywheel_image(BASE)) for c in p["containers"])]  # fmt: skip
    assert pods and all(p["securityContext"]["runAsUser"] == uid for p in pods), "pods run as the image's user"
    assert 'ENTRYPOINT ["flywheel"]' in lines and 'CMD ["serve"]' in lines
    assert any(line.startswith("HEALTHCHECK") for line in lines) and "/healthz" in dockerfile
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = [p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]]
    for package in packages:
        assert f"COPY {package} ./{package}" in lines, f"the image must contain the {package} package"
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}  # fmt: skip
    assert {".venv", "var", ".env", ".git"} <= ignored, "no local state or secrets in the build context"
    assert not ({"pyproject.toml", "README.md", *packages} & ignored), "the build needs these"


def _healthcheck_command() -> str:
    """The shell command of the Dockerfile's HEALTHCHECK, continuation lines joined."""
    lines = (ROOT / "deploy" / "docker" / "Dockerfile").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("HEALTHCHECK"))
    parts = []
    for line in lines[start:]:
        parts.append(line.rstrip().removesuffix("\\").strip())
        if not line.rstrip().endswith("\\"):
            break
    instruction = " ".join(parts)
    assert " CMD " in instruction, instruction
    return instruction.split(" CMD ", 1)[1]


def test_image_healthcheck_follows_flywheel_port_and_skips_non_gateways(tmp_path: Path) -> None:
    """Run the HEALTHCHECK command as Docker would (``/bin/sh -c``), with /proc/1/cmdline replaced by a file
    holding the container's command: the gateway is probed on FLYWHEEL_PORT; `consume` and `canary watch`
    serve no HTTP and stay healthy while they run."""
    import http.server
    import os
    import subprocess
    import sys
    import threading

    from flywheel.procs import free_port

    command = _healthcheck_command()
    assert not command.startswith("["), "exec form: no ${FLYWHEEL_PORT} expansion"
    assert "${FLYWHEEL_PORT:-8000}" in command and ":8000/" not in command
    assert command.count("/proc/1/cmdline") == 1
    cmdline = tmp_path / "cmdline"
    command = command.replace("/proc/1/cmdline", str(cmdline))

    class Healthz(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            self.send_response(200 if self.path == "/healthz" else 404)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Healthz)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    closed = free_port()

    def check(argv: list[str], port: int) -> int:
        cmdline.write_bytes(b"".join(a.encode() + b"\0" for a in argv))
        env = {**os.environ, "FLYWHEEL_PORT": str(port),
               "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}  # fmt: skip
        return subprocess.run(["/bin/sh", "-c", command], env=env, capture_output=True, timeout=30).returncode

    gateway = ["/opt/flywheel/bin/python", "/opt/flywheel/bin/flywheel", "serve"]
    try:
        assert check(gateway, server.server_address[1]) == 0
        assert check(gateway, closed) != 0, "nothing on FLYWHEEL_PORT: unhealthy"
        assert check(["/sbin/docker-init", "--", "flywheel", "serve"], server.server_address[1]) == 0  # --init
        assert check(["/opt/flywheel/bin/python", "/opt/flywheel/bin/flywheel", "consume"], closed) == 0
        assert check(["/opt/flywheel/bin/python", "/opt/flywheel/bin/flywheel", "canary", "watch", "--url",
                      "http://flywheel-gateway:8000"], closed) == 0  # fmt: skip
    finally:
        server.shutdown()
        server.server_close()
