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
RBAC rules of the operator in the namespaces it watches. Keep in step with docs/operator.md
(the operator's API usage); tests/ship/test_rbac_e2e.py runs the operator's scenario under them.
*/}}
{{- define "datamix.namespacedRules" -}}
# The experiments: watched, and patched only for kopf's own annotations (progress, last-handled).
- apiGroups: [datamix.io]
  resources: [datamixtureexperiments]
  verbs: [get, list, watch, patch]
- apiGroups: [datamix.io]
  resources: [datamixtureexperiments/status]
  verbs: [get, patch, update]
# The run spec ConfigMap of each run (created, and deleted when a run is retired).
- apiGroups: [""]
  resources: [configmaps]
  verbs: [get, list, watch, create, delete]
- apiGroups: [kubeflow.org]
  resources: [pytorchjobs]
  verbs: [get, list, watch, create, patch, delete]
# Read-only: the master pod's termination message carries the run result.
- apiGroups: [""]
  resources: [pods]
  verbs: [get, list, watch]
- apiGroups: [""]
  resources: [events]
  verbs: [create, patch]
- apiGroups: [events.k8s.io]
  resources: [events]
  verbs: [create, patch]
{{- end }}

{{/* Cluster-scoped reads kopf needs at start-up and to follow namespaces and CRDs. */}}
{{- define "datamix.clusterRules" -}}
- apiGroups: [apiextensions.k8s.io]
  resources: [customresourcedefinitions]
  verbs: [get, list, watch]
- apiGroups: [""]
  resources: [namespaces]
  verbs: [get, list, watch]
{{- end }}
