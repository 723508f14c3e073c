"""deploy/kubernetes as ``kubectl apply -k`` would apply it, and the gateway container's environment from it.

    objects = rendered()                                   # {(kind, namespace, name): object}
    env = container_env(objects, {"store-url": url}, {})   # the Deployment's env, values resolved
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes"

Objects = dict[tuple[str, str, str], dict[str, Any]]


def rendered() -> Objects:
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl is needed to render deploy/kubernetes (kubectl kustomize)"
    output = subprocess.run([kubectl, "kustomize", str(DEPLOY)], check=True, capture_output=True, text=True,
                            timeout=60).stdout
    found = {}
    for obj in yaml.safe_load_all(output):
        metadata = obj["metadata"]
        found[(obj["kind"], metadata.get("namespace", ""), metadata["name"])] = obj
    return found


def gateway_container(objects: Objects) -> dict[str, Any]:
    [container] = objects[("Deployment", "code-gateway", "code-gateway")]["spec"]["template"]["spec"]["containers"]
    return container  # type: ignore[no-any-return]


def container_env(objects: Objects, secrets: dict[str, str], fields: dict[str, str]) -> dict[str, str]:
    """The gateway container's environment: secret keys from ``secrets`` (else the Secret's own
    values, checked to exist), downward-API fields from ``fields``, ``$(VAR)`` references expanded."""
    secret = objects[("Secret", "code-gateway", "code-gateway")]
    env = {}
    for entry in gateway_container(objects)["env"]:
        source = entry.get("valueFrom", {})
        if "secretKeyRef" in source:
            ref = source["secretKeyRef"]
            assert ref["name"] == secret["metadata"]["name"] and ref["key"] in secret["stringData"], ref
            env[entry["name"]] = secrets.get(ref["key"], secret["stringData"][ref["key"]])
        elif "fieldRef" in source:
            env[entry["name"]] = fields[source["fieldRef"]["fieldPath"]]
        else:  # $(NAME) of a variable defined before it is expanded, as the kubelet does
            env[entry["name"]] = re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)",
                                        lambda match: env.get(match[1], match[0]), entry["value"])
    return env
