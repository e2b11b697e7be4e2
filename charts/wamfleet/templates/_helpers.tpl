{{/*
Names. The full name is kept short (36 characters) so that every object name built from it
stays within its limit: KubeRay refuses RayCluster and RayJob names over 47 characters, and a
StatefulSet's name plus its revision hash must fit a 63-character label.
*/}}
{{- define "wamfleet.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 36 | trimSuffix "-" -}}
{{- end -}}

{{- define "wamfleet.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 36 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 36 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 36 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "wamfleet.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels: call with (dict "ctx" $ "component" "platform"). */}}
{{- define "wamfleet.selectorLabels" -}}
app.kubernetes.io/name: {{ include "wamfleet.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "wamfleet.labels" -}}
helm.sh/chart: {{ include "wamfleet.chart" .ctx }}
{{ include "wamfleet.selectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: wamfleet
{{- end -}}

{{/* Object names. */}}
{{- define "wamfleet.platform.name" -}}{{ include "wamfleet.fullname" . }}-platform{{- end -}}
{{- define "wamfleet.mlflow.name" -}}{{ include "wamfleet.fullname" . }}-mlflow{{- end -}}
{{- define "wamfleet.postgresql.name" -}}{{ include "wamfleet.fullname" . }}-postgresql{{- end -}}
{{- define "wamfleet.minio.name" -}}{{ include "wamfleet.fullname" . }}-minio{{- end -}}
{{- define "wamfleet.ray.name" -}}{{ include "wamfleet.fullname" . }}-ray{{- end -}}
{{- define "wamfleet.rayjob.name" -}}{{ include "wamfleet.fullname" . }}-retrain{{- end -}}
{{- define "wamfleet.kserveTemplate.name" -}}{{ include "wamfleet.fullname" . }}-kserve-template{{- end -}}
{{- define "wamfleet.workload.serviceAccount" -}}{{ include "wamfleet.fullname" . }}-workload{{- end -}}

{{/* KubeRay names the head Service of RayCluster <name> `<name>-head-svc`. */}}
{{- define "wamfleet.ray.headService" -}}{{ include "wamfleet.ray.name" . }}-head-svc{{- end -}}

{{/* The namespace KFP runs pipeline pods in (where `wamfleet-pipelines` must exist). */}}
{{- define "wamfleet.pipelines.namespace" -}}
{{- default .Release.Namespace .Values.pipelines.namespace -}}
{{- end -}}

{{/* A Service's cluster DNS name: call with (dict "ctx" $ "name" "svc"). Fully qualified, so
pipeline pods in another namespace resolve it too. */}}
{{- define "wamfleet.svcHost" -}}
{{- printf "%s.%s.svc.%s" .name .ctx.Release.Namespace .ctx.Values.clusterDomain -}}
{{- end -}}

{{/* Images: "repository:tag". */}}
{{- define "wamfleet.image" -}}
{{- printf "%s:%s" .repository .tag -}}
{{- end -}}

{{/*
Security contexts: the same for every pod and container of the release (non-root user 10001,
read-only root filesystem, no privilege escalation, no capabilities, the runtime's seccomp
profile). Not configurable on purpose: writable paths are emptyDir volumes.
*/}}
{{- define "wamfleet.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
fsGroupChangePolicy: OnRootMismatch
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "wamfleet.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
readOnlyRootFilesystem: true
allowPrivilegeEscalation: false
privileged: false
capabilities:
  drop:
    - ALL
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* imagePullSecrets for a pod spec: call with (dict "ctx" $ "indent" n); nothing when none. */}}
{{- define "wamfleet.imagePullSecrets" -}}
{{- $indent := int .indent -}}
{{- with .ctx.Values.imagePullSecrets -}}
{{- $refs := list -}}
{{- range . -}}
{{- $refs = append $refs (dict "name" .) -}}
{{- end -}}
{{- toYaml (dict "imagePullSecrets" $refs) | nindent $indent -}}
{{- end -}}
{{- end -}}

{{/* Credentials: which Secret and key each one comes from (an existingSecret, or the chart's). */}}
{{- define "wamfleet.db.secretName" -}}
{{- default (include "wamfleet.postgresql.name" .) .Values.postgresql.existingSecret -}}
{{- end -}}

{{- define "wamfleet.s3.secretName" -}}
{{- default (printf "%s-s3" (include "wamfleet.fullname" .)) .Values.s3.existingSecret -}}
{{- end -}}

{{- define "wamfleet.admin.secretName" -}}
{{- default (printf "%s-admin" (include "wamfleet.fullname" .)) .Values.platform.adminToken.existingSecret -}}
{{- end -}}

{{- define "wamfleet.mlflow.secretName" -}}
{{- default (include "wamfleet.mlflow.name" .) .Values.mlflow.existingSecret -}}
{{- end -}}

{{/* The S3 API as host:port: s3.endpoint, or the bundled MinIO's Service. */}}
{{- define "wamfleet.s3.endpoint" -}}
{{- if .Values.s3.endpoint -}}
{{- .Values.s3.endpoint -}}
{{- else -}}
{{- printf "%s:9000" (include "wamfleet.svcHost" (dict "ctx" . "name" (include "wamfleet.minio.name" .))) -}}
{{- end -}}
{{- end -}}

{{- define "wamfleet.s3.url" -}}
{{- printf "%s://%s" (ternary "https" "http" .Values.s3.secure) (include "wamfleet.s3.endpoint" .) -}}
{{- end -}}

{{- define "wamfleet.mlflow.url" -}}
{{- printf "http://%s:%d" (include "wamfleet.svcHost" (dict "ctx" . "name" (include "wamfleet.mlflow.name" .))) (int .Values.mlflow.service.port) -}}
{{- end -}}

{{- define "wamfleet.ray.address" -}}
{{- if .Values.ray.enabled -}}
{{- printf "ray://%s:10001" (include "wamfleet.svcHost" (dict "ctx" . "name" (include "wamfleet.ray.headService" .))) -}}
{{- else -}}
{{- .Values.ray.address -}}
{{- end -}}
{{- end -}}

{{- define "wamfleet.serving.serviceAccount" -}}
{{- if .Values.serving.serviceAccount.create -}}
{{- default (printf "%s-serving" (include "wamfleet.fullname" .)) .Values.serving.serviceAccount.name -}}
{{- else -}}
{{- .Values.serving.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/*
The WAMFLEET_* settings every wamfleet workload shares (platform, Ray pods): object store,
catalog, MLflow. Credentials only through secretKeyRef.
*/}}
{{- define "wamfleet.env.common" -}}
- name: WAMFLEET_STORAGE_BACKEND
  value: s3
- name: WAMFLEET_S3_ENDPOINT
  value: {{ include "wamfleet.s3.endpoint" . | quote }}
- name: WAMFLEET_S3_SECURE
  value: {{ .Values.s3.secure | quote }}
- name: WAMFLEET_S3_BUCKET
  value: {{ .Values.s3.bucket | quote }}
{{- with .Values.s3.region }}
- name: WAMFLEET_S3_REGION
  value: {{ . | quote }}
{{- end }}
- name: WAMFLEET_S3_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "wamfleet.s3.secretName" . }}
      key: {{ .Values.s3.accessKeyKey }}
- name: WAMFLEET_S3_SECRET_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "wamfleet.s3.secretName" . }}
      key: {{ .Values.s3.secretKeyKey }}
- name: WAMFLEET_CATALOG_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "wamfleet.db.secretName" . }}
      key: {{ .Values.postgresql.catalogUrlKey }}
