"""The KubeRay RayService manifest points at code and settings that exist (no cluster here)."""

from __future__ import annotations

import importlib

import yaml

from services.common.settings import CommonSettings
from services.inference.settings import InferenceSettings
from tests.deploy.conftest import DEPLOY


def _service() -> dict:
    return yaml.safe_load((DEPLOY / "kuberay" / "rayservice.yaml").read_text())


def test_serve_config_imports_the_inference_application() -> None:
    serve_config = yaml.safe_load(_service()["spec"]["serveConfigV2"])
    application = serve_config["applications"][0]
    module_name, _, attribute = application["import_path"].partition(":")
    assert callable(getattr(importlib.import_module(module_name), attribute))
    deployments = {deployment["name"] for deployment in application["deployments"]}
    assert deployments == {"ModelDeployment"}


def test_every_setting_it_passes_is_a_real_setting() -> None:
    serve_config = yaml.safe_load(_service()["spec"]["serveConfigV2"])
    env = serve_config["applications"][0]["runtime_env"]["env_vars"]
    known = {f"HSIG_{name.upper()}" for name in InferenceSettings.model_fields} | {
        f"HSIG_{name.upper()}" for name in CommonSettings.model_fields
    }
    assert set(env) <= known, set(env) - known


def test_workers_get_a_gpu_and_shared_memory() -> None:
    worker = _service()["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["template"]["spec"]
    container = worker["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert any(mount["mountPath"] == "/dev/shm" for mount in container["volumeMounts"])
