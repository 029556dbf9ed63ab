package kube

import (
	"fmt"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"

	"github.com/detourmesh/detour/discovery"
	"github.com/detourmesh/detour/init/plan"
)

// svcConfig is a Service's mesh configuration, read from its annotations: the protocol, the
// balancer and the policy (timeouts, retries, budget, failure accrual) travel with the Service.
type svcConfig struct {
	policy      *discovery.Policy // nil: the defaults
	protocol    func(corev1.ServicePort) discovery.Protocol
	balancer    discovery.Balancer
	declared    discovery.Protocol // from AnnotationProtocol
	hasDeclared bool
	opaque      []plan.PortRange
}

// serviceConfig reads svc's annotations. A bad value is reported and ignored (the default
// applies): one typo in one Service must not take discovery down for the whole mesh.
func serviceConfig(svc *corev1.Service) (svcConfig, []string) {
	var c svcConfig
	var errs []string
	ann := svc.Annotations
	if v, ok := ann[AnnotationProtocol]; ok {
		p, ok := discovery.ParseProtocol(strings.TrimSpace(v))
		if ok {
			c.declared, c.hasDeclared = p, true
		} else {
			errs = append(errs, fmt.Sprintf("annotation %s is %q: want auto, http1, http2 or opaque; detecting instead", AnnotationProtocol, v))
		}
	}
	if v, ok := ann[AnnotationOpaquePorts]; ok {
		r, err := plan.ParsePorts(v)
		if err != nil {
			errs = append(errs, fmt.Sprintf("annotation %s: %v; ignored", AnnotationOpaquePorts, err))
		}
		c.opaque = r
	}
	if v, ok := ann[AnnotationBalancer]; ok {
		b, ok := discovery.ParseBalancer(strings.TrimSpace(v))
		if ok {
			c.balancer = b
		} else {
			errs = append(errs, fmt.Sprintf("annotation %s is %q: want p2c-ewma or round-robin; using p2c-ewma", AnnotationBalancer, v))
		}
	}
	pol, err := discovery.ParseAnnotations(ann)
	if err != nil {
		errs = append(errs, fmt.Sprintf("%v; the service keeps the default policy", err))
	}
	c.policy = pol
	c.protocol = func(port corev1.ServicePort) discovery.Protocol {
		if slices.ContainsFunc(c.opaque, func(r plan.PortRange) bool {
			return uint32(r.First) <= uint32(port.Port) && uint32(port.Port) <= uint32(r.Last)
		}) {
			return discovery.ProtocolOpaque
		}
		if c.hasDeclared {
			return c.declared
		}
		if port.AppProtocol != nil {
			return AppProtocol(*port.AppProtocol)
		}
		return discovery.ProtocolAuto
	}
	return c, errs
}

// AppProtocol maps a Service port's appProtocol to the protocol the proxy speaks:
//
//	kubernetes.io/h2c, h2c, http2, grpc        http2 (prior-knowledge HTTP/2, balanced per stream)
//	http, kubernetes.io/ws                     http1 (balanced per request; WebSocket upgrades relayed)
//	https, tls, kubernetes.io/wss, tcp, and    opaque (the app's own TLS, or a server-speaks-first
//	mysql, postgresql, redis, mongodb, amqp,   protocol: relayed without waiting to detect)
//	kafka, smtp
//	anything else                              auto (detected from the first bytes)
//
// Names are compared without case (IANA service names are case-insensitive).
func AppProtocol(s string) discovery.Protocol {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "kubernetes.io/h2c", "h2c", "http2", "grpc":
		return discovery.ProtocolHTTP2
	case "http", "kubernetes.io/ws":
		return discovery.ProtocolHTTP1
	case "https", "tls", "kubernetes.io/wss", "tcp", "mysql", "postgresql", "postgres", "redis", "mongodb", "amqp", "kafka", "smtp":
		return discovery.ProtocolOpaque
	}
	return discovery.ProtocolAuto
}
