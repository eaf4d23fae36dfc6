"""The cluster manifests checked against their schemas (issue 14, part 3).

- cluster/ray-cluster.yaml: Ray's cluster-launcher schema, `ray/autoscaler/ray-schema.json` of
  the installed Ray (the version the project runs), then what `ray up` checks (`prepare_config`
  and `validate_config`: provider defaults filled in, checks across node types).
- cluster/rayjob.yaml: the KubeRay RayJob CRD's OpenAPI v3 schema, vendored at `cluster/schemas/`
  (KubeRay v1.7.0; cluster/schemas/README.md names the commit), or the CRD file named by
  AIPO_KUBERAY_CRD. Also checked, CRD or not:
  the embedded runtime env is one Ray accepts, the `rayStartParams` are options of `ray start`,
  the entrypoint's script and config exist and the config validates, and every Ray version in
  both manifests is the installed one.

A CRD schema leaves `additionalProperties` unset (Kubernetes prunes unknown fields silently), so
plain JSON-schema validation would pass a misspelt field: `unknown_fields` walks the document
against the schema's `properties` and reports every field the schema does not declare.
"""

from __future__ import annotations

import json
import os
import re
import shlex
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml

REPO = Path(__file__).resolve().parents[1]
CLUSTER_YAMLS = sorted((REPO / "cluster").glob("ray-cluster*.yaml"))
# rayjob.yaml (fixed size) and rayjob-autoscaling.yaml (worker groups that grow from zero).
RAYJOB_YAMLS = sorted((REPO / "cluster").glob("rayjob*.yaml"))
CRD_ENV = "AIPO_KUBERAY_CRD"
VENDORED_CRDS = sorted((REPO / "cluster" / "schemas").glob("kuberay-*-ray.io_rayjobs.yaml"))


def ray_schema() -> dict:
    return json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())


def rayjob_crd_schema() -> tuple[dict, str] | None:
    """(openAPIV3Schema of RayJob v1, where it came from), or None without a CRD file."""
    path = os.environ.get(CRD_ENV) or (str(VENDORED_CRDS[-1]) if VENDORED_CRDS else None)
    if not path:
        return None
    # The CRD is 1.4 MB of YAML: the C loader reads it in a fraction of the pure-Python time.
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    crd = yaml.load(Path(path).read_text(), Loader=loader)
    assert crd["kind"] == "CustomResourceDefinition" and crd["spec"]["names"]["kind"] == "RayJob"
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    return version["schema"]["openAPIV3Schema"], path


def unknown_fields(doc, schema: dict, where: str = "") -> list[str]:
    """Paths of `doc` fields that `schema` (an OpenAPI v3 structural schema) does not declare."""
    if isinstance(doc, dict) and schema.get("type") == "object":
        if schema.get("x-kubernetes-preserve-unknown-fields"):
            return []
        props, extra = schema.get("properties"), schema.get("additionalProperties")
        found = []
        for key, value in doc.items():
            if props is not None and key in props:
                found += unknown_fields(value, props[key], f"{where}.{key}")
            elif isinstance(extra, dict):
                found += unknown_fields(value, extra, f"{where}.{key}")
            elif props is not None:
                found.append(f"{where}.{key}")
        return found
    if isinstance(doc, list) and "items" in schema:
        return [f for i, item in enumerate(doc)
                for f in unknown_fields(item, schema["items"], f"{where}[{i}]")]
    return []


def test_unknown_fields_finds_a_misspelt_field_that_plain_validation_passes():
    schema = {"type": "object", "properties": {"spec": {"type": "object", "properties": {
        "replicas": {"type": "integer"}, "labels": {"type": "object",
                                                    "additionalProperties": {"type": "string"}}}}}}
    doc = {"spec": {"replicas": 2, "replcas": 3, "labels": {"any": "x"}}}
    jsonschema.Draft7Validator(schema).validate(doc)  # passes: nothing forbids extra keys
    assert unknown_fields(doc, schema) == [".spec.replcas"]


