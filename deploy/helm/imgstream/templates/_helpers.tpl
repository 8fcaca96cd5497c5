{{/* Names and labels shared by every template. */}}
{{- define "imgstream.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "imgstream.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* Selector labels of one role: include with (dict "root" $ "role" $role). */}}
{{- define "imgstream.selector" -}}
app.kubernetes.io/name: {{ .root.Chart.Name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .role }}
{{- end -}}

{{- define "imgstream.secretName" -}}
{{- .Values.existingSecret | default (printf "%s-secrets" (include "imgstream.fullname" .)) -}}
{{- end -}}

{{/* The consumer group of a role's worker (app/settings.py Settings.group_id). */}}
{{- define "imgstream.group" -}}
{{- printf "%s-%s" .root.Values.settings.app_id .role -}}
{{- end -}}

{{/* The topic a role consumes; empty for the front, which consumes none. */}}
{{- define "imgstream.topic" -}}
{{- $s := .root.Values.settings -}}
{{- if eq .role "extractor" -}}{{ $s.input_topic }}
{{- else if hasPrefix "classifier-" .role -}}{{ $s.features_topic }}
{{- else if eq .role "dead-letter" -}}{{ $s.dead_letter_topic }}
{{- end -}}
{{- end -}}

{{/* Refuse bounds a consumer group cannot use: more members than partitions sit idle. */}}
{{- define "imgstream.checkReplicas" -}}
{{- $partitions := int .root.Values.settings.topic_partitions -}}
{{- if and (ne .role "front") (gt (int .spec.maxReplicas) $partitions) -}}
{{- fail (printf "roles.%s.maxReplicas (%d) exceeds settings.topic_partitions (%d): raise the topics' partitions first" .role (int .spec.maxReplicas) $partitions) -}}
{{- end -}}
{{- if gt (int .spec.minReplicas) (int .spec.maxReplicas) -}}
{{- fail (printf "roles.%s.minReplicas exceeds its maxReplicas" .role) -}}
{{- end -}}
{{- end -}}

{{/* settings.kafka_security_protocol and kafka_sasl_mechanism in the words of KEDA's Kafka scaler. */}}
{{- define "imgstream.kedaSasl" -}}
{{- $s := .Values.settings -}}
{{- if not (hasPrefix "SASL_" ($s.kafka_security_protocol | default "PLAINTEXT")) -}}none
{{- else -}}
{{- $mechanism := $s.kafka_sasl_mechanism | default "SCRAM-SHA-512" -}}
{{- get (dict "PLAIN" "plaintext" "SCRAM-SHA-256" "scram_sha256" "SCRAM-SHA-512" "scram_sha512") $mechanism -}}
{{- end -}}
{{- end -}}
