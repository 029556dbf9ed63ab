package kube

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/detourmesh/detour/discovery"
	"github.com/detourmesh/detour/inject"
)

func ptr[T any](v T) *T { return &v }

// fixture is a small cluster: the StockData Service (dual-stack, two ports), its slices and
// pods, one meshed and one not.
type fixture struct {
	svcs   []*corev1.Service
	slices []*discoveryv1.EndpointSlice
	pods   []*corev1.Pod
}

func (f *fixture) input() Input {
	return Input{
		TrustDomain: "cluster.local", ClusterDomain: "cluster.local", Services: f.svcs,
		SlicesOf: func(ns, name string) []*discoveryv1.EndpointSlice {
			var out []*discoveryv1.EndpointSlice
			for _, s := range f.slices {
				if s.Namespace == ns && s.Labels[discoveryv1.LabelServiceName] == name {
					out = append(out, s)
				}
			}
			return out
		},
		Pod: func(ns, name string) *corev1.Pod {
			for _, p := range f.pods {
				if p.Namespace == ns && p.Name == name {
					return p
				}
			}
			return nil
		},
		PodByIP: func(ip string) *corev1.Pod {
			for _, p := range f.pods {
				if p.Status.PodIP == ip {
					return p
				}
			}
			return nil
		},
	}
}

func service(ns, name string, ips []string, ports ...corev1.ServicePort) *corev1.Service {
	s := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}}
	s.Spec.Type = corev1.ServiceTypeClusterIP
	if len(ips) > 0 {
		s.Spec.ClusterIP = ips[0]
	}
	s.Spec.ClusterIPs = ips
	s.Spec.Ports = ports
	return s
}

func slice(ns, svc, name string, family discoveryv1.AddressType, ports map[string]int32, eps ...discoveryv1.Endpoint) *discoveryv1.EndpointSlice {
	s := &discoveryv1.EndpointSlice{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name,
		Labels: map[string]string{discoveryv1.LabelServiceName: svc}}, AddressType: family, Endpoints: eps}
	for n, p := range ports {
		s.Ports = append(s.Ports, discoveryv1.EndpointPort{Name: ptr(n), Port: ptr(p), Protocol: ptr(corev1.ProtocolTCP)})
	}
	return s
}

func ep(addr, pod string, ready, serving, terminating bool) discoveryv1.Endpoint {
	e := discoveryv1.Endpoint{Addresses: []string{addr}, Conditions: discoveryv1.EndpointConditions{
		Ready: ptr(ready), Serving: ptr(serving), Terminating: ptr(terminating)}}
	if pod != "" {
		e.TargetRef = &corev1.ObjectReference{Kind: "Pod", Name: pod}
	}
	return e
}

func pod(ns, name, sa, ip string, meshed bool) *corev1.Pod {
	p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}}
	p.Spec.ServiceAccountName = sa
	p.Spec.Containers = []corev1.Container{{Name: "app"}}
	if meshed {
		p.Spec.InitContainers = []corev1.Container{{Name: inject.InitContainer}, {Name: inject.ProxyContainer}}
	}
	p.Status.PodIP = ip
	p.Status.Phase = corev1.PodRunning
	return p
}

func stockFixture() *fixture {
	svc := service("stocks", "stockdata", []string{"198.19.0.10", "fd00:de71::10"},
		corev1.ServicePort{Name: "grpc", Port: 80, Protocol: corev1.ProtocolTCP, AppProtocol: ptr("kubernetes.io/h2c")},
		corev1.ServicePort{Name: "metrics", Port: 9090},
		corev1.ServicePort{Name: "dns", Port: 53, Protocol: corev1.ProtocolUDP})
	svc.Spec.IPFamilies = []corev1.IPFamily{corev1.IPv4Protocol, corev1.IPv6Protocol}
	ports := map[string]int32{"grpc": 8080, "metrics": 9100}
	return &fixture{
		svcs: []*corev1.Service{svc},
		slices: []*discoveryv1.EndpointSlice{
			slice("stocks", "stockdata", "stockdata-v4", discoveryv1.AddressTypeIPv4, ports,
				ep("198.18.0.11", "stockdata-a", true, true, false),
				ep("198.18.0.12", "stockdata-b", true, true, false),
				ep("198.18.0.13", "stockdata-c", false, true, true)),
			slice("stocks", "stockdata", "stockdata-v6", discoveryv1.AddressTypeIPv6, ports,
				ep("fd00:de70::11", "stockdata-a", true, true, false),
				ep("fd00:de70::12", "stockdata-b", true, true, false)),
		},
		pods: []*corev1.Pod{
			pod("stocks", "stockdata-a", "stockdata", "198.18.0.11", true),
			pod("stocks", "stockdata-b", "stockdata", "198.18.0.12", false),
			pod("stocks", "stockdata-c", "stockdata", "198.18.0.13", true),
		},
	}
}

