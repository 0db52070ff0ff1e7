{{/* Names */}}
{{- define "serving.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "serving.fullname" -}}
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

{{/* The RayService name: short, because KubeRay derives cluster and Service names from it. */}}
{{- define "serving.rayServiceName" -}}
{{- include "serving.fullname" . | trunc 40 | trimSuffix "-" }}
{{- end }}

{{- define "serving.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "serving.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: serving
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Selector labels of one component: include "serving.selectorLabels" (list . "redis") */}}
{{- define "serving.selectorLabels" -}}
{{- $root := index . 0 -}}
app.kubernetes.io/name: {{ include "serving.name" $root }}
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end }}

{{- define "serving.componentLabels" -}}
{{- $root := index . 0 -}}
{{ include "serving.labels" $root }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end }}

{{/* Pods allowed to reach Redis and MLflow (the Ray pods and the controller carry it). */}}
{{- define "serving.clientLabel" -}}
serving.dev/platform-client: "true"
{{- end }}

{{- define "serving.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "serving.controllerImage" -}}
{{- printf "%s:%s" .Values.controller.image.repository (default .Chart.AppVersion .Values.controller.image.tag) }}
{{- end }}

{{/* The platform config: .Values.platform, or files/platform-default.yaml when it is empty; the chart sets
     gateway.metrics_port (gateway.metricsPort) when the platform does not, so every replica serves its own metrics,
     and gateway.tracing (gateway.tracing.*) when tracing is enabled in the values and the platform sets none. */}}
{{- define "serving.platform" -}}
{{- $p := dict }}
{{- if .Values.platform }}
{{- $p = deepCopy .Values.platform }}
{{- else }}
{{- $p = .Files.Get "files/platform-default.yaml" | fromYaml }}
{{- end }}
{{- $gw := default dict $p.gateway }}
{{- if not (hasKey $gw "metrics_port") }}
{{- $_ := set $gw "metrics_port" (int .Values.gateway.metricsPort) }}
{{- end }}
{{- $tr := default dict .Values.gateway.tracing }}
{{- if and $tr.enabled (not (hasKey $gw "tracing")) }}
{{- $tracing := dict "enabled" true "protocol" (default "http/protobuf" $tr.protocol) "service_name" (default "serving-gateway" $tr.serviceName) "sample_ratio" (default 1.0 $tr.sampleRatio) }}
{{- if $tr.endpoint }}{{- $_ := set $tracing "endpoint" $tr.endpoint }}{{- end }}
{{- $_ := set $gw "tracing" $tracing }}
{{- end }}
{{- $_ := set $p "gateway" $gw }}
{{- toYaml $p }}
{{- end }}

{{/* The gateway replicas' metrics port (platform.gateway.metrics_port after serving.platform). */}}
{{- define "serving.gatewayMetricsPort" -}}
{{- $platform := include "serving.platform" . | fromYaml -}}
{{- int $platform.gateway.metrics_port -}}
{{- end }}

{{/* The distinct gpu.accelerator_type values of the GPU engines, as a JSON list. */}}
{{- define "serving.acceleratorTypes" -}}
{{- $platform := include "serving.platform" . | fromYaml -}}
{{- $types := list -}}
{{- range $name, $engine := $platform.engines -}}
{{- if and (ne (default "gpu" $engine.device) "cpu") $engine.gpu $engine.gpu.accelerator_type -}}
{{- $types = append $types $engine.gpu.accelerator_type -}}
{{- end -}}
{{- end -}}
{{- toJson ($types | uniq | sortAlpha) -}}
{{- end }}

{{/* GPUs per worker pod: the largest gpu.count of the GPU engines (device defaults to gpu), 0 without any. */}}
{{- define "serving.gpusPerWorker" -}}
{{- $platform := include "serving.platform" . | fromYaml -}}
{{- $max := 0 -}}
{{- range $name, $engine := $platform.engines -}}
{{- if ne (default "gpu" $engine.device) "cpu" -}}
{{- $count := 1 -}}
{{- if and $engine.gpu $engine.gpu.count -}}{{- $count = int $engine.gpu.count -}}{{- end -}}
{{- if gt $count $max -}}{{- $max = $count -}}{{- end -}}
{{- end -}}
{{- end -}}
{{- $max -}}
{{- end }}

{{/* Environment variable names of the providers' API keys (provider api_key_env or the kind's default). */}}
{{- define "serving.providerKeyEnvs" -}}
{{- $platform := include "serving.platform" . | fromYaml -}}
{{- $envs := list -}}
{{- range $name, $provider := $platform.providers -}}
{{- $default := ternary "OPENAI_API_KEY" "ANTHROPIC_API_KEY" (eq $provider.kind "openai") -}}
{{- $envs = append $envs (default $default $provider.api_key_env) -}}
{{- end -}}
{{- toJson ($envs | uniq | sortAlpha) -}}
{{- end }}

{{- define "serving.cloudSecretName" -}}
{{- default (printf "%s-cloud-api-keys" (include "serving.fullname" .)) .Values.secrets.cloudApiKeys.existingSecret }}
{{- end }}

{{- define "serving.adminSecretName" -}}
{{- default (printf "%s-admin" (include "serving.fullname" .)) .Values.secrets.adminKey.existingSecret }}
{{- end }}

{{/* Whether an admin credential Secret is configured (existing, or created from secrets.adminKey.value). */}}
{{- define "serving.adminKeyConfigured" -}}
{{- if or .Values.secrets.adminKey.existingSecret .Values.secrets.adminKey.value }}true{{ end }}
{{- end }}

{{/* The variable the gateway reads the admin credential from: platform.policies.auth.admin_key_env. */}}
{{- define "serving.adminKeyEnv" -}}
{{- $platform := include "serving.platform" . | fromYaml -}}
{{- $auth := (default dict (default dict $platform.policies).auth) -}}
{{- default "SERVING_ADMIN_KEY" $auth.admin_key_env -}}
{{- end }}

{{- define "serving.redisUrl" -}}
{{- if .Values.redis.enabled -}}
{{- printf "redis://%s-redis:6379/0" (include "serving.fullname" .) -}}
{{- else -}}
{{- .Values.redis.externalUrl -}}
{{- end -}}
{{- end }}

{{- define "serving.mlflowUri" -}}
{{- if .Values.mlflow.enabled -}}
{{- printf "http://%s-mlflow:5000" (include "serving.fullname" .) -}}
{{- else -}}
{{- .Values.mlflow.trackingUri -}}
{{- end -}}
{{- end }}

{{/* Environment of the Ray pods: Redis, MLflow, cloud API keys and the gateway's admin credential (Secrets). */}}
{{- define "serving.platformEnv" -}}
{{- with include "serving.redisUrl" . }}
- name: REDIS_URL
  value: {{ . | quote }}
{{- end }}
{{- with include "serving.mlflowUri" . }}
- name: MLFLOW_TRACKING_URI
  value: {{ . | quote }}
{{- end }}
{{- if or .Values.secrets.cloudApiKeys.existingSecret .Values.secrets.cloudApiKeys.values }}
{{- $secret := include "serving.cloudSecretName" . }}
{{- range include "serving.providerKeyEnvs" . | fromJsonArray }}
- name: {{ . }}
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ . }}
      optional: true
{{- end }}
{{- end }}
{{- if include "serving.adminKeyConfigured" . }}
- name: {{ include "serving.adminKeyEnv" . }}
  valueFrom:
    secretKeyRef:
      name: {{ include "serving.adminSecretName" . }}
      key: {{ .Values.secrets.adminKey.key | quote }}
{{- end }}
{{- with .Values.huggingface.token.existingSecret }}
- name: HF_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ . | quote }}
      key: {{ $.Values.huggingface.token.key | quote }}
{{- end }}
{{- with .Values.huggingface.endpoint }}
- name: HF_ENDPOINT
  value: {{ . | quote }}
{{- end }}
{{- if .Values.huggingface.offline }}
- name: HF_HUB_OFFLINE
  value: "1"
{{- end }}
{{- with .Values.ray.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Environment of the Ray processes that platform.ray implies (RayConfig.cluster_env in serving/config/platform.py). */}}
{{- define "serving.rayClusterEnv" -}}
{{- $platform := include "serving.platform" . | fromYaml -}}
{{- $ray := default dict $platform.ray -}}
{{- $env := dict "RAY_USAGE_STATS_ENABLED" "0" -}}
{{- if eq (default "haproxy" $ray.serve_ingress) "haproxy" -}}
{{- $_ := set $env "RAY_SERVE_ENABLE_HA_PROXY" "1" -}}
{{- $gw := default dict $platform.gateway -}}
{{- $_ := set $env "RAY_SERVE_HAPROXY_HARD_STOP_AFTER_S" (toString (max 120 (add (int (ceil (float64 (default 30 $gw.drain_timeout_s)))) 30))) -}}
{{- end -}}
{{- if or (not (hasKey $ray "throughput_optimized")) $ray.throughput_optimized -}}
{{- $_ := set $env "RAY_SERVE_THROUGHPUT_OPTIMIZED" "1" -}}
{{- end -}}
{{- range $k, $v := (default dict $ray.env) -}}
{{- $_ := set $env $k (toString $v) -}}
{{- end -}}
{{- range $k, $v := .Values.ray.env -}}
{{- $_ := set $env $k (toString $v) -}}
{{- end -}}
{{- toJson $env -}}
{{- end }}

