package kube

import (
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"

	"github.com/detourmesh/detour/discovery"
	"github.com/detourmesh/detour/inject"
)

// Annotations on a Service that configure how the mesh treats it (`config.detour.io/...`).
const (
	// AnnotationProtocol declares the protocol of every port of the Service: auto, http1, http2
	// or opaque. It wins over the ports' appProtocol.
	AnnotationProtocol = "config.detour.io/protocol"
	// AnnotationOpaquePorts lists Service ports ("5432,6379", ranges allowed) relayed as TCP
	// without detection: server-speaks-first protocols.
	AnnotationOpaquePorts = "config.detour.io/opaque-ports"
	// AnnotationBalancer chooses the balancer: p2c-ewma (default) or round-robin.
	AnnotationBalancer = "config.detour.io/balancer"
	// The timeout, retry, budget and failure-accrual annotations (discovery.ParseAnnotations,
	// discovery.Annotation*) are read in serviceConfig, beside these, and travel with the
	// Service the same way.
)

// Input is what a rebuild reads: the informers' objects at one moment. The build is a pure
// function of it, so it is tested on objects a test constructs.
type Input struct {
	TrustDomain   discovery.TrustDomain
	ClusterDomain string // e.g. cluster.local, for the services' DNS authorities
	Services      []*corev1.Service
	// SlicesOf returns the EndpointSlices of a Service (namespace, name).
	SlicesOf func(namespace, name string) []*discoveryv1.EndpointSlice
	// Pod returns a pod by namespace and name, nil when unknown.
	Pod func(namespace, name string) *corev1.Pod
	// PodByIP returns the pod that has ip, nil when none does (for endpoints without targetRef).
	PodByIP func(ip string) *corev1.Pod
}

// Problem is a Service the build refused or partly refused, and why: logged by the source, at
// most once per distinct problem.
type Problem struct {
	Service string // namespace/name
	Msg     string
}

// Build turns the objects into the discovery model: one discovery.Service per TCP port of a
// ClusterIP Service (named "<name>.<namespace>", or "<port>.<name>.<namespace>" for each port of
// a Service with several: the model's names are DNS names), selected by every cluster IP of the
// Service (IPv4 and IPv6) at that port and by its DNS names as authorities; headless Services
// become one discovery.Service per endpoint (so a client that picked a pod by DNS still gets
// mutual TLS to that pod); ExternalName Services are refused (the proxy relays connections to
// the name's addresses untouched, as any destination discovery does not know). Services come
// out sorted by name.
func Build(in Input) ([]*discovery.Service, []Problem) {
	var out []*discovery.Service
	var problems []Problem
	for _, svc := range in.Services {
		key := svc.Namespace + "/" + svc.Name
		cfg, errs := serviceConfig(svc)
		for _, e := range errs {
			problems = append(problems, Problem{key, e})
		}
		switch svc.Spec.Type {
		case corev1.ServiceTypeExternalName:
			problems = append(problems, Problem{key, "type ExternalName is not part of the mesh: connections to " + svc.Spec.ExternalName + " are relayed untouched"})
			continue
		}
		headless := svc.Spec.ClusterIP == corev1.ClusterIPNone
		var vips []netip.Addr
		if !headless {
			for _, ip := range clusterIPs(svc) {
				a, err := netip.ParseAddr(ip)
				if err != nil {
					problems = append(problems, Problem{key, fmt.Sprintf("cluster IP %q: %v", ip, err)})
					continue
				}
				vips = append(vips, a.Unmap())
			}
			if len(vips) == 0 {
				continue // not allocated yet
			}
		}
		svcSlices := in.SlicesOf(svc.Namespace, svc.Name)
		var tcp []corev1.ServicePort
		for _, port := range svc.Spec.Ports {
			if port.Protocol == "" || port.Protocol == corev1.ProtocolTCP {
				tcp = append(tcp, port) // the mesh carries TCP
			}
		}
		for _, port := range tcp {
			prefix := ""
			if len(tcp) > 1 {
				prefix = strconv.Itoa(int(port.Port)) + "."
			}
			proto := cfg.protocol(port)
			eps := endpoints(in, svc, port, svcSlices)
			if headless {
				for _, ds := range headlessServices(in, svc, port, prefix, proto, cfg.balancer, eps) {
					ds.Policy = cfg.policy
					out = append(out, ds)
				}
				continue
			}
			ds := &discovery.Service{
				Name:     prefix + svc.Name + "." + svc.Namespace,
				Protocol: proto, Balancer: cfg.balancer, Endpoints: make([]discovery.Endpoint, len(eps)),
				Policy: cfg.policy,
			}
			for i, e := range eps {
				ds.Endpoints[i] = e.Endpoint
			}
			for _, ip := range vips {
				ds.Addresses = append(ds.Addresses, netip.AddrPortFrom(ip, uint16(port.Port)))
			}
			ds.Authorities = authorities(svc.Name+"."+svc.Namespace, in.ClusterDomain, port.Port)
			out = append(out, ds)
		}
	}
	slices.SortFunc(out, func(a, b *discovery.Service) int { return strings.Compare(a.Name, b.Name) })
	// Names are unique in the model (a proxy refuses a snapshot that repeats one): should two
	// objects ever map to one name (a headless pod whose hostname is a port number), keep the
	// first and say so, rather than have every proxy refuse the whole snapshot.
	uniq := out[:0]
	for i, svc := range out {
		if i > 0 && svc.Name == out[i-1].Name {
			problems = append(problems, Problem{svc.Name, "two Services map to this name in the mesh; one is left out"})
			continue
		}
		uniq = append(uniq, svc)
	}
	return uniq, problems
}

