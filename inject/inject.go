// Package inject computes what Detour adds to a pod: the init container that installs and
// proves the redirect, the proxy (a native sidecar by default), the projected ServiceAccount
// token the proxy proves its identity with, and the kubelet probes the proxy must let through in
// plaintext. It is one pure function, Patch, from a pod (or a workload's pod template) to a JSON
// patch (RFC 6902), shared by the controller's admission webhook and `detour inject --manual`, so
// a pod injected either way is the same pod. It uses no Kubernetes client or API types, because
// it is linked into the sidecar's binary too: it reads the few fields it needs from the object's
// JSON.
package inject

import (
	"encoding/json"
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/detourmesh/detour/init/plan"
)

// Annotations a user sets on a pod template (or, for AnnotationInject, a namespace).
const (
	// AnnotationInject opts a pod, or every pod of a namespace, into the mesh: "enabled" or
	// "disabled". The pod's own annotation wins over its namespace's.
	AnnotationInject = "detour.io/inject"
	// AnnotationSidecar chooses how the proxy runs: "native" (an init container with
	// restartPolicy Always, Kubernetes 1.29 and later) or "classic" (the first app container,
	// with a postStart hook that waits for it). Default: what the API server supports.
	AnnotationSidecar = "config.detour.io/sidecar"
	// AnnotationSkipInboundPorts, AnnotationSkipOutboundPorts and AnnotationSkipOutboundCIDRs
	// are detour init's --skip-* flags, in its syntax ("22,9000-9100", "10.0.0.0/8").
	AnnotationSkipInboundPorts  = "config.detour.io/skip-inbound-ports"
	AnnotationSkipOutboundPorts = "config.detour.io/skip-outbound-ports"
	AnnotationSkipOutboundCIDRs = "config.detour.io/skip-outbound-cidrs"
	// AnnotationInboundPolicy is the proxy's --policy: "permissive" (default) or "strict".
	AnnotationInboundPolicy = "config.detour.io/default-inbound-policy"
	// AnnotationOpaquePorts is the proxy's --opaque-ports: server-speaks-first ports.
	AnnotationOpaquePorts = "config.detour.io/opaque-ports"
	// AnnotationLogLevel is the proxy's --log-level.
	AnnotationLogLevel = "config.detour.io/proxy-log-level"
	// The proxy container's resources; Kubernetes quantities ("100m", "64Mi").
	AnnotationCPURequest    = "config.detour.io/proxy-cpu-request"
	AnnotationCPULimit      = "config.detour.io/proxy-cpu-limit"
	AnnotationMemoryRequest = "config.detour.io/proxy-memory-request"
	AnnotationMemoryLimit   = "config.detour.io/proxy-memory-limit"
)

// Values of AnnotationInject and AnnotationSidecar.
const (
	Enabled  = "enabled"
	Disabled = "disabled"
	Native   = "native"
	Classic  = "classic"
)

// Names of what Patch adds; uninject and the Kubernetes discovery source recognise a meshed
// pod by ProxyContainer.
const (
	InitContainer  = "detour-init"
	ProxyContainer = "detour-proxy"
	// TokenVolume is the projected ServiceAccount token for TokenAudience, mounted in the proxy
	// at TokenDir; TokenFile is the proxy's --identity-token.
	TokenVolume = "detour-identity-token"
	TokenDir    = "/var/run/secrets/detour.io/serviceaccount"
	TokenFile   = TokenDir + "/token"
	// InitRunVolume is an emptyDir at /run in the init container, whose root file system is
	// read-only: iptables takes its lock file there.
	InitRunVolume = "detour-init-run"
	// TokenAudience is the audience of the proxy's ServiceAccount token; the controller's
	// TokenReview accepts no other, so the token is worth nothing to the API server itself.
	TokenAudience = "identity.detour.io"
	// TokenExpirationSeconds is the token's lifetime, the shortest the API server allows (the
	// kubelet renews it at 80 %, and the proxy reads the file again for every request).
	TokenExpirationSeconds = 600
	// GRPCHealthPath is the path of the gRPC health check kubelet's grpc probes call.
	GRPCHealthPath = "/grpc.health.v1.Health/Check"
)

// Defaults of Config.
const (
	DefaultImage          = "detour.local/detour:dev"
	DefaultControllerAddr = "detour-controller.detour.svc:7086"
	DefaultTrustDomain    = "cluster.local"
)