{{/* A probe that GETs local URLs with the image's python (no wget/curl needed): (list "52365/api/..." ...) */}}
{{- define "serving.httpExecProbe" -}}
exec:
  command:
    - python3
    - -c
    - "import sys, urllib.request as u; [u.urlopen('http://127.0.0.1:' + p, timeout=2).read() for p in sys.argv[1:]]"
    {{- range . }}
    - {{ . | quote }}
    {{- end }}
{{- end }}

{{/* Pod-level spec shared by the Ray head and workers (volumes, security, pull secrets):
     include "serving.rayPodSpec" (list . <the group's values: shmSizeLimit, topologySpreadConstraints>) */}}
{{- define "serving.rayPodSpec" -}}
{{- $group := index . 1 -}}
{{- with index . 0 -}}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.ray.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- with $group.topologySpreadConstraints }}
topologySpreadConstraints:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- toYaml .Values.ray.podSecurityContext | nindent 2 }}
terminationGracePeriodSeconds: {{ add (include "serving.drainDeadline" .) 30 }}
volumes:
  - name: model-cache
    {{- if eq .Values.modelCache.type "pvc" }}
    persistentVolumeClaim:
      claimName: {{ default (printf "%s-model-cache" (include "serving.fullname" .)) .Values.modelCache.existingClaim }}
    {{- else }}
    emptyDir:
      sizeLimit: {{ .Values.modelCache.emptyDirSizeLimit }}
    {{- end }}
  - name: dshm
    emptyDir:
      medium: Memory
      sizeLimit: {{ $group.shmSizeLimit }}
  - name: tmp
    emptyDir: {}
  {{- with .Values.ray.extraVolumes }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- end }}
{{- end }}

