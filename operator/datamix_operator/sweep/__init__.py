"""DataMixtureSweep: proxy trials as DataMixtureExperiments, a bounded fit, the proposal and the
final run. `plan` (pure: the sweep's settings, its trials and final experiment), `fit` (the fit in
a bounded subprocess), `reconcile` (one level-based reconciliation), `kube` (its API calls)."""
