"""cluster.yaml passes Ray's own cluster-launcher schema and keeps the dashboard on loopback."""

from __future__ import annotations

import json
import re
from pathlib import Path

import jsonschema
import ray.autoscaler
import yaml

CLUSTER_YAML = Path(__file__).resolve().parent.parent / "cluster.yaml"


def test_cluster_yaml_passes_rays_cluster_launcher_schema() -> None:
    # The schema `ray up` validates against, as shipped inside the installed Ray.
    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(yaml.safe_load(CLUSTER_YAML.read_text()), schema)


def test_cluster_yaml_head_binds_the_dashboard_to_loopback_only() -> None:
    config = yaml.safe_load(CLUSTER_YAML.read_text())
    head_start = [c for c in config["head_start_ray_commands"] if "ray start" in c]
    assert len(head_start) == 1
    assert re.search(r"--dashboard-host[= ]127\.0\.0\.1\b", head_start[0]), head_start[0]
    assert "0.0.0.0" not in CLUSTER_YAML.read_text()
