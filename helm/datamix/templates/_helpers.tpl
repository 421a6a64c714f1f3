{{/* Chart name, overridable. */}}
{{- define "datamix.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: <release>-<chart> unless the release name already contains the chart name. */}}
{{- define "datamix.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "datamix.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every object. */}}
{{- define "datamix.labels" -}}
helm.sh/chart: {{ include "datamix.chart" . }}
{{ include "datamix.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: datamix
{{- end }}

{{/* Labels that select the operator pod. */}}
{{- define "datamix.selectorLabels" -}}
app.kubernetes.io/name: {{ include "datamix.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "datamix.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "datamix.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "datamix.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag }}
{{- if .Values.image.digest }}
{{- printf "%s:%s@%s" .Values.image.repository $tag .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}
{{- end }}

{{/*
RBAC rules of the operator in the namespaces it watches: exactly the "needed" verbs of
docs/operator.md ("RBAC: every API call it makes"). tests/ship/test_rbac_e2e.py runs the
operator's scenario under them and checks with `kubectl auth can-i` that nothing else is granted.
*/}}
{{- define "datamix.namespacedRules" -}}
# The experiments: kopf's watch, the reconciler's get, the resync's list; a sweep creates its
# trial and final experiments. The operator never writes a spec; kopf keeps no annotations on
# them (event handlers only).
- apiGroups: [datamix.io]
  resources: [datamixtureexperiments]
  verbs: [get, list, watch, create]
- apiGroups: [datamix.io]
  resources: [datamixtureexperiments/status]
  verbs: [patch]
# The sweeps: kopf's watch, the reconciler's get, the resync's list, and their status.
- apiGroups: [datamix.io]
  resources: [datamixturesweeps]
  verbs: [get, list, watch]
- apiGroups: [datamix.io]
  resources: [datamixturesweeps/status]
  verbs: [patch]
{{- if .Values.rbac.ownerReferencesPermissionEnforcement }}
# Owner references with blockOwnerDeletion on clusters that enforce them (OpenShift).
- apiGroups: [datamix.io]
  resources: [datamixtureexperiments/finalizers, datamixturesweeps/finalizers]
  verbs: [update]
{{- end }}
# The run spec ConfigMap of each run: create-or-get, deleted when its run is retired, watched to
# create it again when deleted by hand mid-run.
- apiGroups: [""]
  resources: [configmaps]
  verbs: [get, list, watch, create, delete]
# The run's job: create-or-get, runPolicy.suspend, retirement, and kopf's watch of its status.
- apiGroups: [kubeflow.org]
  resources: [pytorchjobs]
  verbs: [get, list, watch, create, patch, delete]
# Read-only: the master pod's termination message carries the run result.
- apiGroups: [""]
  resources: [pods]
  verbs: [list, watch]
# Events on the experiments; patch: the same event again is counted on the existing one.
- apiGroups: [""]
  resources: [events]
  verbs: [create, patch]
{{- end }}

{{/* Cluster-scoped reads kopf needs: it discovers the served resources and notices CRDs
installed later. */}}
{{- define "datamix.crdRules" -}}
- apiGroups: [apiextensions.k8s.io]
  resources: [customresourcedefinitions]
  verbs: [list, watch]
{{- end }}

{{/* Leader election (operator/datamix_operator/leader.py): read, create and renew the Lease. */}}
{{- define "datamix.leaseRules" -}}
- apiGroups: [coordination.k8s.io]
  resources: [leases]
  verbs: [get, create, update]
{{- end }}

{{/* Watching given namespaces, kopf also observes namespaces (cluster-wide it needs not). */}}
{{- define "datamix.namespaceRules" -}}
- apiGroups: [""]
  resources: [namespaces]
  verbs: [list, watch]
{{- end }}

{{/*
Namespaces the operator watches, as a JSON list: `watchNamespaces`, else the release namespace;
empty when `clusterWide` is true (every namespace).
*/}}
{{- define "datamix.watchNamespaces" -}}
{{- if .Values.clusterWide }}
{{- if .Values.watchNamespaces }}
{{- fail "set either clusterWide or watchNamespaces, not both" }}
{{- end }}
{{- list | toJson }}
{{- else }}
{{- default (list .Release.Namespace) .Values.watchNamespaces | toJson }}
{{- end }}
{{- end }}

{{/* Name of the policy's parameters: the DataMixPolicy object and the operator's ConfigMap copy. */}}
{{- define "datamix.policyName" -}}
{{- printf "%s-policy" (include "datamix.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The images experiments may name: `policy.imagePrefixes`, else the repository of the trainer image
(`trainerImage` without its tag or digest; the operator's default `datamix-trainer` when unset).
*/}}
{{- define "datamix.policyImagePrefixes" -}}
{{- if .Values.policy.imagePrefixes }}
{{- toJson .Values.policy.imagePrefixes }}
{{- else }}
{{- $noDigest := regexReplaceAll "@.*$" (default "datamix-trainer" .Values.trainerImage) "" }}
{{- list (regexReplaceAll ":[^:/]*$" $noDigest "") | toJson }}
{{- end }}
{{- end }}