@pytest.mark.parametrize("path", CLUSTER_YAMLS, ids=lambda p: p.name)
def test_cluster_launcher_yaml_is_valid_for_the_installed_ray(path):
    config = yaml.safe_load(path.read_text())
    errors = [f"{e.json_path}: {e.message}"
              for e in jsonschema.Draft7Validator(ray_schema()).iter_errors(config)]
    assert not errors, f"{path.name} against ray {ray.__version__}'s schema: {errors}"
    from ray.autoscaler._private.util import prepare_config, validate_config

    # What `ray up` does: fill in the provider's defaults, then the schema again plus its checks
    # across node types.
    validate_config(prepare_config(config))
    assert config["head_node_type"] in config["available_node_types"]
    assert _ray_versions(path) == {ray.__version__}


@pytest.mark.parametrize("path", RAYJOB_YAMLS, ids=lambda p: p.name)
def test_rayjob_manifest_is_valid_against_the_kuberay_crd(path):
    found = rayjob_crd_schema()
    if found is None:
        pytest.skip("no KubeRay RayJob CRD vendored in cluster/schemas/ (docs/cluster.md says "
                    f"which file); set {CRD_ENV}=PATH to check against one")
    schema, source = found
    doc = yaml.safe_load(path.read_text())
    errors = [f"{e.json_path}: {e.message}"
              for e in jsonschema.Draft7Validator(schema).iter_errors(doc)]
    assert not errors, f"{path.name} against {source}: {errors}"
    assert unknown_fields(doc, schema) == [], f"fields {source} does not declare"


def test_the_vendored_crd_catches_a_misspelt_field_and_a_wrong_type():
    """The check above can fail: the same manifest with one field misspelt and one value of the
    wrong type is refused by the vendored CRD (the first only by `unknown_fields`)."""
    found = rayjob_crd_schema()
    assert found is not None, "cluster/schemas/ should hold a KubeRay RayJob CRD"
    schema, _ = found
    doc = yaml.safe_load((REPO / "cluster" / "rayjob.yaml").read_text())
    doc["spec"]["shutdownAfterJobFinshes"] = doc["spec"].pop("shutdownAfterJobFinishes", True)
    doc["spec"]["ttlSecondsAfterFinished"] = "ten minutes"
    errors = [e.json_path for e in jsonschema.Draft7Validator(schema).iter_errors(doc)]
    assert errors == ["$.spec.ttlSecondsAfterFinished"]
    assert unknown_fields(doc, schema) == [".spec.shutdownAfterJobFinshes"]


@pytest.mark.parametrize("path", RAYJOB_YAMLS, ids=lambda p: p.name)
def test_rayjob_manifest_runs_what_the_repo_has_with_the_installed_ray(path):
    """What the RayJob says, checked without the CRD: Ray and aipo accept every part of it."""
    from ray.runtime_env import RuntimeEnv
    from ray.scripts.scripts import start

    from aipo_ray.config import load_config

    doc = yaml.safe_load(path.read_text())
    assert (doc["apiVersion"], doc["kind"]) == ("ray.io/v1", "RayJob")
    spec = doc["spec"]
    env = yaml.safe_load(spec["runtimeEnvYAML"])
    RuntimeEnv(**env)  # raises on a field or value Ray does not accept
    argv = shlex.split(spec["entrypoint"])
    assert argv[:2] == ["python", "pipelines/run_iterative.py"] and (REPO / argv[1]).is_file()
    config = argv[argv.index("--config") + 1]
    load_config(REPO / config)  # the job's config validates (ConfigError otherwise)

    cluster = spec["rayClusterSpec"]
    start_options = {opt.lstrip("-") for p in start.params for opt in p.opts}
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    for group in groups:
        params = group.get("rayStartParams", {})
        assert set(params) <= start_options, set(params) - start_options
        # KubeRay's rayStartParams is a map of strings: a YAML number would be rejected.
        assert all(isinstance(v, str) for v in params.values()), params
    for group in cluster["workerGroupSpecs"]:
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"], group["groupName"]
    assert cluster["rayVersion"] == ray.__version__
    assert _ray_versions(path) == {ray.__version__}


def _ray_versions(path: Path) -> set[str]:
    """Ray versions named in a manifest: image tags (rayproject/ray*:X.Y.Z-...) and rayVersion."""
    text = path.read_text()
    return set(re.findall(r"rayproject/ray[\w-]*:(\d+\.\d+\.\d+)", text)) | set(
        re.findall(r"rayVersion:\s*\"?(\d+\.\d+\.\d+)", text))