func clusterIPs(svc *corev1.Service) []string {
	if len(svc.Spec.ClusterIPs) > 0 {
		return svc.Spec.ClusterIPs
	}
	if svc.Spec.ClusterIP != "" {
		return []string{svc.Spec.ClusterIP}
	}
	return nil
}

// authorities are the host:port forms a client in the cluster may use for name.namespace.
func authorities(nameNS, clusterDomain string, port int32) []string {
	p := ":" + strconv.Itoa(int(port))
	a := []string{nameNS + p, nameNS + ".svc" + p}
	if clusterDomain != "" {
		a = append(a, nameNS+".svc."+clusterDomain+p)
	}
	return a
}

// headlessServices gives each endpoint of a headless Service a discovery.Service of its own,
// selected by the endpoint's address at the target port and by its DNS name, with that one
// endpoint: the client chose the pod, the mesh adds identity and TLS, not balancing.
func headlessServices(in Input, svc *corev1.Service, port corev1.ServicePort, prefix string, proto discovery.Protocol, bal discovery.Balancer, eps []endpoint) []*discovery.Service {
	var out []*discovery.Service
	for _, ep := range eps {
		host := strings.NewReplacer(".", "-", ":", "-").Replace(ep.Addr.Addr().String())
		if ep.hostname != "" {
			host = ep.hostname
		}
		ds := &discovery.Service{
			Name:      prefix + host + "." + svc.Name + "." + svc.Namespace,
			Addresses: []netip.AddrPort{ep.Addr},
			Protocol:  proto, Balancer: bal,
			Endpoints: []discovery.Endpoint{ep.Endpoint},
		}
		if ep.hostname != "" {
			// A StatefulSet's pods have DNS names of their own: <host>.<service>.<ns>.svc...
			ds.Authorities = authorities(ep.hostname+"."+svc.Name+"."+svc.Namespace, in.ClusterDomain, int32(ep.Addr.Port()))
		}
		out = append(out, ds)
	}
	return out
}

// endpoint is a discovery.Endpoint and the DNS hostname its slice gave it (headless Services).
type endpoint struct {
	discovery.Endpoint
	hostname string
}

