{{- define "peerbubble.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "peerbubble.labels" -}}
app.kubernetes.io/part-of: peerbubble
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "peerbubble.image" -}}
{{- $root := index . 0 -}}
{{- printf "%s/%s:%s" $root.Values.image.registry (index . 1) (default $root.Chart.AppVersion $root.Values.image.tag) -}}
{{- end -}}

{{- define "peerbubble.adminApiUrl" -}}
{{- printf "http://%s-admin-api.%s.svc:%d" (include "peerbubble.fullname" .) .Release.Namespace (int .Values.adminApi.service.port) -}}
{{- end -}}

{{/* The audience of bubble-servers' ServiceAccount tokens; empty when they present the bubble credential. */}}
{{- define "peerbubble.bubbleTokenAudience" -}}
{{- $plane := .Values.adminApi.controlPlane -}}
{{- if and $plane.enabled (eq $plane.bubbleServerAuth "serviceAccountToken") -}}
{{- default (printf "%s-admin-api.%s" (include "peerbubble.fullname" .) .Release.Namespace) $plane.tokenAudience -}}
{{- end -}}
{{- end -}}

{{- define "peerbubble.pod" -}}
{{- with .Values.image.pullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- with .Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}