// Default resources of the proxy container, overridden by the annotations: a sidecar idles at
// about 15 MB and uses one core at most (--cores 1).
const (
	DefaultCPURequest    = "10m"
	DefaultCPULimit      = "1"
	DefaultMemoryRequest = "20Mi"
	DefaultMemoryLimit   = "128Mi"
)

// Config is what the injector knows about the installation, not about the pod.
type Config struct {
	// Image runs both detour-init and detour-proxy; its entrypoint is the detour binary.
	// Default DefaultImage.
	Image string
	// ImagePullPolicy of both containers; default IfNotPresent.
	ImagePullPolicy string
	// TrustDomain of the identities; default DefaultTrustDomain.
	TrustDomain string
	// ControllerAddr is the HOST:PORT the proxies reach the controller at; default
	// DefaultControllerAddr.
	ControllerAddr string
	// TrustAnchorPEM is the trust anchor the proxies verify the controller and their peers
	// with (PEM). Required.
	TrustAnchorPEM string
	// Sidecar is Native or Classic for pods without AnnotationSidecar; default Native. The
	// webhook sets Classic for API servers older than native sidecars (1.29).
	Sidecar string
}

func (c Config) withDefaults() Config {
	if c.Image == "" {
		c.Image = DefaultImage
	}
	if c.ImagePullPolicy == "" {
		c.ImagePullPolicy = "IfNotPresent"
	}
	if c.TrustDomain == "" {
		c.TrustDomain = DefaultTrustDomain
	}
	if c.ControllerAddr == "" {
		c.ControllerAddr = DefaultControllerAddr
	}
	if c.Sidecar == "" {
		c.Sidecar = Native
	}
	return c
}

// Op is one RFC 6902 operation. Patch emits "add" only; Value is JSON-marshalable.
type Op struct {
	Op    string `json:"op"`
	Path  string `json:"path"`
	Value any    `json:"value,omitempty"`
}

// Wanted says whether a pod with these annotations, in a namespace with nsAnnotations, asks for
// the mesh, and why: the pod's AnnotationInject wins, then its namespace's. A value other than
// enabled or disabled is an error, so a typo does not silently leave a pod out.
func Wanted(podAnnotations, nsAnnotations map[string]string) (bool, string, error) {
	for _, a := range []struct {
		where string
		m     map[string]string
	}{{"pod", podAnnotations}, {"namespace", nsAnnotations}} {
		v, ok := a.m[AnnotationInject]
		if !ok {
			continue
		}
		switch v {
		case Enabled:
			return true, fmt.Sprintf("the %s is annotated %s: %s", a.where, AnnotationInject, v), nil
		case Disabled:
			return false, fmt.Sprintf("the %s is annotated %s: %s", a.where, AnnotationInject, v), nil
		}
		return false, "", fmt.Errorf("the %s's annotation %s is %q: want %s or %s", a.where, AnnotationInject, v, Enabled, Disabled)
	}
	return false, fmt.Sprintf("neither the pod nor its namespace is annotated %s: %s", AnnotationInject, Enabled), nil
}

// Injected reports whether the pod (or template) JSON already has Detour's proxy.
func Injected(obj []byte) (bool, error) {
	var p pod
	if err := json.Unmarshal(obj, &p); err != nil {
		return false, fmt.Errorf("decoding the pod: %w", err)
	}
	return p.injected(), nil
}

// Skip says why the pod (or template) JSON gets no proxy whatever it asks for, "" if none: it
// already has one, or it runs in the node's network namespace.
func Skip(obj []byte) (string, error) {
	var p pod
	if err := json.Unmarshal(obj, &p); err != nil {
		return "", fmt.Errorf("decoding the pod: %w", err)
	}
	return p.skip(), nil
}

