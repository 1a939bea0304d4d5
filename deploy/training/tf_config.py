"""Prints the TF_CONFIG of this pod for `emotion train --strategy multi-worker` on Kubernetes.

Every pod of an Indexed Job (or a StatefulSet) behind a headless Service runs the same image;
MultiWorkerMirroredStrategy needs, in each one, the address of every worker and its own index:

    {"cluster": {"worker": ["emotion-train-0.emotion-train:2222", "emotion-train-1.emotion-train:2222"]},
     "task": {"type": "worker", "index": 1}}

Worker 0 acts as the chief (writes checkpoints, logs and the export; model/train.py's is_chief).

Environment (set by the manifest, see k8s/train.yaml):
  NUM_WORKERS            number of pods (= the Job's completions/parallelism, the StatefulSet's replicas)
  TF_SERVICE             name of the headless Service (pods are <pod-host>.<service>)
  JOB_COMPLETION_INDEX   this pod's index (set by Kubernetes for Indexed Jobs); without it the
                         index is the trailing -N of HOSTNAME (StatefulSet ordinal)
  TF_JOB_NAME            pod hostname prefix (default: HOSTNAME without its -N suffix; the pods of
                         an Indexed Job are named <job-name>-<index>)
  POD_NAMESPACE          optional: use fully qualified names <host>.<service>.<ns>.svc.cluster.local
  TF_PORT                gRPC port of the workers (default 2222)

With TF_CONFIG already set (Vertex AI sets it), that value is printed unchanged.
"""

from __future__ import annotations

import json
import os
import re
import sys


class ConfigError(ValueError):
    pass


def tf_config(env: dict[str, str]) -> dict:
    if env.get("TF_CONFIG"):
        return json.loads(env["TF_CONFIG"])
    try:
        num_workers = int(env["NUM_WORKERS"])
    except (KeyError, ValueError):
        raise ConfigError("NUM_WORKERS must be set to the number of worker pods") from None
    if num_workers < 1:
        raise ConfigError("NUM_WORKERS must be at least 1")
    service = env.get("TF_SERVICE", "")
    if not service:
        raise ConfigError("TF_SERVICE must name the headless Service of the worker pods")
    hostname = env.get("HOSTNAME", "")
    suffix = re.fullmatch(r"(.+)-(\d+)", hostname)
    if env.get("JOB_COMPLETION_INDEX", "") != "":
        index = int(env["JOB_COMPLETION_INDEX"])
    elif suffix:
        index = int(suffix.group(2))
    else:
        raise ConfigError(f"no JOB_COMPLETION_INDEX and no -N suffix in HOSTNAME {hostname!r}")
    prefix = env.get("TF_JOB_NAME") or (suffix.group(1) if suffix else "")
    if not prefix:
        raise ConfigError("TF_JOB_NAME must be set (the pods' hostname prefix)")
    if not 0 <= index < num_workers:
        raise ConfigError(f"pod index {index} is outside 0..{num_workers - 1}")
    port = int(env.get("TF_PORT", "2222"))
    domain = f"{service}.{env['POD_NAMESPACE']}.svc.cluster.local" if env.get("POD_NAMESPACE") else service
    workers = [f"{prefix}-{i}.{domain}:{port}" for i in range(num_workers)]
    return {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}


def main() -> int:
    try:
        print(json.dumps(tf_config(dict(os.environ)), separators=(",", ":")))
    except ConfigError as exc:
        print(f"tf_config: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
