{{/* The release's base name: the release name, with "-sagashop" unless it says so already. */}}
{{- define "sagashop.fullname" -}}
{{- if contains "sagashop" .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-sagashop" .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* Labels on every object. */}}
{{- define "sagashop.labels" -}}
app.kubernetes.io/name: sagashop
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: sagashop
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{/* Selector labels of one component: (dict "root" $ "component" "order"). */}}
{{- define "sagashop.selectorLabels" -}}
app.kubernetes.io/name: sagashop
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* The one image. */}}
{{- define "sagashop.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* Kafka's bootstrap servers: the chart's broker, or the external one (required then). */}}
{{- define "sagashop.bootstrap" -}}
{{- if .Values.kafka.enabled -}}
{{- printf "%s-kafka:9092" (include "sagashop.fullname" .) -}}
{{- else -}}
{{- required "set kafka.bootstrapServers to your Kafka (host:port), or kafka.enabled=true for an in-cluster broker" .Values.kafka.bootstrapServers -}}
{{- end -}}
{{- end -}}

{{/* The name of the ConfigMap the operator writes for the saga. */}}
{{- define "sagashop.sagaName" -}}
{{- (.Files.Get "files/order-fulfilment.yaml" | fromYaml).metadata.name -}}
{{- end -}}

{{/* Pod-level security: never root. */}}
{{- define "sagashop.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
fsGroup: 65532
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* Container-level security: non-root, read-only root filesystem, no privilege escalation. */}}
{{- define "sagashop.containerSecurityContext" -}}
runAsNonRoot: true
readOnlyRootFilesystem: true
allowPrivilegeEscalation: false
capabilities:
  drop: [ALL]
{{- end -}}

{{/* Kafka settings every sagashop container gets. */}}
{{- define "sagashop.kafkaEnv" -}}
{{- $k := .Values.kafka }}
{{- if and $k.enabled (ne $k.securityProtocol "PLAINTEXT") }}
{{- fail "kafka.securityProtocol: the in-cluster broker (kafka.enabled) speaks PLAINTEXT only; set kafka.enabled=false and kafka.bootstrapServers for a secured Kafka" }}
{{- end }}
{{- if hasPrefix "SASL_" $k.securityProtocol }}
{{- if not $k.saslMechanism }}
{{- fail (printf "kafka.saslMechanism: %s needs PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512" $k.securityProtocol) }}
{{- end }}
{{- if not $k.existingSecret }}
{{- fail (printf "kafka.existingSecret: %s needs a Secret with KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD" $k.securityProtocol) }}
{{- end }}
{{- else if $k.saslMechanism }}
{{- fail (printf "kafka.saslMechanism is set but kafka.securityProtocol is %s: use SASL_SSL or SASL_PLAINTEXT" $k.securityProtocol) }}
{{- end }}
- name: KAFKA_BOOTSTRAP_SERVERS
  value: {{ include "sagashop.bootstrap" . | quote }}
{{- if ne $k.securityProtocol "PLAINTEXT" }}
- name: KAFKA_SECURITY_PROTOCOL
  value: {{ $k.securityProtocol | quote }}
{{- end }}
{{- with $k.saslMechanism }}
- name: KAFKA_SASL_MECHANISM
  value: {{ . | quote }}
{{- end }}
{{- if $k.tls.caSecret }}
- name: KAFKA_SSL_CA_LOCATION
  value: /etc/sagashop/kafka-ca/ca.crt
{{- end }}
{{- $properties := list }}
{{- with $k.clientProperties }}{{ $properties = append $properties . }}{{ end }}
{{- if $k.tls.clientSecret }}
{{- if not (has $k.securityProtocol (list "SSL" "SASL_SSL")) }}
{{- fail (printf "kafka.tls.clientSecret: a client certificate needs TLS; kafka.securityProtocol is %s (use SSL or SASL_SSL)" $k.securityProtocol) }}
{{- end }}
{{- $properties = append $properties "ssl.certificate.location=/etc/sagashop/kafka-client/tls.crt,ssl.key.location=/etc/sagashop/kafka-client/tls.key" }}
{{- end }}
{{- with $properties }}
- name: KAFKA_CLIENT_PROPERTIES
  value: {{ join "," . | quote }}
{{- end }}
- name: LOG_FORMAT
  value: json
{{- with .Values.otel.endpoint }}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ . | quote }}
{{- end }}
{{- end -}}

{{/* envFrom for the Kafka credentials Secret, when one is named. */}}
{{- define "sagashop.kafkaEnvFrom" -}}
{{- with .Values.kafka.existingSecret }}
envFrom:
  - secretRef:
      name: {{ . }}
{{- end }}
{{- end -}}


{{/* The Kafka CA certificate's volume mount and volume, when kafka.tls.caSecret is set. */}}
{{- define "sagashop.kafkaCaMount" -}}
{{- if .Values.kafka.tls.caSecret }}
- name: kafka-ca
  mountPath: /etc/sagashop/kafka-ca
  readOnly: true
{{- end }}
{{- if .Values.kafka.tls.clientSecret }}
- name: kafka-client
  mountPath: /etc/sagashop/kafka-client
  readOnly: true
{{- end }}
{{- end -}}

{{- define "sagashop.kafkaCaVolume" -}}
{{- with .Values.kafka.tls.caSecret }}
- name: kafka-ca
  secret:
    secretName: {{ . }}
    items:
      - key: {{ $.Values.kafka.tls.caKey }}
        path: ca.crt
{{- end }}
{{- with .Values.kafka.tls.clientSecret }}
- name: kafka-client
  secret:
    secretName: {{ . }}
    items:
      - {key: {{ $.Values.kafka.tls.clientCertKey }}, path: tls.crt}
      - {key: {{ $.Values.kafka.tls.clientKeyKey }}, path: tls.key}
{{- end }}
{{- end -}}

{{/*
The names of the services, from files/services.json (`sagashop services`, regenerated with
`cargo run -p sagashop -- services > charts/sagashop/files/services.json`; a test checks it),
as a JSON list. A key of .Values.services that names no service fails the render.
*/}}
{{- define "sagashop.serviceNames" -}}
{{- $names := list }}
{{- range (.Files.Get "files/services.json" | fromJsonArray) }}
{{- $names = append $names .name }}
{{- end }}
{{- range $name, $_ := (.Values.services | default dict) }}
{{- if not (has $name $names) }}
{{- fail (printf "services.%s: there is no such service; they are %s" $name (join ", " $names)) }}
{{- end }}
{{- end }}
{{- $names | sortAlpha | toJson }}
{{- end }}

{{/* The Secret holding the admin token, or "" when the system is read-only. */}}
{{- define "sagashop.adminSecret" -}}
{{- if .Values.admin.existingSecret -}}
{{- .Values.admin.existingSecret -}}
{{- else if .Values.admin.token -}}
{{- printf "%s-admin" (include "sagashop.fullname" .) -}}
{{- end -}}
{{- end -}}