// Patch returns the operations that add Detour to obj, the JSON of a Pod or of a workload's pod
// template (both have metadata and spec; paths are relative to it). It returns no operations and
// a reason when obj needs none: it already has the proxy, or it runs in the node's network
// namespace (hostNetwork: detour init would redirect the node's traffic). Bad annotations are
// errors naming the annotation. Patch does not check whether the pod asked for the mesh: see
// Wanted.
func Patch(obj []byte, cfg Config) ([]Op, string, error) {
	cfg = cfg.withDefaults()
	if cfg.TrustAnchorPEM == "" {
		return nil, "", fmt.Errorf("no trust anchor to give the proxy")
	}
	var p pod
	if err := json.Unmarshal(obj, &p); err != nil {
		return nil, "", fmt.Errorf("decoding the pod: %w", err)
	}
	if skip := p.skip(); skip != "" {
		return nil, skip, nil
	}
	ann := p.Metadata.Annotations
	sidecar := cfg.Sidecar
	if v, ok := ann[AnnotationSidecar]; ok {
		if v != Native && v != Classic {
			return nil, "", fmt.Errorf("annotation %s is %q: want %s or %s", AnnotationSidecar, v, Native, Classic)
		}
		sidecar = v
	}
	initC, err := initContainer(cfg, ann)
	if err != nil {
		return nil, "", err
	}
	proxyC, err := proxyContainer(cfg, ann, probePaths(&p), sidecar)
	if err != nil {
		return nil, "", err
	}

	var ops []Op
	vols := []any{
		volume{Name: TokenVolume, Projected: &projected{Sources: []projection{{ServiceAccountToken: &saToken{
			Audience: TokenAudience, ExpirationSeconds: TokenExpirationSeconds, Path: "token",
		}}}}},
		volume{Name: InitRunVolume, EmptyDir: &emptyDir{Medium: "Memory"}},
	}
	if p.Spec.Volumes == nil {
		ops = append(ops, Op{"add", "/spec/volumes", vols})
	} else {
		for _, v := range vols {
			ops = append(ops, Op{"add", "/spec/volumes/-", v})
		}
	}
	switch {
	case sidecar == Native && p.Spec.InitContainers == nil:
		ops = append(ops, Op{"add", "/spec/initContainers", []any{initC, proxyC}})
	case sidecar == Native:
		// init first (the redirect), then the proxy, then the app's own init containers, which
		// run meshed: a native sidecar is running (started) before the next init container.
		ops = append(ops, Op{"add", "/spec/initContainers/0", proxyC}, Op{"add", "/spec/initContainers/0", initC})
	case p.Spec.InitContainers == nil:
		ops = append(ops, Op{"add", "/spec/initContainers", []any{initC}})
	default:
		// Classic: no proxy runs during init, so the app's init containers run before the
		// redirect exists, unmeshed, rather than into a proxy that is not there yet.
		ops = append(ops, Op{"add", "/spec/initContainers/-", initC})
	}
	if sidecar == Classic {
		ops = append(ops, Op{"add", "/spec/containers/0", proxyC})
	}
	return ops, "", nil
}

// initContainer is detour-init: detour init with the pod's skip annotations, as root with
// NET_ADMIN and NET_RAW only. Its output is its termination message, so a failed proof shows in
// kubectl describe pod.
func initContainer(cfg Config, ann map[string]string) (container, error) {
	args := []string{"init"}
	for _, s := range []struct{ ann, flag string }{
		{AnnotationSkipInboundPorts, "--skip-inbound-ports"},
		{AnnotationSkipOutboundPorts, "--skip-outbound-ports"},
		{AnnotationSkipOutboundCIDRs, "--skip-outbound-cidrs"},
	} {
		v, ok := ann[s.ann]
		if !ok {
			continue
		}
		v = strings.TrimSpace(v)
		var err error
		if s.ann == AnnotationSkipOutboundCIDRs {
			_, err = plan.ParseCIDRs(v)
		} else {
			_, err = plan.ParsePorts(v)
		}
		if err != nil {
			return container{}, fmt.Errorf("annotation %s: %w", s.ann, err)
		}
		if v != "" {
			args = append(args, s.flag, v)
		}
	}
	f := false
	root := int64(0)
	return container{
		Name: InitContainer, Image: cfg.Image, ImagePullPolicy: cfg.ImagePullPolicy, Args: args,
		VolumeMounts:             []volumeMount{{Name: InitRunVolume, MountPath: "/run"}},
		TerminationMessagePolicy: "FallbackToLogsOnError",
		SecurityContext: &securityContext{
			RunAsUser: &root, RunAsNonRoot: &f, AllowPrivilegeEscalation: &f, ReadOnlyRootFilesystem: ptr(true),
			Capabilities: &capabilities{Add: []string{"NET_ADMIN", "NET_RAW"}, Drop: []string{"ALL"}},
		},
	}, nil
}

var quantityRE = regexp.MustCompile(`^[0-9]+(\.[0-9]+)?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$`)

