{{/* Names and labels. */}}
{{- define "etk.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "etk.fullname" -}}
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

{{- define "etk.selectorLabels" -}}
app.kubernetes.io/name: {{ include "etk.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
The gateway's pods (Deployment, Services, PDB, topology spread, NetworkPolicy select these). The
migration Job's pod carries component "migrate" instead, so none of them selects it.
*/}}
{{- define "etk.gatewaySelectorLabels" -}}
{{ include "etk.selectorLabels" . }}
app.kubernetes.io/component: gateway
{{- end }}

{{/* The migration Job's pod. */}}
{{- define "etk.migrateSelectorLabels" -}}
{{ include "etk.selectorLabels" . }}
app.kubernetes.io/component: migrate
{{- end }}

{{/*
A duration of the gateway's configuration ("10s", "1m 30s", "500ms") in seconds (a float);
fails on a unit it does not know.
*/}}
{{- define "etk.seconds" -}}
{{- $units := dict "ms" 0.001 "s" 1.0 "sec" 1.0 "secs" 1.0 "m" 60.0 "min" 60.0 "mins" 60.0 "h" 3600.0 "hr" 3600.0 "hrs" 3600.0 -}}
{{- $parts := regexFindAll "[0-9.]+ *[a-z]+" (toString .) -1 -}}
{{- if not $parts }}{{ fail (printf "cannot read the duration %q" (toString .)) }}{{ end -}}
{{- $total := 0.0 -}}
{{- range $parts }}
{{- $unit := regexFind "[a-z]+$" . -}}
{{- if not (hasKey $units $unit) }}{{ fail (printf "cannot read the duration unit %q" $unit) }}{{ end -}}
{{- $total = addf $total (mulf (regexFind "^[0-9.]+" . | float64) (get $units $unit)) -}}
{{- end -}}
{{- $total -}}
{{- end }}

{{/*
terminationGracePeriodSeconds must leave the gateway its whole drain: server.drain_delay
(default 0s), then server.shutdown_grace (default 10s), then up to 5 s for cut-off steps to end
before their leases are released.
*/}}
{{- define "etk.terminationGrace" -}}
{{- $server := (include "etk.configDict" . | fromJson).server | default dict -}}
{{- $grace := include "etk.seconds" ($server.shutdown_grace | default "10s") | float64 -}}
{{- $delay := include "etk.seconds" ($server.drain_delay | default "0s") | float64 -}}
{{- $needed := addf $delay $grace 5.0 -}}
{{- if le (float64 .Values.terminationGracePeriodSeconds) $needed -}}
{{- fail (printf "terminationGracePeriodSeconds (%v) must exceed server.drain_delay (%vs) + server.shutdown_grace (%vs) + 5 s for the leases' release" .Values.terminationGracePeriodSeconds $delay $grace) -}}
{{- end -}}
{{- .Values.terminationGracePeriodSeconds -}}
{{- end }}
{{- define "etk.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "etk.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "etk.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "etk.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "etk.image" -}}
{{- if .Values.image.digest -}}
{{ .Values.image.repository }}@{{ .Values.image.digest }}
{{- else -}}
{{ .Values.image.repository }}:{{ default .Chart.AppVersion .Values.image.tag }}
{{- end }}
{{- end }}

{{/* The name of an existing Secret: secrets.<which>.name, or "<fullname>-<suffix>". */}}
{{- define "etk.secretName" -}}
{{- $s := index .root.Values.secrets .which -}}
{{- default (printf "%s-%s" (include "etk.fullname" .root) .suffix) $s.name -}}
{{- end }}

{{/* Where the mounted files are. */}}
{{- define "etk.configDir" -}}/etc/etjanstekort-gateway{{- end }}

{{/*
The configuration as a dict: values.config, then what the chart owns (listeners, mounted paths),
then extraConfig.
*/}}
{{- define "etk.configDict" -}}
{{- $dir := include "etk.configDir" . -}}
{{- $owned := dict
  "server" (dict "listen" (printf "0.0.0.0:%d" (int .Values.ports.grpc)))
  "admin" (dict "listen" (printf "0.0.0.0:%d" (int .Values.ports.admin)))
  "tls" (dict
    "cert" (printf "%s/tls/tls.crt" $dir)
    "key" (printf "%s/tls/tls.key" $dir)
    "client_ca" (printf "%s/client-ca/%s" $dir .Values.secrets.clientCa.key))
  "auth" (dict "principals_file" (printf "%s/principals/%s" $dir .Values.secrets.principals.key))
  "privacy" (dict "master_key_file" (printf "%s/master-key/%s" $dir .Values.secrets.masterKey.key))
-}}
{{- $config := mergeOverwrite (deepCopy .Values.config) $owned (deepCopy .Values.extraConfig) -}}
{{- toJson $config -}}
{{- end }}

{{/*
TOML from a dict. Not Helm's toToml: values read from YAML are float64, and toToml writes
`10.0` where the gateway needs the integer 10. Whole numbers are written as integers here.
*/}}
{{- define "etk.tomlValue" -}}
{{- if kindIs "string" . -}}
{{ toJson . }}
{{- else if kindIs "bool" . -}}
{{ . }}
{{- else if or (kindIs "float64" .) (kindIs "int" .) (kindIs "int64" .) -}}
{{- if eq (float64 .) (floor .) -}}{{ int64 . }}{{- else -}}{{ . }}{{- end -}}
{{- else if kindIs "slice" . -}}
[{{ range $i, $e := . }}{{ if $i }}, {{ end }}{{ include "etk.tomlValue" $e }}{{ end }}]
{{- else if kindIs "map" . -}}
{ {{- $first := true }}{{ range $k, $v := . }}{{ if not (kindIs "invalid" $v) }}{{ if not $first }}, {{ end }}{{ $first = false }}{{ include "etk.tomlKey" $k }} = {{ include "etk.tomlValue" $v }}{{ end }}{{ end -}} }
{{- else -}}
{{ fail (printf "config: a value of kind %s cannot be written as TOML" (kindOf .)) }}
{{- end -}}
{{- end }}

{{- define "etk.tomlKey" -}}
{{- if regexMatch "^[A-Za-z0-9_-]+$" . }}{{ . }}{{ else }}{{ toJson . }}{{ end -}}
{{- end }}

{{/* A table's keys, then its subtables ([path.sub]); null values (unset) are left out. */}}
{{- define "etk.tomlTable" -}}
{{- $path := .path -}}
{{- range $k, $v := .table }}
{{- if and (not (kindIs "map" $v)) (not (kindIs "invalid" $v)) }}
{{ include "etk.tomlKey" $k }} = {{ include "etk.tomlValue" $v }}
{{- end }}
{{- end }}
{{- range $k, $v := .table }}
{{- if kindIs "map" $v }}
{{- $p := ternary (include "etk.tomlKey" $k) (printf "%s.%s" $path (include "etk.tomlKey" $k)) (eq $path "") }}

[{{ $p }}]
{{- include "etk.tomlTable" (dict "path" $p "table" $v) }}
{{- end }}
{{- end }}
{{- end }}

{{- define "etk.configToml" -}}
# Rendered by the etjanstekort-gateway chart from values.config, the chart's own settings and
# values.extraConfig; laid over the binary's embedded defaults (config/default.toml).
{{- include "etk.tomlTable" (dict "path" "" "table" (include "etk.configDict" . | fromJson)) }}
{{- end }}

{{/*
The TCP port a URL names ("ldaps://host:636/…" → 636), else its scheme's default (ldap 389,
ldaps 636, http 80, https 443), else "".
*/}}
{{- define "etk.urlPort" -}}
{{- $u := toString . -}}
{{- $scheme := regexFind "^[a-z][a-z0-9+.-]*://" $u | trimSuffix "://" -}}
{{- $hostPort := regexReplaceAll "^[a-z][a-z0-9+.-]*://" $u "" -}}
{{- $hostPort = regexReplaceAll "/.*$" $hostPort "" -}}
{{- $hostPort = regexReplaceAll "^.*@" $hostPort "" -}}
{{- $port := regexFind ":[0-9]+$" $hostPort | trimPrefix ":" -}}
{{- if $port -}}{{ $port }}
{{- else -}}{{ get (dict "ldap" "389" "ldaps" "636" "http" "80" "https" "443") $scheme }}
{{- end -}}
{{- end }}

{{/* An egress rule whose ports become the one `port` when it is known (else the rule as is). */}}
{{- define "etk.egressTo" -}}
{{- if .port -}}
{{- toJson (dict "ports" (list (dict "port" (int .port) "protocol" "TCP")) "to" (.rule.to | default list)) -}}
{{- else -}}
{{- toJson .rule -}}
{{- end -}}
{{- end }}

{{/* The kind of a connector section in the effective configuration (which egress to open). */}}
{{- define "etk.kindOf" -}}
{{- $c := include "etk.configDict" .root | fromJson -}}
{{- $section := index $c .section | default dict -}}
{{- $section.kind | default "" -}}
{{- end }}

{{/*
Environment of the gateway container (root: ., migration: false) and of the migration Job
(migration: true). They differ only in the database URL: the Job uses
secrets.migrationDatabase (the owner role, DDL rights) when it is named, the pods always
secrets.database (a runtime role without DDL rights).
*/}}
{{- define "etk.env" -}}
{{- $root := .root -}}
{{- $db := $root.Values.secrets.database -}}
{{- $dbName := include "etk.secretName" (dict "root" $root "which" "database" "suffix" "database") -}}
{{- if and .migration $root.Values.secrets.migrationDatabase.name -}}
{{- $db = $root.Values.secrets.migrationDatabase -}}
{{- $dbName = $db.name -}}
{{- end -}}
{{- with $root -}}
- name: ETK_CONFIG
  value: {{ include "etk.configDir" . }}/config/gateway.toml
- name: ETK_DATABASE__URL
  valueFrom:
    secretKeyRef:
      name: {{ $dbName }}
      key: {{ $db.key }}
{{- if .Values.secrets.kivBindPassword.name }}
- name: ETK_KIV__BIND__PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ .Values.secrets.kivBindPassword.name }}
      key: {{ .Values.secrets.kivBindPassword.key }}
{{- end }}
{{- if .Values.secrets.smtpPassword.name }}
- name: ETK_SMTP__LOGIN__PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ .Values.secrets.smtpPassword.name }}
      key: {{ .Values.secrets.smtpPassword.key }}
{{- end }}
{{- with .Values.otel }}
{{- if .endpoint }}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ .endpoint | quote }}
{{- end }}
{{- if .protocol }}
- name: OTEL_EXPORTER_OTLP_PROTOCOL
  value: {{ .protocol | quote }}
{{- end }}
{{- if .serviceName }}
- name: OTEL_SERVICE_NAME
  value: {{ .serviceName | quote }}
{{- end }}
{{- if .resourceAttributes }}
- name: OTEL_RESOURCE_ATTRIBUTES
  value: {{ .resourceAttributes | quote }}
{{- end }}
{{- if .tracesSampler }}
- name: OTEL_TRACES_SAMPLER
  value: {{ .tracesSampler | quote }}
{{- end }}
{{- if .tracesSamplerArg }}
- name: OTEL_TRACES_SAMPLER_ARG
  value: {{ .tracesSamplerArg | quote }}
{{- end }}
{{- end }}
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}
{{- end }}