{{/* Container fields shared by the Ray head and workers (image, env, mounts, security). */}}
{{- define "serving.rayContainer" -}}
image: {{ include "serving.image" . }}
imagePullPolicy: {{ .Values.image.pullPolicy }}
securityContext:
  {{- toYaml .Values.ray.securityContext | nindent 2 }}
env:
  {{- range $k, $v := include "serving.rayClusterEnv" . | fromJson }}
  - name: {{ $k }}
    value: {{ $v | quote }}
  {{- end }}
  - name: HF_HOME
    value: {{ printf "%s/hf" .Values.modelCache.mountPath | quote }}
  - name: SERVING_CACHE_DIR
    value: {{ printf "%s/serving" .Values.modelCache.mountPath | quote }}
  {{- include "serving.platformEnv" . | trim | nindent 2 }}
{{- with .Values.ray.envFrom }}
envFrom:
  {{- toYaml . | nindent 2 }}
{{- end }}
volumeMounts:
  - name: model-cache
    mountPath: {{ .Values.modelCache.mountPath }}
  - name: dshm
    mountPath: /dev/shm
  - name: tmp
    mountPath: /tmp
  {{- with .Values.ray.extraVolumeMounts }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- end }}

{{/* How long a worker pod drains before it stops: the gateway's drain_timeout_s plus 30 s for Serve to move the
     node's replicas (serving.rayLifecycle), and the pod's grace period past that. */}}
{{- define "serving.drainDeadline" -}}
{{- $gw := default dict (include "serving.platform" . | fromYaml).gateway -}}
{{- add (int (ceil (float64 (default 30 $gw.drain_timeout_s)))) 30 -}}
{{- end }}