func byName(t *testing.T, svcs []*discovery.Service) map[string]*discovery.Service {
	m := map[string]*discovery.Service{}
	for _, s := range svcs {
		m[s.Name] = s
	}
	return m
}

func addrs(eps []discovery.Endpoint) string {
	var s []string
	for _, e := range eps {
		s = append(s, e.Addr.String())
	}
	return strings.Join(s, " ")
}

// TestBuildStockData: one model service per TCP port, selected by both cluster IPs and the DNS
// names; endpoints at the target port, ready only, each pod once in the primary family; the
// meshed pod carries its ServiceAccount's identity, the other none.
func TestBuildStockData(t *testing.T) {
	got, problems := Build(stockFixture().input())
	if len(problems) != 0 {
		t.Errorf("problems: %v", problems)
	}
	mustWire(t, got)
	m := byName(t, got)
	if len(got) != 2 || m["80.stockdata.stocks"] == nil || m["9090.stockdata.stocks"] == nil {
		t.Fatalf("services %v, want 80.stockdata.stocks and 9090.stockdata.stocks (UDP left out)", m)
	}
	grpc := m["80.stockdata.stocks"]
	if want := []netip.AddrPort{netip.MustParseAddrPort("198.19.0.10:80"), netip.MustParseAddrPort("[fd00:de71::10]:80")}; len(grpc.Addresses) != 2 || grpc.Addresses[0] != want[0] || grpc.Addresses[1] != want[1] {
		t.Errorf("addresses %v, want %v", grpc.Addresses, want)
	}
	if strings.Join(grpc.Authorities, " ") != "stockdata.stocks:80 stockdata.stocks.svc:80 stockdata.stocks.svc.cluster.local:80" {
		t.Errorf("authorities %v", grpc.Authorities)
	}
	if grpc.Protocol != discovery.ProtocolHTTP2 || m["9090.stockdata.stocks"].Protocol != discovery.ProtocolAuto {
		t.Errorf("protocols %v %v, want http2 (appProtocol kubernetes.io/h2c) and auto", grpc.Protocol, m["9090.stockdata.stocks"].Protocol)
	}
	if got := addrs(grpc.Endpoints); got != "198.18.0.11:8080 198.18.0.12:8080" {
		t.Errorf("endpoints %s, want the two ready pods once each, IPv4 (primary family), at the target port", got)
	}
	if got := addrs(m["9090.stockdata.stocks"].Endpoints); got != "198.18.0.11:9100 198.18.0.12:9100" {
		t.Errorf("metrics endpoints %s", got)
	}
	if grpc.Endpoints[0].Identity != "spiffe://cluster.local/ns/stocks/sa/stockdata" || grpc.Endpoints[1].Identity != "" {
		t.Errorf("identities %q %q: want the meshed pod's ServiceAccount, none for the unmeshed", grpc.Endpoints[0].Identity, grpc.Endpoints[1].Identity)
	}
}