// proxyContainer is detour-proxy, configured by environment (each DETOUR_* is a flag of
// detour proxy). The identity comes from the pod's own namespace and ServiceAccount at run time
// (Kubernetes expands $(VAR) from the variables before it), so the same container is right for
// every pod of a template.
func proxyContainer(cfg Config, ann map[string]string, probes string, sidecar string) (container, error) {
	admin := int32(plan.DefaultAdminPort)
	env := []envVar{
		{Name: "DETOUR_POD_NAME", ValueFrom: fieldRef("metadata.name")},
		{Name: "DETOUR_POD_NAMESPACE", ValueFrom: fieldRef("metadata.namespace")},
		{Name: "DETOUR_POD_SERVICE_ACCOUNT", ValueFrom: fieldRef("spec.serviceAccountName")},
		// The scheduler's topology labels reach the pod once it is bound (empty without them):
		// zone hints then keep calls in the pod's zone.
		{Name: "DETOUR_ZONE", ValueFrom: fieldRef("metadata.labels['topology.kubernetes.io/zone']")},
		{Name: "DETOUR_IDENTITY", Value: "spiffe://" + cfg.TrustDomain + "/ns/$(DETOUR_POD_NAMESPACE)/sa/$(DETOUR_POD_SERVICE_ACCOUNT)"},
		{Name: "DETOUR_DISCOVERY", Value: "controller:" + cfg.ControllerAddr},
		{Name: "DETOUR_IDENTITY_TOKEN", Value: TokenFile},
		{Name: "DETOUR_TRUST_ANCHOR_PEM", Value: cfg.TrustAnchorPEM},
	}
	if v, ok := ann[AnnotationInboundPolicy]; ok {
		if v != "permissive" && v != "strict" {
			return container{}, fmt.Errorf("annotation %s is %q: want permissive or strict", AnnotationInboundPolicy, v)
		}
		env = append(env, envVar{Name: "DETOUR_POLICY", Value: v})
	}
	if v, ok := ann[AnnotationOpaquePorts]; ok {
		if _, err := plan.ParsePorts(v); err != nil {
			return container{}, fmt.Errorf("annotation %s: %w", AnnotationOpaquePorts, err)
		}
		env = append(env, envVar{Name: "DETOUR_OPAQUE_PORTS", Value: v})
	}
	if v, ok := ann[AnnotationLogLevel]; ok {
		if !slices.Contains([]string{"debug", "info", "warn", "error"}, v) {
			return container{}, fmt.Errorf("annotation %s is %q: want debug, info, warn or error", AnnotationLogLevel, v)
		}
		env = append(env, envVar{Name: "DETOUR_LOG_LEVEL", Value: v})
	}
	if probes != "" {
		env = append(env, envVar{Name: "DETOUR_PROBE_PATHS", Value: probes})
	}
	res := resources{Requests: map[string]string{}, Limits: map[string]string{}}
	for _, r := range []struct {
		ann, def string
		m        map[string]string
		key      string
	}{
		{AnnotationCPURequest, DefaultCPURequest, res.Requests, "cpu"},
		{AnnotationMemoryRequest, DefaultMemoryRequest, res.Requests, "memory"},
		{AnnotationCPULimit, DefaultCPULimit, res.Limits, "cpu"},
		{AnnotationMemoryLimit, DefaultMemoryLimit, res.Limits, "memory"},
	} {
		v := r.def
		if a, ok := ann[r.ann]; ok {
			if !quantityRE.MatchString(a) {
				return container{}, fmt.Errorf("annotation %s is %q: want a Kubernetes quantity such as 100m or 64Mi", r.ann, a)
			}
			v = a
		}
		r.m[r.key] = v
	}
	uid := int64(plan.DefaultProxyUID)
	c := container{
		Name: ProxyContainer, Image: cfg.Image, ImagePullPolicy: cfg.ImagePullPolicy, Args: []string{"proxy"},
		Env:          env,
		Ports:        []containerPort{{Name: "detour-admin", ContainerPort: admin, Protocol: "TCP"}},
		Resources:    &res,
		VolumeMounts: []volumeMount{{Name: TokenVolume, MountPath: TokenDir, ReadOnly: true}},
		// Ready means listening, with a certificate and discovery: until then the app (the
		// containers after a native sidecar) does not start.
		StartupProbe:   &probe{HTTPGet: &httpGet{Path: "/ready", Port: admin}, PeriodSeconds: 1, FailureThreshold: 120},
		ReadinessProbe: &probe{HTTPGet: &httpGet{Path: "/ready", Port: admin}, PeriodSeconds: 5},
		LivenessProbe:  &probe{HTTPGet: &httpGet{Path: "/live", Port: admin}, PeriodSeconds: 10},
		SecurityContext: &securityContext{
			RunAsUser: &uid, RunAsGroup: &uid, RunAsNonRoot: ptr(true), AllowPrivilegeEscalation: ptr(false),
			ReadOnlyRootFilesystem: ptr(true), Capabilities: &capabilities{Drop: []string{"ALL"}},
			SeccompProfile: &seccompProfile{Type: "RuntimeDefault"},
		},
		TerminationMessagePolicy: "FallbackToLogsOnError",
	}
	if sidecar == Native {
		c.RestartPolicy = "Always"
	} else {
		// The app's containers start one after another, each after the previous one's
		// postStart hook returned: waiting here holds the app back until the proxy is ready.
		c.Lifecycle = &lifecycle{PostStart: &handler{Exec: &execAction{Command: []string{"detour", "wait-ready", "--timeout", "2m"}}}}
	}
	return c, nil
}

