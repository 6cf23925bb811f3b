{{/*
Names and labels shared by every template of the chart.
*/}}

{{/* The name of the namespaced objects: the release name, with the chart's name unless it already has it. */}}
{{- define "mimo-operator.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* Cluster-scoped objects carry the release namespace too: two releases in two namespaces must not collide. */}}
{{- define "mimo-operator.clusterName" -}}
{{- printf "%s-%s" .Release.Namespace (include "mimo-operator.fullname" .) -}}
{{- end -}}

{{- define "mimo-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "mimo-operator.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/*
The pods' identifying labels. app.kubernetes.io/name is fixed to mimo-operator and not overridable: the
NetworkPolicy of every gang admits the operator's pods by exactly this label (OperatorIdentity in
mimo_operator/build/options.py), so the operator can reach the heads' drain and metrics endpoints.
*/}}
{{- define "mimo-operator.selectorLabels" -}}
app.kubernetes.io/name: mimo-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "mimo-operator.labels" -}}
{{ include "mimo-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "mimo-operator.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "mimo-operator.workerImage" -}}
{{- printf "%s:%s" .Values.workerImage.repository (default .Chart.AppVersion .Values.workerImage.tag) -}}
{{- end -}}

{{/* Leader election is needed exactly when more than one replica runs. */}}
{{- define "mimo-operator.leaderElection" -}}
{{- if gt (int .Values.replicas) 1 -}}true{{- end -}}
{{- end -}}

{{/* The namespaces the operator watches in namespaced mode: watchNamespaces, else the release's own. */}}
{{- define "mimo-operator.watchNamespaces" -}}
{{- $namespaces := .Values.rbac.watchNamespaces | default (list .Release.Namespace) -}}
{{- toJson (uniq $namespaces) -}}
{{- end -}}

{{- define "mimo-operator.validate" -}}
{{- if not (has .Values.rbac.mode (list "clusterWide" "namespaced")) -}}
{{- fail (printf "rbac.mode must be clusterWide or namespaced, not %q" .Values.rbac.mode) -}}
{{- end -}}
{{- if and (eq .Values.rbac.mode "clusterWide") .Values.rbac.watchNamespaces -}}
{{- fail "rbac.watchNamespaces is only used with rbac.mode namespaced (clusterWide watches every namespace)" -}}
{{- end -}}
{{- if not (has .Values.logLevel (list "info" "debug")) -}}
{{- fail (printf "logLevel must be info or debug, not %q" .Values.logLevel) -}}
{{- end -}}
{{- if lt (int .Values.replicas) 1 -}}
{{- fail "replicas must be at least 1" -}}
{{- end -}}
{{- if and .Values.metrics.serviceMonitor.enabled (not .Values.metrics.service.enabled) -}}
{{- fail "metrics.serviceMonitor.enabled needs metrics.service.enabled (the ServiceMonitor selects that Service)" -}}
{{- end -}}
{{- end -}}
