#!/bin/sh
# Entrypoint of the training image: `emotion "$@"`, with TF_CONFIG computed for this pod when
# running as one of NUM_WORKERS pods on Kubernetes (Vertex AI sets TF_CONFIG itself).
set -eu

if [ -z "${TF_CONFIG:-}" ] && [ -n "${NUM_WORKERS:-}" ]; then
    TF_CONFIG="$(python "${TF_CONFIG_SCRIPT:-/opt/emotion/tf_config.py}")"
    export TF_CONFIG
    echo "entrypoint: TF_CONFIG=${TF_CONFIG}" >&2
fi

exec emotion "$@"
