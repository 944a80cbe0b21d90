{{/* Chart name, truncated to the 63 characters Kubernetes allows. */}}
{{- define "driftline.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Fully qualified app name: release-chart unless the release name holds the chart name. */}}
{{- define "driftline.fullname" -}}
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

{{- define "driftline.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "driftline.selectorLabels" -}}
app.kubernetes.io/name: {{ include "driftline.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: worker
{{- end }}

{{- define "driftline.labels" -}}
helm.sh/chart: {{ include "driftline.chart" . }}
{{ include "driftline.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: driftline
{{- end }}

{{- define "driftline.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "driftline.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "driftline.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag }}
{{- if hasPrefix "sha256:" $tag }}
{{- printf "%s@%s" .Values.image.repository $tag }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}
{{- end }}

{{/* Name of the Secret holding Kafka credentials and keys ("" when there is none). */}}
{{- define "driftline.secretName" -}}
{{- if .Values.secret.existingSecret }}
{{- .Values.secret.existingSecret }}
{{- else if .Values.secret.create }}
{{- include "driftline.fullname" . }}
{{- end }}
{{- end }}

{{- define "driftline.usesSasl" -}}
{{- if hasPrefix "SASL_" .Values.kafka.securityProtocol }}true{{ end }}
{{- end }}

{{- define "driftline.usesTls" -}}
{{- if or (eq .Values.kafka.securityProtocol "SSL") (eq .Values.kafka.securityProtocol "SASL_SSL") }}true{{ end }}
{{- end }}

{{/* Workers at most: the autoscaler's ceiling, or the fixed replica count. */}}
{{- define "driftline.maxWorkers" -}}
{{- if .Values.autoscaling.enabled }}{{ int .Values.autoscaling.maxReplicas }}{{ else }}{{ int .Values.replicaCount }}{{ end }}
{{- end }}

{{/*
Checks that make `helm template` / `helm install` fail with a clear message instead of
deploying something that cannot work. Included by the Deployment.
*/}}
{{- define "driftline.validate" -}}
{{- $partitions := int .Values.kafka.partitions }}
{{- if .Values.autoscaling.enabled }}
{{- if gt (int .Values.autoscaling.maxReplicas) $partitions }}
{{- fail (printf "autoscaling.maxReplicas (%d) exceeds kafka.partitions (%d): a consumer group never has more active workers than partitions. Lower autoscaling.maxReplicas or add partitions to %s and raise kafka.partitions." (int .Values.autoscaling.maxReplicas) $partitions .Values.kafka.topics.inference) }}
{{- end }}
{{- if gt (int .Values.autoscaling.minReplicas) (int .Values.autoscaling.maxReplicas) }}
{{- fail (printf "autoscaling.minReplicas (%d) exceeds autoscaling.maxReplicas (%d)." (int .Values.autoscaling.minReplicas) (int .Values.autoscaling.maxReplicas)) }}
{{- end }}
{{- if not (has .Values.autoscaling.kind (list "keda" "hpa")) }}
{{- fail (printf "autoscaling.kind must be keda or hpa, not %q." .Values.autoscaling.kind) }}
{{- end }}
{{- else if gt (int .Values.replicaCount) $partitions }}
{{- fail (printf "replicaCount (%d) exceeds kafka.partitions (%d): a consumer group never has more active workers than partitions. Lower replicaCount or add partitions to %s and raise kafka.partitions." (int .Values.replicaCount) $partitions .Values.kafka.topics.inference) }}
{{- end }}
{{- if and .Values.secret.create .Values.secret.existingSecret }}
{{- fail "secret.create and secret.existingSecret are both set: choose one." }}
{{- end }}
{{- $secret := include "driftline.secretName" . }}
{{- if include "driftline.usesSasl" . }}
{{- if not .Values.kafka.saslMechanism }}
{{- fail (printf "kafka.securityProtocol %s needs kafka.saslMechanism (PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512)." .Values.kafka.securityProtocol) }}
{{- end }}
{{- if not $secret }}
{{- fail (printf "kafka.securityProtocol %s needs SASL credentials, which come only from a Secret: set secret.existingSecret (keys %s, %s) or secret.create=true with secret.saslUsername and secret.saslPassword." .Values.kafka.securityProtocol .Values.secret.keys.saslUsername .Values.secret.keys.saslPassword) }}
{{- end }}
{{- if and .Values.secret.create (or (not .Values.secret.saslUsername) (not .Values.secret.saslPassword)) }}
{{- fail "secret.create=true with SASL needs secret.saslUsername and secret.saslPassword." }}
{{- end }}
{{- end }}
{{- if and (or .Values.kafka.tls.caCert .Values.kafka.tls.clientCert) (not (include "driftline.usesTls" .)) }}
{{- fail (printf "kafka.tls.caCert / kafka.tls.clientCert need kafka.securityProtocol SSL or SASL_SSL, not %s." .Values.kafka.securityProtocol) }}
{{- end }}
{{- if and (or .Values.kafka.tls.caCert .Values.kafka.tls.clientCert) (not $secret) }}
{{- fail "kafka.tls.caCert / kafka.tls.clientCert read the certificates from a Secret: set secret.existingSecret or secret.create=true." }}
{{- end }}
{{- range $key, $_ := .Values.config }}
{{- if regexMatch "(?i)(password|secret|sasl_username|snapshot_key|oauthbearer|_key$)" $key }}
{{- fail (printf "config.%s looks like a credential: credentials go in the Secret (see secret.*), never in the ConfigMap." $key) }}
{{- end }}
{{- end }}
{{- end }}