- name: WAMFLEET_MLFLOW_TRACKING_URI
  valueFrom:
    secretKeyRef:
      name: {{ include "wamfleet.mlflow.secretName" . }}
      key: {{ .Values.mlflow.trackingUriKey }}
- name: WAMFLEET_REGISTERED_MODEL
  value: {{ .Values.platform.registeredModel | quote }}
- name: WAMFLEET_LOG_LEVEL
  value: {{ .Values.platform.logLevel | quote }}
- name: HOME
  value: /tmp
{{- end -}}

{{/* The projected service-account token kfp.Client reads in multi-user Kubeflow Pipelines. */}}
{{- define "wamfleet.kfpTokenVolume" -}}
- name: kfp-token
  projected:
    sources:
      - serviceAccountToken:
          path: token
          audience: pipelines.kubeflow.org
          expirationSeconds: 7200
{{- end -}}

{{/*
A generated credential, kept across upgrades: `explicit` when given, else the value already in
the Secret `name` (lookup; empty under `helm template`), else `length` random characters.
Call with (dict "namespace" ns "name" secret "key" key "explicit" value "length" n).
*/}}
{{- define "wamfleet.secretValue" -}}
{{- $data := dict -}}
{{- $existing := lookup "v1" "Secret" .namespace .name -}}
{{- if $existing -}}
{{- $data = $existing.data | default dict -}}
{{- end -}}
{{- if .explicit -}}
{{- .explicit -}}
{{- else if hasKey $data .key -}}
{{- index $data .key | b64dec -}}
{{- else -}}
{{- randAlphaNum (int .length) -}}
{{- end -}}
{{- end -}}