{{/* Volumes: the configuration and every Secret, whole (no subPath: updates reach the pod). */}}
{{- define "etk.volumes" -}}
- name: config
  configMap:
    name: {{ .configMap }}
- name: tls
  secret:
    secretName: {{ include "etk.secretName" (dict "root" .root "which" "tls" "suffix" "tls") }}
    defaultMode: 0440
    items:
      - { key: tls.crt, path: tls.crt }
      - { key: tls.key, path: tls.key }
- name: client-ca
  secret:
    secretName: {{ include "etk.secretName" (dict "root" .root "which" "clientCa" "suffix" "client-ca") }}
    defaultMode: 0440
    items:
      - { key: {{ .root.Values.secrets.clientCa.key | quote }}, path: {{ .root.Values.secrets.clientCa.key | quote }} }
- name: principals
  secret:
    secretName: {{ include "etk.secretName" (dict "root" .root "which" "principals" "suffix" "principals") }}
    defaultMode: 0440
    items:
      - { key: {{ .root.Values.secrets.principals.key | quote }}, path: {{ .root.Values.secrets.principals.key | quote }} }
- name: master-key
  secret:
    secretName: {{ include "etk.secretName" (dict "root" .root "which" "masterKey" "suffix" "master-key") }}
    defaultMode: 0440
    items:
      - { key: {{ .root.Values.secrets.masterKey.key | quote }}, path: {{ .root.Values.secrets.masterKey.key | quote }} }
{{- with .root.Values.extraVolumes }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "etk.volumeMounts" -}}
{{- $dir := include "etk.configDir" . -}}
- { name: config, mountPath: {{ $dir }}/config, readOnly: true }
- { name: tls, mountPath: {{ $dir }}/tls, readOnly: true }
- { name: client-ca, mountPath: {{ $dir }}/client-ca, readOnly: true }
- { name: principals, mountPath: {{ $dir }}/principals, readOnly: true }
- { name: master-key, mountPath: {{ $dir }}/master-key, readOnly: true }
{{- with .Values.extraVolumeMounts }}
{{ toYaml . }}
{{- end }}
{{- end }}
