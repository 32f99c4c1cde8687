{{/* RBAC rules for cluster-scoped resources (a ClusterRole in every mode). */}}
{{- define "modeldeploy.clusterRules" -}}
# Planning: the node pool (GPU Feature Discovery / Node Feature Discovery labels,
# allocatable resources, taints), watched into an in-memory index.
- apiGroups: [""]
  resources: [nodes]
  verbs: [list, watch]
# Kopf: notice CRDs created after the operator started (the ModelDeployment CRD and the
# peering CRDs of a fresh install), without a restart. Kopf falls back to its start-up
# scan without it.
- apiGroups: [apiextensions.k8s.io]
  resources: [customresourcedefinitions]
  verbs: [list, watch]
# ModelPolicies (cluster-scoped): watched into an index; every pass and the admission
# webhook judge ModelDeployments by them (docs/compliance.md).
- apiGroups: [modeldeploy.io]
  resources: [modelpolicies]
  verbs: [list, watch]
# Namespaces: their labels, which ModelPolicies select by; and, serving a list of
# namespaces, Kopf checks which of them exist (without it, Kopf retries the refused list
# for about a minute at every start before it serves anything).
- apiGroups: [""]
  resources: [namespaces]
  verbs: [list, watch]
{{- end }}

{{/* RBAC rules for the namespaced resources the operator watches and writes: one rule per
purpose, so that each can be shown to be needed on its own (tests/e2e/test_chart_rbac.py). */}}
{{- define "modeldeploy.namespacedRules" -}}
# The custom resource: watched (Kopf lists, then watches) ...
- apiGroups: [modeldeploy.io]
  resources: [modeldeployments]
  verbs: [list, watch]
# ... and patched: the operator releases the finalizer earlier versions had Kopf put there.
- apiGroups: [modeldeploy.io]
  resources: [modeldeployments]
  verbs: [patch]
# Status: server-side apply of conditions, phase, decision, replicas, endpoint.
- apiGroups: [modeldeploy.io]
  resources: [modeldeployments/status]
  verbs: [patch]
# Children carry a controller ownerReference with blockOwnerDeletion; where the
# OwnerReferencesPermissionEnforcement admission plugin runs (OpenShift, hardened
# clusters), setting it needs update on the owner's finalizers subresource.
- apiGroups: [modeldeploy.io]
  resources: [modeldeployments/finalizers]
  verbs: [update]
{{- range $child := list (list "apps" "deployments") (list "" "services") (list "" "persistentvolumeclaims") }}
# {{ index $child 1 }} of ModelDeployments: watched; server-side applied (an apply
# that creates the object needs create as well as patch); pruned when no longer rendered.
- apiGroups: [{{ index $child 0 | quote }}]
  resources: [{{ index $child 1 }}]
  verbs: [list, watch]
- apiGroups: [{{ index $child 0 | quote }}]
  resources: [{{ index $child 1 }}]
  verbs: [create, patch]
- apiGroups: [{{ index $child 0 | quote }}]
  resources: [{{ index $child 1 }}]
  verbs: [delete]
{{- end }}
{{- if .Values.rbac.delegatedAutoscaling }}
# spec.autoscaling.mode keda or hpa: the ScaledObject or HorizontalPodAutoscaler of a
# ModelDeployment, server-side applied when it changes and deleted when the mode changes
# (rbac.delegatedAutoscaling; the native mode needs neither).
- apiGroups: [keda.sh]
  resources: [scaledobjects]
  verbs: [create, patch, delete]
- apiGroups: [autoscaling]
  resources: [horizontalpodautoscalers]
  verbs: [create, patch, delete]
{{- end }}
# The gateway's demand Leases (<ModelDeployment>-demand, labelled modeldeploy.io/demand):
# watched into an index, so a model at zero replicas wakes at once (docs/gateway.md); the
# operator never writes them.
- apiGroups: [coordination.k8s.io]
  resources: [leases]
  verbs: [list, watch]
# The NetworkPolicy of each ModelDeployment with the gateway (ingress to its pods only from
# the gateway and the operator): server-side applied when it changes, never read, and
# deleted when no longer wanted, also after the gateway is turned off (so not conditional).
- apiGroups: [networking.k8s.io]
  resources: [networkpolicies]
  verbs: [create, patch, delete]
# Pods of the managed Deployments: read-only, for status (unschedulable, image pull and
# crash-loop problems). The operator-native autoscaler scrapes the Ready ones by pod IP
# (no API call, so no rule; egress from the operator is not restricted).
- apiGroups: [""]
  resources: [pods]
  verbs: [list, watch]
# The ML-BOM ConfigMap of each ModelDeployment: server-side applied when it changes (an
# apply that creates it needs create as well as patch); garbage-collected with its owner.
# Never get, list or watch: the operator reads no ConfigMap (other applications' included).
- apiGroups: [""]
  resources: [configmaps]
  verbs: [create, patch]
# Events about decisions and failures (kubectl describe mdep).
- apiGroups: [""]
  resources: [events]
  verbs: [create]
# The Secret a ModelDeployment names in spec.model.credentialsSecret, read by name when
# the operator resolves a private source before planning; never listed or watched, and
# its values are kept nowhere.
- apiGroups: [""]
  resources: [secrets]
  verbs: [get]
{{- end }}