// TestBuildTerminating: a terminating endpoint leaves the ready set; when nothing is ready the
// serving terminating endpoints answer (KEP-1669), and a not-serving one never does.
func TestBuildTerminating(t *testing.T) {
	f := stockFixture()
	f.slices = f.slices[:1]
	f.slices[0].Endpoints = []discoveryv1.Endpoint{
		ep("198.18.0.11", "stockdata-a", false, true, true),
		ep("198.18.0.12", "stockdata-b", false, false, true),
		// Ready true but terminating: a slice another controller wrote; terminating wins.
		ep("198.18.0.13", "stockdata-c", true, true, true),
	}
	got, _ := Build(f.input())
	if a := addrs(byName(t, got)["80.stockdata.stocks"].Endpoints); a != "198.18.0.11:8080 198.18.0.13:8080" {
		t.Errorf("with nothing ready: %s, want the serving terminating endpoints", a)
	}
	f.slices[0].Endpoints = append(f.slices[0].Endpoints, ep("198.18.0.14", "", true, true, false))
	got, _ = Build(f.input())
	if a := addrs(byName(t, got)["80.stockdata.stocks"].Endpoints); a != "198.18.0.14:8080" {
		t.Errorf("with one ready: %s, want only it", a)
	}
}

// TestBuildIPv6Primary: an IPv6-first dual-stack Service takes the IPv6 address of each pod.
func TestBuildIPv6Primary(t *testing.T) {
	f := stockFixture()
	f.svcs[0].Spec.IPFamilies = []corev1.IPFamily{corev1.IPv6Protocol, corev1.IPv4Protocol}
	got, _ := Build(f.input())
	if a := addrs(byName(t, got)["80.stockdata.stocks"].Endpoints); a != "[fd00:de70::11]:8080 [fd00:de70::12]:8080" {
		t.Errorf("endpoints %s, want the IPv6 addresses", a)
	}
}

// TestBuildAnnotations: config.detour.io/protocol and opaque-ports win over appProtocol, the
// balancer is taken, and bad values are reported and fall back to the defaults.
func TestBuildAnnotations(t *testing.T) {
	f := stockFixture()
	f.svcs[0].Annotations = map[string]string{AnnotationProtocol: "http1", AnnotationOpaquePorts: "9000-9099", AnnotationBalancer: "round-robin"}
	got, problems := Build(f.input())
	m := byName(t, got)
	if m["80.stockdata.stocks"].Protocol != discovery.ProtocolHTTP1 || m["9090.stockdata.stocks"].Protocol != discovery.ProtocolOpaque {
		t.Errorf("protocols %v %v, want http1 and opaque", m["80.stockdata.stocks"].Protocol, m["9090.stockdata.stocks"].Protocol)
	}
	if m["80.stockdata.stocks"].Balancer != discovery.BalancerRoundRobin || len(problems) != 0 {
		t.Errorf("balancer %v, problems %v", m["80.stockdata.stocks"].Balancer, problems)
	}
	f.svcs[0].Annotations = map[string]string{AnnotationProtocol: "quic", AnnotationBalancer: "random", AnnotationOpaquePorts: "x"}
	got, problems = Build(f.input())
	m = byName(t, got)
	if len(problems) != 3 || m["80.stockdata.stocks"].Protocol != discovery.ProtocolHTTP2 || m["80.stockdata.stocks"].Balancer != discovery.BalancerP2CEWMA {
		t.Errorf("bad annotations: problems %v, protocol %v, balancer %v", problems, m["80.stockdata.stocks"].Protocol, m["80.stockdata.stocks"].Balancer)
	}
}

