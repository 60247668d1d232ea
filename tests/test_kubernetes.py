"""deploy/kubernetes/ checked without a cluster, unknown fields refused everywhere:
- every Kubernetes object in it (the RayJob's metadata and pod templates, the MLflow
  Deployment, Service and volume claim) against the official Kubernetes JSON schemas of the
  `kubernetes-validate` package, strict (as `kubectl apply --validate=strict`);
- the RayJob's own KubeRay fields against tests/kuberay_rayjob_schema.yaml, our schema
  written from KubeRay's API reference (KubeRay's CRD is not vendored: docs/clusters.md);
- the wiring the docs promise (GPU workers, token auth, results volume, MLflow)."""

from __future__ import annotations

import copy
import subprocess
from collections.abc import Callable
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from orchestrator.plan import expand
from orchestrator.spec import parse_spec

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy" / "kubernetes"
RAYJOB_SCHEMA = Path(__file__).resolve().parent / "kuberay_rayjob_schema.yaml"
# The oldest Kubernetes the manifests are meant for, and the newest the package knows.
K8S_VERSIONS = ("1.30", kubernetes_validate.latest_version())


def load_manifests() -> tuple[dict, list[dict]]:
    rayjob = yaml.safe_load((DEPLOY / "rayjob.yaml").read_text())
    mlflow = [d for d in yaml.safe_load_all((DEPLOY / "mlflow.yaml").read_text()) if d]
    return rayjob, mlflow


def kubernetes_objects(rayjob: dict) -> dict[str, dict]:
    """The Kubernetes parts of a RayJob, each wrapped as a whole object kubernetes-validate
    knows: its metadata and pod templates in `PodTemplate`s, a head Service as a `Service`."""
    spec = rayjob.get("spec", {})
    cluster = spec.get("rayClusterSpec", {})
    head = cluster.get("headGroupSpec", {})
    templates = {"headGroupSpec.template": head.get("template")}
    for i, group in enumerate(cluster.get("workerGroupSpecs", [])):
        templates[f"workerGroupSpecs[{i}].template"] = group.get("template")
    templates["submitterPodTemplate"] = spec.get("submitterPodTemplate")
    objects = {"metadata": {"apiVersion": "v1", "kind": "PodTemplate",
                            "metadata": rayjob.get("metadata")}}  # an ObjectMeta
    objects |= {where: {"apiVersion": "v1", "kind": "PodTemplate", "template": template}
                for where, template in templates.items() if template is not None}
    if "headService" in head:
        objects["headGroupSpec.headService"] = {"apiVersion": "v1", "kind": "Service",
                                                **head["headService"]}
    return objects


