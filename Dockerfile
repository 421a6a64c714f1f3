# syntax=docker/dockerfile:1
# DataMix images, built from the repository root:
#   docker build --target operator -t datamix-operator:0.1.0 .   # kopf operator, no torch
#   docker build --target trainer  -t datamix-trainer:0.1.0 .    # torch + megatron-core trainer
# The install steps are the ones the tests and CI run (`pip install '.[operator]'` / '.[trainer]').
#
# Base: Debian bookworm's Python 3.11 (pyproject: requires-python >=3.11,<3.12), pinned by version
# tag and by the digest of its multi-architecture index. The digest was taken from public
# Dockerfiles that pin the same tag; no registry was reachable here to re-check it. Update tag and
# digest together (docker buildx imagetools inspect python:3.11.14-slim-bookworm). The image is
# written out in FROM, not in an ARG, so that scanners (checkov CKV_DOCKER_7) can read the pin.

# ---- base: runtime settings and the unprivileged user shared by both images ------------------
FROM python:3.11.14-slim-bookworm@sha256:65a93d69fa75478d554f4ad27c85c1e69fa184956261b4301ebaf6dbb0a3543d AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/datamix \
    PATH=/opt/datamix/bin:$PATH
# A fixed numeric UID/GID (10001) so that runAsNonRoot can be verified by the kubelet.
RUN groupadd --system --gid 10001 datamix \
 && useradd --system --uid 10001 --gid 10001 --home-dir /home/datamix --create-home \
      --shell /usr/sbin/nologin datamix

# ---- build stages: a virtualenv per image; only /opt/datamix reaches the final images ----------
# Every dependency is pinned exactly (==) in pyproject.toml, which pip resolves here.
FROM base AS build
WORKDIR /src
COPY pyproject.toml ./
COPY src ./src
COPY operator ./operator
COPY trainer ./trainer

FROM build AS build-operator
RUN python -m venv /opt/datamix \
 && pip install --no-cache-dir '/src[operator]' \
 && datamix --help >/dev/null

FROM build AS build-trainer
RUN python -m venv /opt/datamix \
 && pip install --no-cache-dir '/src[trainer]' \
 && datamix train --help >/dev/null

# ---- operator image ----------------------------------------------------------------------------
FROM base AS operator
COPY --from=build-operator /opt/datamix /opt/datamix
USER 10001:10001
WORKDIR /home/datamix
# The chart's Deployment probes `datamix operator --liveness-port` (/healthz) instead; Kubernetes
# ignores Docker's HEALTHCHECK.
# checkov:skip=CKV_DOCKER_2:Kubernetes ignores HEALTHCHECK; the Helm chart's livenessProbe checks /healthz
EXPOSE 8080 8081
CMD ["datamix", "operator"]

# ---- trainer image (the last stage: a plain `docker build .` gives the trainer) ----------------
FROM base AS trainer
COPY --from=build-trainer /opt/datamix /opt/datamix
USER 10001:10001
WORKDIR /home/datamix
EXPOSE 9410
# datamix.runspec.TRAINER_COMMAND, the command the operator puts into every trainer pod and the
# tests run (`datamix launch`: torchrun with exit code 128+n when a rank died of signal n). The pod
# spec passes --master-addr=$(MASTER_ADDR) --master-port=$(MASTER_PORT), which only the kubelet
# expands; torchrun reads the same values from PET_MASTER_ADDR/PET_MASTER_PORT,
# which the Kubeflow training-operator sets too, so the image's default leaves them out and also
# runs as is outside Kubernetes (one node, rendezvous on 127.0.0.1).
CMD ["datamix", "launch", "--no-python", "datamix", "train", "--run-spec", "/etc/datamix/runspec.json"]