// probePaths lists the kubelet's HTTP and gRPC probes of the app's containers as the proxy's
// --probe-paths ("PORT/PATH PORT/PATH ..."): the kubelet calls them from the node in
// plaintext, and a strict proxy lets exactly these requests through. TCP probes need nothing:
// the proxy accepts the connection. HTTPS probes are TLS that is not the mesh's, which a strict
// port refuses: skip such a port inbound.
func probePaths(p *pod) string {
	seen := map[string]bool{}
	var out []string
	add := func(port int32, path string) {
		if port <= 0 || port > 65535 {
			return
		}
		if path == "" {
			path = "/"
		}
		path, _, _ = strings.Cut(path, "?")
		if !strings.HasPrefix(path, "/") || strings.ContainsAny(path, " \t") {
			return
		}
		e := strconv.Itoa(int(port)) + path
		if !seen[e] {
			seen[e] = true
			out = append(out, e)
		}
	}
	for _, c := range p.Spec.Containers {
		for _, pr := range []*probeSpec{c.StartupProbe, c.ReadinessProbe, c.LivenessProbe} {
			switch {
			case pr == nil:
			case pr.HTTPGet != nil && !strings.EqualFold(pr.HTTPGet.Scheme, "HTTPS"):
				add(c.resolvePort(pr.HTTPGet.Port), pr.HTTPGet.Path)
			case pr.GRPC != nil:
				add(pr.GRPC.Port, GRPCHealthPath)
			}
		}
	}
	return strings.Join(out, " ")
}

// pod is the part of a Pod (or pod template) the injector reads.
type pod struct {
	Metadata struct {
		Annotations map[string]string `json:"annotations"`
	} `json:"metadata"`
	Spec struct {
		HostNetwork    bool            `json:"hostNetwork"`
		InitContainers []podContainer  `json:"initContainers"`
		Containers     []podContainer  `json:"containers"`
		Volumes        json.RawMessage `json:"volumes"`
	} `json:"spec"`
}

func (p *pod) skip() string {
	if p.injected() {
		return "already has " + ProxyContainer
	}
	if p.Spec.HostNetwork {
		return "hostNetwork: the pod shares the node's network namespace, where detour init would redirect the node's traffic"
	}
	return ""
}

func (p *pod) injected() bool {
	for _, c := range append(slices.Clip(p.Spec.InitContainers), p.Spec.Containers...) {
		if c.Name == ProxyContainer {
			return true
		}
	}
	return false
}

type podContainer struct {
	Name  string `json:"name"`
	Ports []struct {
		Name          string `json:"name"`
		ContainerPort int32  `json:"containerPort"`
	} `json:"ports"`
	StartupProbe   *probeSpec `json:"startupProbe"`
	ReadinessProbe *probeSpec `json:"readinessProbe"`
	LivenessProbe  *probeSpec `json:"livenessProbe"`
}

// resolvePort turns a probe's port (a number or the name of one of the container's ports) into
// a number; 0 when it names no port.
func (c *podContainer) resolvePort(p intOrString) int32 {
	if p.name == "" {
		return p.num
	}
	for _, cp := range c.Ports {
		if cp.Name == p.name {
			return cp.ContainerPort
		}
	}
	return 0
}

type probeSpec struct {
	HTTPGet *struct {
		Path   string      `json:"path"`
		Port   intOrString `json:"port"`
		Scheme string      `json:"scheme"`
	} `json:"httpGet"`
	GRPC *struct {
		Port int32 `json:"port"`
	} `json:"grpc"`
}

// intOrString is Kubernetes' IntOrString as JSON: 8080 or "http".
type intOrString struct {
	num  int32
	name string
}