def manifest_errors(rayjob: dict, mlflow: list[dict]) -> list[str]:
    """Every reason the manifests would be refused; [] when all checks pass."""
    schema = yaml.safe_load(RAYJOB_SCHEMA.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    errors = [f"RayJob {'.'.join(map(str, e.absolute_path))}: {e.message}"
              for e in jsonschema.Draft202012Validator(schema).iter_errors(rayjob)]
    named = [(f"RayJob {where}", obj) for where, obj in kubernetes_objects(rayjob).items()]
    named += [(f"mlflow.yaml {d.get('kind')}", d) for d in mlflow]
    for version in K8S_VERSIONS:
        for where, obj in named:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as e:
                errors.append(f"{where} (Kubernetes {e.version}) "
                              f"{'.'.join(map(str, e.path))}: {e.message}")
    return errors


def test_manifests_pass_kubernetes_schemas_strictly_and_our_kuberay_schema() -> None:
    rayjob, mlflow = load_manifests()
    objects = kubernetes_objects(rayjob)
    # The metadata and each pod template are among the checked objects; every MLflow
    # document is one.
    assert set(objects) == {"metadata", "headGroupSpec.template",
                            "workerGroupSpecs[0].template"}
    assert sorted(d["kind"] for d in mlflow) == [
        "Deployment", "PersistentVolumeClaim", "Service"]
    assert manifest_errors(rayjob, mlflow) == []


def _misspelt_rayjob_field(rayjob: dict, mlflow: list[dict]) -> None:
    cluster = rayjob["spec"]["rayClusterSpec"]
    cluster["workerGroupSpec"] = cluster.pop("workerGroupSpecs")


def _wrong_type_rayjob_field(rayjob: dict, mlflow: list[dict]) -> None:
    rayjob["spec"]["backoffLimit"] = "two"


def _ray_start_param_not_a_string(rayjob: dict, mlflow: list[dict]) -> None:
    rayjob["spec"]["rayClusterSpec"]["headGroupSpec"]["rayStartParams"]["num-gpus"] = 0


def _unknown_auth_mode(rayjob: dict, mlflow: list[dict]) -> None:
    rayjob["spec"]["rayClusterSpec"]["authOptions"]["mode"] = "tokens"


def _unknown_container_key(rayjob: dict, mlflow: list[dict]) -> None:
    pod = rayjob["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    pod["containers"][0]["gpus"] = 1


def _wrong_type_in_worker_pod(rayjob: dict, mlflow: list[dict]) -> None:
    pod = rayjob["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]
    pod["containers"][0]["volumeMounts"][0]["readOnly"] = "yes"


def _misspelt_metadata_field(rayjob: dict, mlflow: list[dict]) -> None:
    rayjob["metadata"]["label"] = {"app": "sgsweep"}


def _misspelt_deployment_field(rayjob: dict, mlflow: list[dict]) -> None:
    (deployment,) = [d for d in mlflow if d["kind"] == "Deployment"]
    deployment["spec"]["replica"] = deployment["spec"].pop("replicas")


def _wrong_type_service_port(rayjob: dict, mlflow: list[dict]) -> None:
    (service,) = [d for d in mlflow if d["kind"] == "Service"]
    service["spec"]["ports"][0]["port"] = "5000"


MISTAKES: dict[str, tuple[Callable[[dict, list[dict]], None], str, str]] = {
    # name: (how the manifests are broken, where an error is, a word it must contain)
    "misspelt RayJob field": (_misspelt_rayjob_field, "RayJob spec.rayClusterSpec:",
                              "'workerGroupSpec' was unexpected"),
    "wrong type of a RayJob field": (_wrong_type_rayjob_field, "RayJob spec.backoffLimit:",
                                     "integer"),
    "rayStartParams value not a string": (
        _ray_start_param_not_a_string,
        "RayJob spec.rayClusterSpec.headGroupSpec.rayStartParams.num-gpus:", "string"),
    "unknown auth mode": (_unknown_auth_mode, "RayJob spec.rayClusterSpec.authOptions.mode:",
                          "tokens"),
    "unknown container key (head pod)": (_unknown_container_key,
                                         "RayJob headGroupSpec.template ",
                                         "'gpus' was unexpected"),
    "wrong type in a worker pod": (_wrong_type_in_worker_pod,
                                   "RayJob workerGroupSpecs[0].template ",
                                   "readOnly"),
    "misspelt RayJob metadata field": (_misspelt_metadata_field, "RayJob metadata ",
                                       "'label' was unexpected"),
    "misspelt MLflow Deployment field": (_misspelt_deployment_field,
                                         "mlflow.yaml Deployment ", "'replica' was unexpected"),
    "wrong type of the MLflow Service port": (_wrong_type_service_port,
                                              "mlflow.yaml Service ", "port"),
}


@pytest.mark.parametrize("mistake", MISTAKES)
def test_checks_refuse_a_broken_manifest_saying_where(mistake: str) -> None:
    rayjob, mlflow = copy.deepcopy(load_manifests())
    breaks, where, word = MISTAKES[mistake]
    breaks(rayjob, mlflow)
    errors = manifest_errors(rayjob, mlflow)
    assert any(e.startswith(where) and word in e for e in errors), errors


def test_rayjob_runs_sgsweep_on_its_own_cluster_with_gpu_workers_and_token_auth() -> None:
    rayjob, _ = load_manifests()
    spec = rayjob["spec"]
    entrypoint = spec["entrypoint"].split()
    run = entrypoint[entrypoint.index("sgsweep"):]
    assert run[:2] == ["sgsweep", "run"] and "--address" in run
    assert run[run.index("--address") + 1] == "auto"
    out = run[run.index("--out") + 1]
    assert out.startswith("/results/")
    cluster = spec["rayClusterSpec"]
    assert cluster["authOptions"] == {"mode": "token"}
    head = cluster["headGroupSpec"]["template"]["spec"]
    assert "nvidia.com/gpu" not in head["containers"][0]["resources"]["limits"]
    for group in cluster["workerGroupSpecs"]:
        pod = group["template"]["spec"]
        assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    for pod in [head] + [g["template"]["spec"] for g in cluster["workerGroupSpecs"]]:
        mounts = {m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
        assert "/results" in mounts  # the driver writes there; every pod sees it
        assert pod["volumes"][0]["persistentVolumeClaim"]["claimName"] == "sgsweep-results"


def test_rayjob_runs_the_shipped_sweep_asking_gpus_with_the_same_trial_ids() -> None:
    # The entrypoint rewrites the shipped sweep's `resources` line: run that rewrite here
    # (without its redirection) and check the result is the same sweep, asking GPUs.
    rayjob, _ = load_manifests()
    rewrite, run = rayjob["spec"]["entrypoint"].split(" && ")
    command, target = rewrite.split(" > ")
    assert run.split()[2] == target  # `sgsweep run` runs the rewritten file
    shipped_path = ROOT / command.split()[-1]
    rewritten = subprocess.run(command, shell=True, cwd=ROOT, capture_output=True,
                               text=True, check=True).stdout
    shipped = parse_spec(yaml.safe_load(shipped_path.read_text()), str(shipped_path))
    gpu = parse_spec(yaml.safe_load(rewritten), "rewritten")
    assert gpu.resources.num_gpus == 0.25 and shipped.resources.num_gpus == 0
    assert gpu.name == shipped.name  # same results folder layout
    assert ([t.trial_id for b in expand(gpu) for t in b.trials]
            == [t.trial_id for b in expand(shipped) for t in b.trials])


def test_mlflow_manifest_serves_the_tracking_uri_the_rayjob_logs_to() -> None:
    rayjob, mlflow = load_manifests()
    docs = {d["kind"]: d for d in mlflow}
    assert docs["PersistentVolumeClaim"]["metadata"]["name"] == "sgsweep-results"
    assert docs["PersistentVolumeClaim"]["spec"]["accessModes"] == ["ReadWriteMany"]
    service = docs["Service"]
    assert service["spec"]["type"] == "ClusterIP"  # never exposed outside the cluster
    uri = f"http://{service['metadata']['name']}:{service['spec']['ports'][0]['port']}"
    entrypoint = rayjob["spec"]["entrypoint"].split()
    assert entrypoint[entrypoint.index("--tracking-uri") + 1] == uri
    command = docs["Deployment"]["spec"]["template"]["spec"]["containers"][0]["command"]
    assert command[command.index("--allowed-hosts") + 1].startswith(
        f"{service['metadata']['name']}*")
