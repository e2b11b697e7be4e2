{{/*
A RayCluster spec (the RayCluster's, or a RayJob's own cluster): a head without GPUs and one GPU
worker group, all in the pipeline image with the shared WAMFLEET_* settings (a RayJob's entrypoint
runs on the head). Call with (dict "ctx" $).
*/}}
{{- define "wamfleet.ray.clusterSpec" -}}
{{- $ := .ctx -}}
{{- $r := $.Values.ray -}}
{{- $w := $r.gpuWorkers -}}
{{- if and $w.enabled (or (lt (int $w.replicas) (int $w.minReplicas)) (gt (int $w.replicas) (int $w.maxReplicas))) -}}
{{- fail (printf "ray.gpuWorkers: replicas %d must lie within minReplicas %d and maxReplicas %d" (int $w.replicas) (int $w.minReplicas) (int $w.maxReplicas)) -}}
{{- end -}}
rayVersion: {{ $r.rayVersion | quote }}
{{- if $r.autoscaling.enabled }}
enableInTreeAutoscaling: true
autoscalerOptions:
  upscalingMode: Default
  idleTimeoutSeconds: {{ $r.autoscaling.idleTimeoutSeconds }}
  env:
    - name: HOME
      value: /tmp
  volumeMounts:
    - name: tmp
      mountPath: /tmp
  resources:
    requests:
      cpu: 200m
      memory: 256Mi
    limits:
      memory: 512Mi
  securityContext:
    {{- include "wamfleet.containerSecurityContext" $ | nindent 4 }}
{{- end }}
headGroupSpec:
  serviceType: ClusterIP
  rayStartParams:
    {{- toYaml (merge (dict "dashboard-host" "0.0.0.0") $r.head.rayStartParams) | nindent 4 }}
  template:
    metadata:
      labels:
        {{- include "wamfleet.labels" (dict "ctx" $ "component" "ray") | nindent 8 }}
    spec:
      {{- if not $r.autoscaling.enabled }}
      serviceAccountName: {{ include "wamfleet.workload.serviceAccount" $ }}
      automountServiceAccountToken: false
      {{- else }}
      # No serviceAccountName: KubeRay creates one (and its Role) for the autoscaler sidecar.
      {{- end }}
      securityContext:
        {{- include "wamfleet.podSecurityContext" $ | nindent 8 }}
      {{- include "wamfleet.imagePullSecrets" (dict "ctx" $ "indent" 6) }}
      containers:
        - name: ray-head
          image: {{ include "wamfleet.image" $.Values.images.pipeline }}
          imagePullPolicy: {{ $.Values.images.pipeline.pullPolicy }}
          env:
            {{- include "wamfleet.env.common" $ | nindent 12 }}
            - name: WAMFLEET_DATA_DIR
              value: /tmp/wamfleet-data
          ports:
            - name: gcs-server
              containerPort: 6379
              protocol: TCP
            - name: dashboard
              containerPort: 8265
              protocol: TCP
            - name: client
              containerPort: 10001
              protocol: TCP
          resources:
            {{- toYaml $r.head.resources | nindent 12 }}
          volumeMounts:
            - name: tmp
              mountPath: /tmp
            - name: home
              mountPath: /home/wamfleet
            - name: dshm
              mountPath: /dev/shm
          securityContext:
            {{- include "wamfleet.containerSecurityContext" $ | nindent 12 }}
      volumes:
        - name: tmp
          emptyDir: {}
        - name: home
          emptyDir: {}
        - name: dshm
          emptyDir:
            medium: Memory
            sizeLimit: {{ $r.head.shmSize }}
      {{- with $r.head.nodeSelector }}
      nodeSelector:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $r.head.tolerations }}
      tolerations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
{{- if $w.enabled }}
{{- $resources := deepCopy $w.resources -}}
{{- $limits := get $resources "limits" | default dict -}}
{{- $_ := set $limits "nvidia.com/gpu" (int $w.gpus) -}}
{{- $_ := set $resources "limits" $limits }}
workerGroupSpecs:
  - groupName: {{ $w.groupName }}
    replicas: {{ $w.replicas }}
    minReplicas: {{ $w.minReplicas }}
    maxReplicas: {{ $w.maxReplicas }}
    rayStartParams:
      {{- toYaml $w.rayStartParams | nindent 6 }}
    template:
      metadata:
        labels:
          {{- include "wamfleet.labels" (dict "ctx" $ "component" "ray") | nindent 10 }}
      spec:
        serviceAccountName: {{ include "wamfleet.workload.serviceAccount" $ }}
        automountServiceAccountToken: false
        securityContext:
          {{- include "wamfleet.podSecurityContext" $ | nindent 10 }}
        {{- include "wamfleet.imagePullSecrets" (dict "ctx" $ "indent" 8) }}
        containers:
          - name: ray-worker
            image: {{ include "wamfleet.image" $.Values.images.pipeline }}
            imagePullPolicy: {{ $.Values.images.pipeline.pullPolicy }}
            env:
              {{- include "wamfleet.env.common" $ | nindent 14 }}
              - name: WAMFLEET_DATA_DIR
                value: /tmp/wamfleet-data
            resources:
              {{- toYaml $resources | nindent 14 }}
            volumeMounts:
              - name: tmp
                mountPath: /tmp
              - name: home
                mountPath: /home/wamfleet
              - name: dshm
                mountPath: /dev/shm
            securityContext:
              {{- include "wamfleet.containerSecurityContext" $ | nindent 14 }}
        volumes:
          - name: tmp
            emptyDir: {}
          - name: home
            emptyDir: {}
          - name: dshm
            emptyDir:
              medium: Memory
              sizeLimit: {{ $w.shmSize }}
        {{- with $w.nodeSelector }}
        nodeSelector:
          {{- toYaml . | nindent 10 }}
        {{- end }}
        {{- with $w.tolerations }}
        tolerations:
          {{- toYaml . | nindent 10 }}
        {{- end }}
{{- end }}
{{- end -}}
