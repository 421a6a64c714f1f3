"""A real local Kubernetes control plane for DataMix tests and demos (127.0.0.1 only).

    python3 -m tools.cluster up      # build if needed, start (or reuse), print exports
    python3 -m tools.cluster down    # stop every process it started (by pid), remove state
    python3 -m tools.cluster status  # JSON; exit 0 when healthy, 1 otherwise
    python3 -m tools.cluster env     # print the export lines of a running cluster
    python3 -m tools.cluster stop-component kube-apiserver   # and start-component: outage tests

(`python3 tools/cluster/cluster.py ...` is the same command, runnable from any directory.)

Components (binaries from tools/k8s/build.sh): etcd, kube-apiserver, kube-controller-manager,
kube-scheduler, the kwok controller (stages in tools/cluster/stages/) and the Kubeflow
training-operator (PyTorchJob only, CRD from the Go module cache). A pool of fake GPU nodes
managed by kwok is created.

State (PKI, kubeconfig, etcd data, logs, pids): $DATAMIX_CLUSTER_DIR or
${DATAMIX_CACHE_DIR:-${XDG_CACHE_HOME:-~/.cache}/datamix}/cluster. Only the standard library and
the `openssl` command are used, so any python3 >= 3.9 can run it. $DATAMIX_CLUSTER_APISERVER_ARGS
adds arguments to the API server (e.g. an audit log, benchmarks/operator/bench_scale.py).

Modules, in the order a start uses them:
  settings       paths, pins, fixed names and addresses, the state dir
  binaries       the control-plane build (tools/k8s/build.sh) and the PyTorchJob CRD
  processes      pids: liveness, ownership, stopping, the state lock, free ports
  certs          the cluster's PKI and the training-operator's webhook certificates (openssl CLI)
  kubeconfig     the admin kubeconfig
  health         health endpoints and waiting
  nodes          the fake (kwok) GPU node pool
  control_plane  `up` and `down`: the start stages, one function per component
  cli            the command line
"""
