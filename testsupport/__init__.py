"""Shared support code of the tests (tests/) and the benchmarks (benchmarks/).

Imported from the repository root (`python -m pytest`, `python -m benchmarks.operator.bench_scale`;
pytest also gets the root through `pythonpath` in pyproject.toml):

  ports             free_port(): the one free-port helper
  clusterlib        the local control plane (tools.cluster) from a test: Cluster, cluster_session,
                    wait_for, namespaces, fake nodes, PyTorchJobs
  operator_process  OperatorProcess: `datamix operator` as a subprocess (start, wait live, kill,
                    restart, metrics, log)
  experiments       DataMixtureExperiments on the fake GPU pool: the CRD, manifests, waits for a
                    phase or condition, private node pools, the lifecycle scenario
"""