// endpoints lists the endpoints serving port of svc across its slices: ready ones, or when none
// is ready, the serving ones that are terminating (as kube-proxy does, KEP-1669), so that a
// rollout's last old pods keep answering until new ones are ready. A terminating endpoint is
// never ready, so it receives no new requests while a ready one exists. One endpoint per pod:
// a dual-stack pod listed in an IPv4 and an IPv6 slice counts once, in the Service's primary
// family.
func endpoints(in Input, svc *corev1.Service, port corev1.ServicePort, svcSlices []*discoveryv1.EndpointSlice) []endpoint {
	primary := discoveryv1.AddressTypeIPv4
	if len(svc.Spec.IPFamilies) > 0 && svc.Spec.IPFamilies[0] == corev1.IPv6Protocol {
		primary = discoveryv1.AddressTypeIPv6
	}
	type cand struct {
		ep      endpoint
		ready   bool
		serving bool
		family  discoveryv1.AddressType
		pod     string
	}
	var cands []cand
	for _, sl := range svcSlices {
		if sl.AddressType != discoveryv1.AddressTypeIPv4 && sl.AddressType != discoveryv1.AddressTypeIPv6 {
			continue
		}
		var target int32
		for _, sp := range sl.Ports {
			if sp.Port == nil || (sp.Protocol != nil && *sp.Protocol != corev1.ProtocolTCP) {
				continue
			}
			if name(sp.Name) == port.Name {
				target = *sp.Port
			}
		}
		if target <= 0 || target > 65535 {
			continue
		}
		for _, e := range sl.Endpoints {
			if len(e.Addresses) == 0 {
				continue
			}
			ip, err := netip.ParseAddr(e.Addresses[0])
			if err != nil {
				continue
			}
			c := cand{
				ep:      endpoint{Endpoint: discovery.Endpoint{Addr: netip.AddrPortFrom(ip.Unmap(), uint16(target)), Weight: 1, Zone: name(e.Zone)}, hostname: name(e.Hostname)},
				ready:   e.Conditions.Ready == nil || *e.Conditions.Ready,
				serving: e.Conditions.Serving == nil || *e.Conditions.Serving,
				family:  sl.AddressType,
			}
			// Kubernetes documents Ready as false while terminating; check both, so a slice
			// written by another controller cannot make a terminating endpoint ready.
			if e.Conditions.Terminating != nil && *e.Conditions.Terminating {
				c.ready = false
			}
			if e.Hints != nil {
				var zones []string
				for _, z := range e.Hints.ForZones {
					zones = append(zones, z.Name)
				}
				// Hints a proxy would refuse are dropped, not sent: the endpoint stays usable.
				c.ep.ForZones, _ = discovery.CheckForZones(zones)
			}
			var pod *corev1.Pod
			if e.TargetRef != nil && e.TargetRef.Kind == "Pod" {
				ns := e.TargetRef.Namespace
				if ns == "" {
					ns = sl.Namespace
				}
				pod = in.Pod(ns, e.TargetRef.Name)
				c.pod = ns + "/" + e.TargetRef.Name
			} else if in.PodByIP != nil {
				pod = in.PodByIP(ip.String())
			}
			if pod != nil {
				c.ep.Identity = podIdentity(in.TrustDomain, pod)
			}
			cands = append(cands, c)
		}
	}
	pick := func(want func(cand) bool) []endpoint {
		var out []endpoint
		seen := map[string]int{} // pod -> index in out
		for _, c := range cands {
			if !want(c) {
				continue
			}
			if c.pod != "" {
				if i, ok := seen[c.pod]; ok {
					if c.family == primary {
						out[i] = c.ep // the primary family's address wins
					}
					continue
				}
				seen[c.pod] = len(out)
			}
			out = append(out, c.ep)
		}
		return out
	}
	eps := pick(func(c cand) bool { return c.ready })
	if len(eps) == 0 {
		eps = pick(func(c cand) bool { return c.serving })
	}
	slices.SortFunc(eps, func(a, b endpoint) int { return a.Addr.Compare(b.Addr) })
	return eps
}

// podIdentity is the SPIFFE ID a meshed pod's proxy proves (its ServiceAccount's), or "" for a
// pod without Detour's proxy, which is spoken to in plaintext.
func podIdentity(td discovery.TrustDomain, pod *corev1.Pod) string {
	if !Meshed(pod) {
		return ""
	}
	sa := pod.Spec.ServiceAccountName
	if sa == "" {
		sa = "default"
	}
	return td.ID(pod.Namespace, sa)
}

// Meshed reports whether pod runs Detour's proxy (injected by the webhook or detour inject
// --manual), as a native sidecar or a container.
func Meshed(pod *corev1.Pod) bool {
	for _, c := range pod.Spec.InitContainers {
		if c.Name == inject.ProxyContainer {
			return true
		}
	}
	for _, c := range pod.Spec.Containers {
		if c.Name == inject.ProxyContainer {
			return true
		}
	}
	return false
}

func name(p *string) string {
	if p == nil {
		return ""
	}
	return *p
}