{{/* The Ray containers' preStop: include "serving.rayLifecycle" (list . "head"|"worker"). A worker drains its node
     first (`serving drain-node`: Ray's drain API, then it waits for the node's Serve replicas to finish their
     requests) and stops Ray last; the head stops Ray. */}}
{{- define "serving.rayLifecycle" -}}
{{- $root := index . 0 -}}
lifecycle:
  preStop:
    exec:
      {{- if eq (index . 1) "worker" }}
      command: ["serving", "drain-node", "--deadline-s", "{{ include "serving.drainDeadline" $root }}"]
      {{- else }}
      command: ["/bin/sh", "-c", "ray stop"]
      {{- end }}
{{- end }}

{{- define "serving.controllerServiceAccount" -}}
{{- if .Values.controller.serviceAccount.create }}
{{- default (printf "%s-controller" (include "serving.fullname" .)) .Values.controller.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.controller.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Restricted-profile container security context of the chart's own Deployments. */}}
{{- define "serving.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: [ALL]
{{- end }}

{{/* policy/v1 (Kubernetes 1.21+); policy/v1beta1 only on an API server that lacks it. */}}
{{- define "serving.pdbApiVersion" -}}
{{- if or (.Capabilities.APIVersions.Has "policy/v1/PodDisruptionBudget") (semverCompare ">=1.21-0" .Capabilities.KubeVersion.Version) -}}
policy/v1
{{- else -}}
policy/v1beta1
{{- end -}}
{{- end }}

{{/* The env var of the controller's gateway API key: platform.rollout.gateway_api_key_env (default SERVING_ROLLOUT_API_KEY). */}}
{{- define "serving.rolloutApiKeyEnv" -}}
{{- $platform := include "serving.platform" . | fromYaml -}}
{{- $rollout := default dict $platform.rollout -}}
{{- default "SERVING_ROLLOUT_API_KEY" $rollout.gateway_api_key_env -}}
{{- end }}

{{/* Ray probes of one group: include "serving.rayProbes" (list <probe values> <ports for readiness> <ports for
     liveness and startup>) */}}
{{- define "serving.rayProbes" -}}
{{- $probes := index . 0 -}}
startupProbe:
  {{- include "serving.httpExecProbe" (index . 2) | nindent 2 }}
  {{- toYaml $probes.startup | nindent 2 }}
readinessProbe:
  {{- include "serving.httpExecProbe" (index . 1) | nindent 2 }}
  {{- toYaml $probes.readiness | nindent 2 }}
livenessProbe:
  {{- include "serving.httpExecProbe" (index . 2) | nindent 2 }}
  {{- toYaml $probes.liveness | nindent 2 }}
{{- end }}

{{/* The Serve config (serveConfigV2) = serving.deploy.serve_config.serve_config(): the gateway app (serving.app:gateway_builder, the
     platform config inline as args.config) and one app per engine (serving.app:engine_builder, args name + engine, no
     HTTP route), so a rollout adds or removes one engine app and re-weights the gateway without restarting anything
     else. The gateway replicas ask for the `serving_gateway` resource (one per pod of the gateway worker group, or of
     the engine worker group without it) and at most one replica per node (each serves its metrics on one port). */}}
{{- define "serving.serveConfig" -}}
{{- $platform := include "serving.platform" . | fromYaml }}
{{- $ray := default dict $platform.ray }}
{{- $gw := default dict $platform.gateway }}
{{- $appName := default "serving" $ray.app_name }}
{{- $actor := dict "num_cpus" (default 0 $gw.num_cpus) "resources" (dict "serving_gateway" 1) }}
{{- if .Values.ray.gatewayWorkers.enabled }}
{{- $_ := set $actor "num_cpus" 0 }}
{{- end }}
{{- $gateway := dict "name" "gateway" "max_ongoing_requests" (int (default 1024 $gw.max_ongoing_requests)) "max_replicas_per_node" 1 "ray_actor_options" $actor "graceful_shutdown_timeout_s" (float64 (default 30 $gw.drain_timeout_s)) "graceful_shutdown_wait_loop_s" 1.0 }}
{{- $replicas := int (default 1 $gw.replicas) }}
{{- with $gw.autoscaling }}
{{- $amin := int (default 1 .min_replicas) }}{{- $amax := int (default 4 .max_replicas) }}
{{- $_ := set $gateway "autoscaling_config" (dict "min_replicas" $amin "max_replicas" $amax "initial_replicas" (min (max $replicas $amin) $amax) "target_ongoing_requests" (int (default 64 .target_ongoing_requests))) }}
{{- else }}
{{- $_ := set $gateway "num_replicas" $replicas }}
{{- end }}
{{- $apps := list (dict "name" $appName "import_path" "serving.app:gateway_builder" "route_prefix" (default "/" $gw.route_prefix) "args" (dict "config" $platform) "deployments" (list $gateway)) }}
{{- range $name, $engine := $platform.engines }}
{{- $r := default dict $engine.replicas }}
{{- $min := int (default 1 $r.min) }}{{- if and (hasKey $r "min") (eq (toString $r.min) "0") }}{{- $min = 0 }}{{- end }}
{{- $max := int (default 1 $r.max) }}
{{- $dep := dict "name" (printf "engine-%s" $name) }}
{{- if eq $min $max }}
{{- $_ := set $dep "num_replicas" $min }}
{{- else }}
{{- $scaling := dict "min_replicas" $min "max_replicas" $max "target_ongoing_requests" (int (default 16 $r.target_ongoing_requests)) }}
{{- range $key := list "upscale_delay_s" "downscale_delay_s" }}{{- if hasKey $r $key }}{{- $_ := set $scaling $key (float64 (index $r $key)) }}{{- end }}{{- end }}
{{- $_ := set $dep "autoscaling_config" $scaling }}
{{- end }}
{{- $apps = append $apps (dict "name" (printf "%s-engine-%s" $appName $name) "import_path" "serving.app:engine_builder" "route_prefix" nil "args" (dict "name" $name "engine" $engine) "deployments" (list $dep)) }}
{{- end }}
{{- toYaml (dict "proxy_location" "EveryNode" "http_options" (dict "host" "0.0.0.0" "port" 8000) "applications" $apps) }}
{{- end }}

{{/* The ConfigMap holding the chart's Serve config when the rollout controller owns the RayService's serveConfigV2. */}}
{{- define "serving.serveConfigMapName" -}}
{{- printf "%s-serve-config" (include "serving.fullname" .) -}}
{{- end }}

{{- define "serving.gatewayMetricsServiceName" -}}
{{- printf "%s-gateway-metrics" (include "serving.fullname" .) -}}
{{- end }}
