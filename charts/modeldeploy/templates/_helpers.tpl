{{/* The chart name (app.kubernetes.io/name). */}}
{{- define "modeldeploy.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The prefix of every object name: "<release>-modeldeploy", or the release name when it
already contains the chart name. */}}
{{- define "modeldeploy.fullname" -}}
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

{{- define "modeldeploy.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every object the chart renders. */}}
{{- define "modeldeploy.labels" -}}
helm.sh/chart: {{ include "modeldeploy.chart" . }}
{{ include "modeldeploy.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: modeldeploy
{{- end }}

{{/* The operator pod's selector (immutable in the Deployment: keep it small). */}}
{{- define "modeldeploy.selectorLabels" -}}
app.kubernetes.io/name: {{ include "modeldeploy.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "modeldeploy.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "modeldeploy.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The operator image reference: repository plus digest, else tag, else appVersion. */}}
{{- define "modeldeploy.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{- define "modeldeploy.peeringName" -}}
{{- default (include "modeldeploy.fullname" .) .Values.peering.name }}
{{- end }}

{{/* The operator's settings file (modeldeploy run --config), rendered as JSON, which is
YAML too (and keeps large integers out of scientific notation). Keys are the operator's
own (operator/modeldeploy/settings.py); it refuses unknown ones. */}}
{{- define "modeldeploy.settings" -}}
{{- $planning := deepCopy .Values.planning }}
{{- if not $planning.operatorImage }}
{{- $_ := set $planning "operatorImage" (include "modeldeploy.image" .) }}
{{- end }}
{{- $settings := dict
  "namespaces" .Values.watchNamespaces
  "resyncSeconds" .Values.config.resyncSeconds
  "autoscaleIntervalSeconds" .Values.config.autoscaleIntervalSeconds
  "scrapeTimeoutSeconds" .Values.config.scrapeTimeoutSeconds
  "maxScaleUpStep" .Values.config.maxScaleUpStep
  "peering" (ternary (include "modeldeploy.peeringName" .) nil .Values.peering.enabled)
  "metricsPort" .Values.metrics.port
  "healthPort" .Values.health.port
  "bindAddress" "0.0.0.0"
  "logFormat" .Values.config.logFormat
  "planning" $planning
}}
{{- toPrettyJson $settings }}
{{- end }}

{{/* The Helm resource policy annotation of the CRDs, when crds.keep is set. */}}
{{- define "modeldeploy.crdMetadata" -}}
metadata:
{{- if .Values.crds.keep }}
  annotations:
    helm.sh/resource-policy: keep
{{- end }}
{{ end }}
