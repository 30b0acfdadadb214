{{/* Chart name, shortened to 63 characters (a label value). */}}
{{- define "kubeq.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name of the release's objects. */}}
{{- define "kubeq.fullname" -}}
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

{{/* Name of the operator's objects. */}}
{{- define "kubeq.operatorName" -}}
{{- printf "%s-operator" (include "kubeq.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "kubeq.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every object. */}}
{{- define "kubeq.labels" -}}
helm.sh/chart: {{ include "kubeq.chart" . }}
app.kubernetes.io/part-of: kubeq
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}

{{/* Labels that select the operator pods (immutable in the Deployment). */}}
{{- define "kubeq.operatorSelectorLabels" -}}
app.kubernetes.io/name: {{ include "kubeq.name" . }}-operator
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "kubeq.operatorLabels" -}}
{{ include "kubeq.labels" . }}
{{ include "kubeq.operatorSelectorLabels" . }}
{{- end }}

{{- define "kubeq.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "kubeq.operatorName" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The namespace the operator watches; empty with cluster scope. */}}
{{- define "kubeq.watchNamespace" -}}
{{- if eq .Values.watch.scope "namespace" }}
{{- default .Release.Namespace .Values.watch.namespace }}
{{- end }}
{{- end }}

{{- define "kubeq.operatorImage" -}}
{{- $img := .Values.operator.image }}
{{- printf "%s:%s" $img.repository (default .Chart.AppVersion $img.tag) }}
{{- end }}

{{- define "kubeq.workerImage" -}}
{{- $img := .Values.workerImage }}
{{- printf "%s:%s" $img.repository (default .Chart.AppVersion $img.tag) }}
{{- end }}

{{/* The operator's RBAC rules on namespaced resources (a ClusterRole or a Role). */}}
{{- define "kubeq.namespacedRules" -}}
# TaskQueues: kopf watches them and patches finalizers, annotations and status.
- apiGroups: ["kubeq.io"]
  resources: ["taskqueues"]
  verbs: ["get", "list", "watch", "patch"]
- apiGroups: ["kubeq.io"]
  resources: ["taskqueues/status", "taskqueues/scale"]
  verbs: ["get", "patch"]
# The objects each TaskQueue owns.
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: [""]
  resources: ["services", "configmaps"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: ["policy"]
  resources: ["poddisruptionbudgets"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
# Worker pods: read readiness, set pod-deletion-cost before a scale-down.
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch", "patch"]
{{- if .secrets }}
# Secrets named by spec.redis (URL, password, TLS CA and client certificate). RBAC cannot
# select by label: the operator itself reads only those labelled
# kubeq.io/redis-credentials=true (docs/security.md). No list or watch.
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get"]
{{- end }}
- apiGroups: ["", "events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
# kopf peering (namespaced): two operator replicas never act at once.
- apiGroups: ["kopf.dev"]
  resources: ["kopfpeerings"]
  verbs: ["get", "list", "watch", "patch"]
{{- end }}