func (v *intOrString) UnmarshalJSON(b []byte) error {
	if len(b) > 0 && b[0] == '"' {
		if err := json.Unmarshal(b, &v.name); err != nil {
			return err
		}
		// A quoted number is a number (IntOrString's string form may hold one).
		if n, err := strconv.ParseInt(v.name, 10, 32); err == nil {
			v.num, v.name = int32(n), ""
		}
		return nil
	}
	return json.Unmarshal(b, &v.num)
}

// What Patch adds, as Kubernetes spells it in JSON. Field order is the order the golden files
// show.
type container struct {
	Name                     string           `json:"name"`
	Image                    string           `json:"image"`
	ImagePullPolicy          string           `json:"imagePullPolicy,omitempty"`
	Args                     []string         `json:"args,omitempty"`
	Env                      []envVar         `json:"env,omitempty"`
	Ports                    []containerPort  `json:"ports,omitempty"`
	Resources                *resources       `json:"resources,omitempty"`
	VolumeMounts             []volumeMount    `json:"volumeMounts,omitempty"`
	StartupProbe             *probe           `json:"startupProbe,omitempty"`
	ReadinessProbe           *probe           `json:"readinessProbe,omitempty"`
	LivenessProbe            *probe           `json:"livenessProbe,omitempty"`
	Lifecycle                *lifecycle       `json:"lifecycle,omitempty"`
	RestartPolicy            string           `json:"restartPolicy,omitempty"`
	SecurityContext          *securityContext `json:"securityContext,omitempty"`
	TerminationMessagePolicy string           `json:"terminationMessagePolicy,omitempty"`
}

type envVar struct {
	Name      string        `json:"name"`
	Value     string        `json:"value,omitempty"`
	ValueFrom *envVarSource `json:"valueFrom,omitempty"`
}

type envVarSource struct {
	FieldRef *struct {
		FieldPath string `json:"fieldPath"`
	} `json:"fieldRef,omitempty"`
}

func fieldRef(path string) *envVarSource {
	s := &envVarSource{FieldRef: &struct {
		FieldPath string `json:"fieldPath"`
	}{path}}
	return s
}

type containerPort struct {
	Name          string `json:"name,omitempty"`
	ContainerPort int32  `json:"containerPort"`
	Protocol      string `json:"protocol,omitempty"`
}

type resources struct {
	Requests map[string]string `json:"requests,omitempty"`
	Limits   map[string]string `json:"limits,omitempty"`
}

type volumeMount struct {
	Name      string `json:"name"`
	MountPath string `json:"mountPath"`
	ReadOnly  bool   `json:"readOnly,omitempty"`
}

type probe struct {
	HTTPGet          *httpGet `json:"httpGet,omitempty"`
	PeriodSeconds    int32    `json:"periodSeconds,omitempty"`
	FailureThreshold int32    `json:"failureThreshold,omitempty"`
}

type httpGet struct {
	Path string `json:"path"`
	Port int32  `json:"port"`
}

type lifecycle struct {
	PostStart *handler `json:"postStart,omitempty"`
}

type handler struct {
	Exec *execAction `json:"exec,omitempty"`
}

type execAction struct {
	Command []string `json:"command"`
}

type securityContext struct {
	RunAsUser                *int64          `json:"runAsUser,omitempty"`
	RunAsGroup               *int64          `json:"runAsGroup,omitempty"`
	RunAsNonRoot             *bool           `json:"runAsNonRoot,omitempty"`
	AllowPrivilegeEscalation *bool           `json:"allowPrivilegeEscalation,omitempty"`
	ReadOnlyRootFilesystem   *bool           `json:"readOnlyRootFilesystem,omitempty"`
	Capabilities             *capabilities   `json:"capabilities,omitempty"`
	SeccompProfile           *seccompProfile `json:"seccompProfile,omitempty"`
}

type capabilities struct {
	Add  []string `json:"add,omitempty"`
	Drop []string `json:"drop,omitempty"`
}

type seccompProfile struct {
	Type string `json:"type"`
}

type volume struct {
	Name      string     `json:"name"`
	Projected *projected `json:"projected,omitempty"`
	EmptyDir  *emptyDir  `json:"emptyDir,omitempty"`
}

type projected struct {
	Sources []projection `json:"sources"`
}

type projection struct {
	ServiceAccountToken *saToken `json:"serviceAccountToken,omitempty"`
}

type saToken struct {
	Audience          string `json:"audience"`
	ExpirationSeconds int64  `json:"expirationSeconds"`
	Path              string `json:"path"`
}

type emptyDir struct {
	Medium string `json:"medium,omitempty"`
}

func ptr[T any](v T) *T { return &v }