// TestBuildPolicyAnnotations: the config.detour.io/ policy annotations become the Service's
// discovery.Policy on every port; a bad one is reported and leaves the default policy.
func TestBuildPolicyAnnotations(t *testing.T) {
	f := stockFixture()
	f.svcs[0].Annotations = map[string]string{
		AnnotationBalancer:                   "round-robin",
		discovery.AnnotationRetryOn:          "unavailable,reset",
		discovery.AnnotationBudgetRatio:      "0.1",
		discovery.AnnotationIdempotentRoutes: "POST /stockkube.v1.StockData/GetQuote",
		discovery.AnnotationRouteTimeouts:    "/stockkube.v1.StockData/GetQuote=200ms",
	}
	got, problems := Build(f.input())
	m := byName(t, got)
	for _, name := range []string{"80.stockdata.stocks", "9090.stockdata.stocks"} {
		p := m[name].Policy
		if p == nil || p.Retry == nil || p.Retry.On != discovery.RetryUnavailable|discovery.RetryReset || p.Budget.Ratio != 0.1 {
			t.Fatalf("%s: policy %+v, problems %v", name, p, problems)
		}
		if r := p.Match("POST", "/stockkube.v1.StockData/GetQuote"); r == nil || !r.Idempotent || r.Timeout != 200*time.Millisecond {
			t.Fatalf("%s: route %+v", name, r)
		}
	}
	if len(problems) != 0 {
		t.Fatalf("problems %v", problems)
	}
	f.svcs[0].Annotations = map[string]string{discovery.AnnotationRetryAttempts: "100"}
	got, problems = Build(f.input())
	if m := byName(t, got); m["80.stockdata.stocks"].Policy != nil || len(problems) != 1 || !strings.Contains(problems[0].Msg, "retry-attempts") {
		t.Fatalf("a bad policy annotation: policy %+v, problems %v", m["80.stockdata.stocks"].Policy, problems)
	}
}

func TestAppProtocol(t *testing.T) {
	for in, want := range map[string]discovery.Protocol{
		"kubernetes.io/h2c": discovery.ProtocolHTTP2, "GRPC": discovery.ProtocolHTTP2, "http": discovery.ProtocolHTTP1,
		"kubernetes.io/ws": discovery.ProtocolHTTP1, "kubernetes.io/wss": discovery.ProtocolOpaque, "postgresql": discovery.ProtocolOpaque,
		"https": discovery.ProtocolOpaque, "example.com/custom": discovery.ProtocolAuto, "": discovery.ProtocolAuto,
	} {
		if got := AppProtocol(in); got != want {
			t.Errorf("AppProtocol(%q) = %v, want %v", in, got, want)
		}
	}
}

// TestBuildHeadlessAndExternalName: a headless Service becomes one service per endpoint,
// selected by the pod's address (and its StatefulSet DNS name); ExternalName is refused with a
// reason; a Service without a cluster IP yet is left out quietly.
func TestBuildHeadlessAndExternalName(t *testing.T) {
	db := service("data", "db", []string{"None"}, corev1.ServicePort{Name: "pg", Port: 5432})
	e := ep("198.18.0.21", "db-0", true, true, false)
	e.Hostname = ptr("db-0")
	ext := service("data", "partner", nil, corev1.ServicePort{Port: 443})
	ext.Spec.Type, ext.Spec.ExternalName = corev1.ServiceTypeExternalName, "api.example.com"
	pending := service("data", "new", nil, corev1.ServicePort{Port: 80})
	f := &fixture{
		svcs:   []*corev1.Service{db, ext, pending},
		slices: []*discoveryv1.EndpointSlice{slice("data", "db", "db-x", discoveryv1.AddressTypeIPv4, map[string]int32{"pg": 5432}, e, ep("198.18.0.22", "db-1", true, true, false))},
		pods:   []*corev1.Pod{pod("data", "db-0", "db", "198.18.0.21", true), pod("data", "db-1", "", "198.18.0.22", true)},
	}
	got, problems := Build(f.input())
	mustWire(t, got)
	m := byName(t, got)
	if len(got) != 2 || m["db-0.db.data"] == nil || m["198-18-0-22.db.data"] == nil {
		t.Fatalf("headless services: %v", m)
	}
	d0 := m["db-0.db.data"]
	if d0.Addresses[0] != netip.MustParseAddrPort("198.18.0.21:5432") || len(d0.Endpoints) != 1 || d0.Endpoints[0].Identity != "spiffe://cluster.local/ns/data/sa/db" {
		t.Errorf("db-0: %+v", d0)
	}
	if d0.Authorities[0] != "db-0.db.data:5432" {
		t.Errorf("db-0 authorities %v", d0.Authorities)
	}
	if m["198-18-0-22.db.data"].Endpoints[0].Identity != "spiffe://cluster.local/ns/data/sa/default" {
		t.Errorf("a pod without a ServiceAccount name runs as default: %+v", m["198-18-0-22.db.data"].Endpoints[0])
	}
	if len(problems) != 1 || problems[0].Service != "data/partner" || !strings.Contains(problems[0].Msg, "ExternalName") {
		t.Errorf("problems %v, want the ExternalName refusal", problems)
	}
}

