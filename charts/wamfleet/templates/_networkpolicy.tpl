{{/* NetworkPolicy peers. `release` picks this release's pods by component. */ -}}
{{- define "wamfleet.np.release" -}}
- podSelector:
    matchLabels:
      app.kubernetes.io/instance: {{ .ctx.Release.Name }}
    matchExpressions:
      - key: app.kubernetes.io/component
        operator: In
        values:
          {{- toYaml .components | nindent 10 }}
{{- end -}}
{{- define "wamfleet.np.pipelineSteps" -}}
- namespaceSelector:
    matchLabels:
      kubernetes.io/metadata.name: {{ include "wamfleet.pipelines.namespace" . }}
  podSelector:
    {{- toYaml .Values.networkPolicy.pipelinePodSelector | nindent 4 }}
{{- end -}}
{{- define "wamfleet.np.servingPods" -}}
- podSelector:
    matchLabels:
      app.kubernetes.io/part-of: wamfleet
      app.kubernetes.io/component: policy-server
{{- end -}}
{{/* Robots: the configured peers, or anywhere (a rule without `from`). */ -}}
{{- define "wamfleet.np.robotRule" -}}
- ports:
    {{- range .ports }}
    - port: {{ . }}
      protocol: TCP
    {{- end }}
  {{- with .ctx.Values.networkPolicy.robotPeers }}
  from:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end -}}
