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

{{/* The gateway (gateway.enabled): its object names, labels and selector (component
gateway, so neither selects the other's pods). */}}
{{- define "modeldeploy.gatewayName" -}}
{{- printf "%s-gateway" (include "modeldeploy.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "modeldeploy.gatewaySelectorLabels" -}}
app.kubernetes.io/name: {{ include "modeldeploy.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: gateway
{{- end }}

{{- define "modeldeploy.gatewayLabels" -}}
helm.sh/chart: {{ include "modeldeploy.chart" . }}
{{ include "modeldeploy.gatewaySelectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: modeldeploy
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

{{- define "modeldeploy.leaseName" -}}
{{- default (include "modeldeploy.fullname" .) .Values.leaderElection.leaseName }}
{{- end }}

{{/* Values that exclude each other, refused at render time with what to change. */}}
{{- define "modeldeploy.validate" -}}
{{- if and .Values.peering.enabled .Values.leaderElection.enabled }}
{{- fail "peering.enabled and leaderElection.enabled exclude each other (Kopf peering pauses every replica that sees another): turn one off" }}
{{- end }}
{{- if and .Values.gateway.enabled (gt (len .Values.watchNamespaces) 1) }}
{{- fail "gateway.enabled with more than one of watchNamespaces: the gateway watches one namespace or every namespace; serve one namespace, or every one" }}
{{- end }}
{{- if and (gt (int .Values.replicaCount) 1) (not .Values.leaderElection.enabled) }}
{{- fail "replicaCount above 1 needs leaderElection.enabled: without the Lease every replica would write" }}
{{- end }}
{{- end }}

{{/* The operator's settings file (modeldeploy run --config), rendered as JSON, which is
YAML too (and keeps large integers out of scientific notation). Keys are the operator's
own (operator/modeldeploy/settings.py); it refuses unknown ones. */}}
{{- define "modeldeploy.settings" -}}
{{- $planning := deepCopy .Values.planning }}
{{- if .Values.gateway.enabled }}
{{- /* The gateway holds requests for a model at zero and wakes it (docs/gateway.md). */}}
{{- $_ := set $planning "scaleToZero" true }}
{{- if .Values.gateway.networkPolicy.models }}
{{- /* Model pods: ingress on the serving port from the gateway's and the operator's pods. */}}
{{- $home := dict "matchLabels" (dict "kubernetes.io/metadata.name" .Release.Namespace) }}
{{- $_ := set $planning "modelIngressFrom" (list
  (dict "namespaceSelector" $home "podSelector" (dict "matchLabels" (include "modeldeploy.gatewaySelectorLabels" . | fromYaml)))
  (dict "namespaceSelector" $home "podSelector" (dict "matchLabels" (include "modeldeploy.selectorLabels" . | fromYaml)))
) }}
{{- end }}
{{- end }}
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
  "leaderElection" (dict
    "enabled" .Values.leaderElection.enabled
    "leaseName" (include "modeldeploy.leaseName" .)
    "namespace" .Release.Namespace
    "leaseDurationSeconds" .Values.leaderElection.leaseDurationSeconds
    "renewDeadlineSeconds" .Values.leaderElection.renewDeadlineSeconds
    "retryPeriodSeconds" .Values.leaderElection.retryPeriodSeconds
  )
  "metricsPort" .Values.metrics.port
  "healthPort" .Values.health.port
  "bindAddress" "0.0.0.0"
  "logFormat" .Values.config.logFormat
  "planning" $planning
}}
{{- if .Values.admission.enabled }}
{{- $_ := set $settings "admission" (dict
  "enabled" true
  "port" .Values.admission.port
  "certFile" (printf "%s/tls.crt" (include "modeldeploy.webhookCertDir" .))
  "keyFile" (printf "%s/tls.key" (include "modeldeploy.webhookCertDir" .))
) }}
{{- end }}
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

{{/* The admission webhook (admission.enabled): its Service, the Secret with its serving
certificate (kubernetes.io/tls: tls.crt, tls.key, ca.crt), and where the pod mounts it. */}}
{{- define "modeldeploy.webhookServiceName" -}}
{{- printf "%s-webhook" (include "modeldeploy.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "modeldeploy.webhookSecretName" -}}
{{- printf "%s-webhook-tls" (include "modeldeploy.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "modeldeploy.webhookCertDir" -}}
/etc/modeldeploy-webhook
{{- end }}

{{/* The DNS names the API server may call the webhook Service by. */}}
{{- define "modeldeploy.webhookDNSNames" -}}
{{- $service := include "modeldeploy.webhookServiceName" . }}
{{- $namespace := .Release.Namespace }}
{{- toJson (list
  (printf "%s.%s.svc" $service $namespace)
  (printf "%s.%s.svc.cluster.local" $service $namespace)
  (printf "%s.%s" $service $namespace)
  $service) }}
{{- end }}

{{/* The generated CA and serving certificate (admission.enabled without cert-manager), as
JSON of the Secret's data (base64): the existing Secret's when it holds all three keys (a
`lookup`, so `helm upgrade` keeps the certificate), else a new CA and a certificate it signs
(valid 10 years). `helm template` and Argo CD cannot look up, so they generate new ones on
every render. Computed once per render and kept in .Values, so the Secret, the webhook's
caBundle and the pod's checksum annotation (templates are rendered one by one) agree. */}}
{{- define "modeldeploy.webhookTLS" -}}
{{- if not (hasKey .Values.admission "_generatedTLS") }}
{{- $data := dict }}
{{- $existing := lookup "v1" "Secret" .Release.Namespace (include "modeldeploy.webhookSecretName" .) }}
{{- if and $existing (hasKey $existing "data") }}
{{- $found := get $existing "data" }}
{{- if and (index $found "ca.crt") (index $found "tls.crt") (index $found "tls.key") }}
{{- $data = dict "ca.crt" (index $found "ca.crt") "tls.crt" (index $found "tls.crt") "tls.key" (index $found "tls.key") }}
{{- end }}
{{- end }}
{{- if not $data }}
{{- $names := include "modeldeploy.webhookDNSNames" . | fromJsonArray }}
{{- $ca := genCA (printf "%s-webhook-ca" (include "modeldeploy.fullname" .)) 3650 }}
{{- $cert := genSignedCert (first $names) nil $names 3650 $ca }}
{{- $data = dict "ca.crt" ($ca.Cert | b64enc) "tls.crt" ($cert.Cert | b64enc) "tls.key" ($cert.Key | b64enc) }}
{{- end }}
{{- $_ := set .Values.admission "_generatedTLS" $data }}
{{- end }}
{{- toJson (get .Values.admission "_generatedTLS") }}
{{- end }}

{{/* The namespaces whose ModelDeployments the API server sends to the webhook:
admission.namespaceSelector when set; else the served namespaces (watchNamespaces); else
every namespace but kube-system and the release's own. */}}
{{- define "modeldeploy.webhookNamespaceSelector" -}}
{{- if .Values.admission.namespaceSelector }}
{{- toYaml .Values.admission.namespaceSelector }}
{{- else }}
matchExpressions:
  - key: kubernetes.io/metadata.name
{{- if .Values.watchNamespaces }}
    operator: In
    values: {{ toJson .Values.watchNamespaces }}
{{- else }}
    operator: NotIn
    values: {{ toJson (list "kube-system" .Release.Namespace | uniq) }}
{{- end }}
{{- end }}
{{- end }}