// TestBuildKeepsNamesUnique: pods of a headless Service that share a hostname (a Deployment
// setting spec.hostname) would give two services one name, which a proxy refuses for the whole
// snapshot: the first is kept and the problem said.
func TestBuildKeepsNamesUnique(t *testing.T) {
	web := service("web", "web", []string{"None"}, corev1.ServicePort{Name: "http", Port: 80})
	a, b := ep("198.18.0.31", "web-a", true, true, false), ep("198.18.0.32", "web-b", true, true, false)
	a.Hostname, b.Hostname = ptr("web"), ptr("web")
	f := &fixture{svcs: []*corev1.Service{web},
		slices: []*discoveryv1.EndpointSlice{slice("web", "web", "web-x", discoveryv1.AddressTypeIPv4, map[string]int32{"http": 8080}, a, b)}}
	got, problems := Build(f.input())
	if len(got) != 1 || got[0].Name != "web.web.web" || len(problems) != 1 {
		t.Fatalf("services %v, problems %v", byName(t, got), problems)
	}
	mustWire(t, got)
}

// mustWire checks that a proxy accepts the services from the controller's wire format, which
// validates them as strictly as the discovery file.
func mustWire(t *testing.T, svcs []*discovery.Service) {
	t.Helper()
	table := discovery.NewTable(len(svcs))
	for i, svc := range svcs {
		entry, err := discovery.EntryFromProto(discovery.EntryToProto(svc), fmt.Sprintf("services[%d]", i))
		if err == nil {
			err = table.Add(entry)
		}
		if err != nil {
			t.Fatalf("a proxy would refuse service %s: %v", svc.Name, err)
		}
		for j := range svc.Endpoints {
			if _, err := discovery.EndpointFromProto(discovery.EndpointToProto(&svc.Endpoints[j]), "cluster.local", fmt.Sprintf("endpoints[%d]", j)); err != nil {
				t.Fatalf("a proxy would refuse endpoint %s of %s: %v", svc.Endpoints[j].Addr, svc.Name, err)
			}
		}
	}
}

// TestBuildZoneHints: an EndpointSlice's zone and hints.forZones reach the model's endpoint; a
// hint a proxy would refuse (twice the same zone) is dropped, the endpoint kept.
func TestBuildZoneHints(t *testing.T) {
	f := stockFixture()
	f.slices = f.slices[:1]
	a, b := ep("198.18.0.11", "stockdata-a", true, true, false), ep("198.18.0.12", "stockdata-b", true, true, false)
	a.Zone, b.Zone = ptr("zone-a"), ptr("zone-b")
	a.Hints = &discoveryv1.EndpointHints{ForZones: []discoveryv1.ForZone{{Name: "zone-a"}, {Name: "zone-c"}}}
	b.Hints = &discoveryv1.EndpointHints{ForZones: []discoveryv1.ForZone{{Name: "zone-b"}, {Name: "zone-b"}}}
	f.slices[0].Endpoints = []discoveryv1.Endpoint{a, b}
	got, _ := Build(f.input())
	eps := byName(t, got)["80.stockdata.stocks"].Endpoints
	if len(eps) != 2 {
		t.Fatalf("endpoints %s, want both", addrs(eps))
	}
	if eps[0].Zone != "zone-a" || strings.Join(eps[0].ForZones, ",") != "zone-a,zone-c" {
		t.Errorf("first endpoint: zone %q hints %v, want zone-a and [zone-a zone-c]", eps[0].Zone, eps[0].ForZones)
	}
	if eps[1].Zone != "zone-b" || eps[1].ForZones != nil {
		t.Errorf("second endpoint: zone %q hints %v, want zone-b and its repeated hint dropped", eps[1].Zone, eps[1].ForZones)
	}
}
