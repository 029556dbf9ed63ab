package kube

import (
	"context"
	"crypto/x509"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	authv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/detourmesh/detour/controller/ca"
	"github.com/detourmesh/detour/controller/kube"
	"github.com/detourmesh/detour/discovery"
	"github.com/detourmesh/detour/inject"
	"github.com/detourmesh/detour/internal/kubecluster/kubetest"
	"github.com/detourmesh/detour/proxy/resolve"
	"github.com/detourmesh/detour/spiffe"
)

func ptr[T any](v T) *T { return &v }

// stockDeployment is StockData with a native sidecar named like Detour's (no kubelet runs it:
// the name is what makes a pod meshed to discovery).
func stockDeployment(ns string, replicas int32) *appsv1.Deployment {
	labels := map[string]string{"app": "stockdata"}
	return &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "stockdata"},
		Spec: appsv1.DeploymentSpec{
			Replicas: &replicas,
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{
					ServiceAccountName: "stockdata",
					InitContainers:     []corev1.Container{{Name: inject.ProxyContainer, Image: "detour:dev", RestartPolicy: ptr(corev1.ContainerRestartPolicyAlways)}},
					Containers: []corev1.Container{{Name: "stockdata", Image: "stockdata:dev",
						Ports: []corev1.ContainerPort{{Name: "grpc", ContainerPort: 8080}}}},
				},
			},
		},
	}
}

// markPodsReady stands in for the kubelet: every pod of app=stockdata in ns that is not yet
// Running gets the next address of ips.
func markPodsReady(t *testing.T, ns string, ips *[]string) {
	t.Helper()
	ctx := context.Background()
	pods, err := client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "app=stockdata"})
	if err != nil {
		t.Fatal(err)
	}
	for i := range pods.Items {
		p := &pods.Items[i]
		if p.Status.Phase == corev1.PodRunning || p.DeletionTimestamp != nil {
			continue
		}
		if len(*ips) == 0 {
			t.Fatal("out of pod addresses")
		}
		// Dual-stack, as a pod of a dual-stack cluster: 198.18.5.N and fd00:de70:5::N.
		v4 := (*ips)[0]
		v6 := "fd00:de70:5::" + v4[strings.LastIndexByte(v4, '.')+1:]
		if _, err := kubetest.MarkReady(ctx, client, p, v4, v6); err != nil {
			t.Fatal(err)
		}
		*ips = (*ips)[1:]
	}
}

// waitPods waits until ns has n pods of app=stockdata that are not being deleted.
func waitPods(t *testing.T, ns string, n int) {
	t.Helper()
	eventually(t, 20*time.Second, func() string {
		pods, err := client.CoreV1().Pods(ns).List(context.Background(), metav1.ListOptions{LabelSelector: "app=stockdata"})
		if err != nil {
			return err.Error()
		}
		live := 0
		for _, p := range pods.Items {
			if p.DeletionTimestamp == nil {
				live++
			}
		}
		if live != n {
			return fmt.Sprintf("%d pods, want %d", live, n)
		}
		return ""
	})
}

// serviceToken asks the API server for a token of ServiceAccount sa for audience, as the
// kubelet does for the proxy's projected volume.
func serviceToken(t *testing.T, ns, sa, audience string) string {
	t.Helper()
	tr, err := client.CoreV1().ServiceAccounts(ns).CreateToken(context.Background(), sa, &authv1.TokenRequest{
		Spec: authv1.TokenRequestSpec{Audiences: []string{audience}, ExpirationSeconds: ptr(int64(600))},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return tr.Status.Token
}

func serviceAccount(t *testing.T, ns, name string) {
	t.Helper()
	if _, err := client.CoreV1().ServiceAccounts(ns).Create(context.Background(), &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

func endpointsOf(snap *discovery.Snapshot, name string) (*discovery.Service, []string) {
	for _, s := range snap.Services() {
		if s.Name == name {
			var out []string
			for _, e := range s.Endpoints {
				out = append(out, e.Addr.String()+"="+e.Identity)
			}
			slices.Sort(out)
			return s, out
		}
	}
	return nil, nil
}

// TestDiscoveryFromTheAPI: Services and EndpointSlices created through the API become the
// discovery model, in the controller's source and at a proxy watching the controller binary;
// scaling the Deployment from 2 to 3 reaches the watcher; a terminating pod leaves the ready
// set; a change elsewhere keeps the unchanged service's pointer. The Service is dual-stack: both
// cluster IPs select it, and each dual-stack pod is one endpoint, in the primary family.
func TestDiscoveryFromTheAPI(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ns := namespace(t, "disc", nil)
	serviceAccount(t, ns, "stockdata")
	serviceAccount(t, ns, "stockweb")
	svc, err := client.CoreV1().Services(ns).Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "stockdata", Annotations: map[string]string{kube.AnnotationBalancer: "round-robin"}},
		Spec: corev1.ServiceSpec{Selector: map[string]string{"app": "stockdata"}, IPFamilyPolicy: ptr(corev1.IPFamilyPolicyRequireDualStack), Ports: []corev1.ServicePort{{
			Name: "grpc", Port: 80, TargetPort: intstr.FromString("grpc"), AppProtocol: ptr("kubernetes.io/h2c")}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	vip := netip.AddrPortFrom(netip.MustParseAddr(svc.Spec.ClusterIP), 80)
	if len(svc.Spec.ClusterIPs) != 2 {
		t.Fatalf("a dual-stack Service got cluster IPs %v", svc.Spec.ClusterIPs)
	}
	vip6 := netip.AddrPortFrom(netip.MustParseAddr(svc.Spec.ClusterIPs[1]), 80)
	if _, err := client.AppsV1().Deployments(ns).Create(ctx, stockDeployment(ns, 2), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	ips := []string{"198.18.5.11", "198.18.5.12", "198.18.5.13", "198.18.5.14"}
	waitPods(t, ns, 2)
	markPodsReady(t, ns, &ips)

	// The controller's source, in this process.
	src, err := kube.New(client, kube.Options{TrustDomain: "cluster.local"})
	if err != nil {
		t.Fatal(err)
	}
	go src.Run(ctx)
	name := "stockdata.disc"
	id := "spiffe://cluster.local/ns/disc/sa/stockdata"
	wantEndpoints := func(want ...string) func() string {
		return func() string {
			snap := src.Snapshot()
			if snap == nil {
				return "no snapshot yet"
			}
			s, got := endpointsOf(snap, name)
			if s == nil {
				return fmt.Sprintf("no %s in %d services", name, len(snap.Services()))
			}
			if strings.Join(got, " ") != strings.Join(want, " ") {
				return fmt.Sprintf("endpoints %v, want %v", got, want)
			}
			return ""
		}
	}
	eventually(t, 20*time.Second, wantEndpoints("198.18.5.11:8080="+id, "198.18.5.12:8080="+id))
	snap := src.Snapshot()
	s, _ := endpointsOf(snap, name)
	if got, ok := snap.Lookup(vip); !ok || got != s || s.Protocol != discovery.ProtocolHTTP2 || s.Balancer != discovery.BalancerRoundRobin {
		t.Fatalf("the service at its cluster IP %s: %+v", vip, s)
	}
	if got, ok := snap.Lookup(vip6); !ok || got != s {
		t.Fatalf("the service at its IPv6 cluster IP %s: %+v", vip6, got)
	}
	if got, ok := snap.LookupAuthority("stockdata.disc.svc.cluster.local"); !ok || got != s {
		t.Errorf("the service's DNS name does not select it: %v", got)
	}

	// A proxy watching the controller binary, proving its identity with a ServiceAccount token.
	caDir := newCA(t)
	ctrl := startController(t, caDir, "--webhook-listen", "", "--log-level", "debug").addr
	tokenFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokenFile, []byte(serviceToken(t, ns, "stockweb", inject.TokenAudience)), 0o600); err != nil {
		t.Fatal(err)
	}
	authority, err := ca.Load(caDir)
	if err != nil {
		t.Fatal(err)
	}
	watcher, err := resolve.StartController(ctx, resolve.ControllerOptions{
		Address: ctrl, Identity: "spiffe://cluster.local/ns/disc/sa/stockweb", TokenFile: tokenFile,
		TLS: spiffe.ClientTLS(spiffe.Pool([]*x509.Certificate{authority.TrustAnchor()}), spiffe.ControllerID(authority.TrustDomain()), time.Now),
	})
	if err != nil {
		t.Fatalf("watching the controller: %v", err)
	}
	watch := watcher.Watch(ctx)
	// A proxy resolves a service's endpoints once it routes to it: as its first connection does.
	defer watcher.Use("stockdata.disc")()
	var atProxy *discovery.Snapshot
	proxySees := func(n int) func() string {
		return func() string {
			select {
			case atProxy = <-watch:
			default:
			}
			if atProxy == nil {
				return "nothing at the proxy yet"
			}
			s, ok := atProxy.Lookup(vip)
			if !ok || len(s.Endpoints) != n {
				return fmt.Sprintf("the proxy sees %v at %s, want %d endpoints", s, vip, n)
			}
			return ""
		}
	}
	eventually(t, 20*time.Second, proxySees(2))

	// A change elsewhere: the unchanged service keeps its pointer.
	before := s
	if _, err := client.CoreV1().Services(ns).Create(ctx, &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "other"},
		Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{{Port: 81}}}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 20*time.Second, func() string {
		if o, _ := endpointsOf(src.Snapshot(), "other.disc"); o == nil {
			return "no other.disc yet"
		}
		return ""
	})
	if after, _ := endpointsOf(src.Snapshot(), name); after != before {
		t.Errorf("an unchanged service got a new pointer")
	}

	// Scale 2 -> 3: the third endpoint reaches the source and the watching proxy.
	scale, err := client.AppsV1().Deployments(ns).GetScale(ctx, "stockdata", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	scale.Spec.Replicas = 3
	if _, err := client.AppsV1().Deployments(ns).UpdateScale(ctx, "stockdata", scale, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitPods(t, ns, 3)
	markPodsReady(t, ns, &ips)
	start := time.Now()
	eventually(t, 20*time.Second, wantEndpoints("198.18.5.11:8080="+id, "198.18.5.12:8080="+id, "198.18.5.13:8080="+id))
	eventually(t, 20*time.Second, proxySees(3))
	t.Logf("the third endpoint reached the watching proxy %s after the pod was ready", time.Since(start).Round(time.Millisecond))

	// A terminating pod (deleted; with no kubelet it stays terminating) leaves the ready set.
	pods, _ := client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "app=stockdata"})
	var victim string
	for _, p := range pods.Items {
		if p.Status.PodIP == "198.18.5.12" {
			victim = p.Name
		}
	}
	if err := client.CoreV1().Pods(ns).Delete(ctx, victim, metav1.DeleteOptions{GracePeriodSeconds: ptr(int64(300))}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 20*time.Second, func() string {
		sl, _ := client.DiscoveryV1().EndpointSlices(ns).List(ctx, metav1.ListOptions{LabelSelector: "kubernetes.io/service-name=stockdata"})
		for _, s := range sl.Items {
			for _, e := range s.Endpoints {
				if e.Addresses[0] == "198.18.5.12" && e.Conditions.Terminating != nil && *e.Conditions.Terminating {
					return ""
				}
			}
		}
		return "the EndpointSlice does not show 198.18.5.12 terminating yet"
	})
	waitPods(t, ns, 3) // the ReplicaSet replaces the terminating pod
	markPodsReady(t, ns, &ips)
	eventually(t, 20*time.Second, wantEndpoints("198.18.5.11:8080="+id, "198.18.5.13:8080="+id, "198.18.5.14:8080="+id))
	eventually(t, 20*time.Second, func() string {
		if r := proxySees(3)(); r != "" {
			return r
		}
		s, _ := atProxy.Lookup(vip)
		for _, e := range s.Endpoints {
			if e.Addr.Addr().String() == "198.18.5.12" {
				return "the proxy still balances over the terminating endpoint"
			}
		}
		return ""
	})

	// Zone hints: an EndpointSlice written by hand for a selectorless Service, as topology-aware
	// routing writes them, reaches the watching proxy through the controller with its hints.
	if _, err := client.CoreV1().Services(ns).Create(ctx, &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "zoned"},
		Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "http", Port: 80}}}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	zoned := func(addr, zone string, hints ...string) discoveryv1.Endpoint {
		e := discoveryv1.Endpoint{Addresses: []string{addr}, Zone: ptr(zone), Conditions: discoveryv1.EndpointConditions{Ready: ptr(true)},
			Hints: &discoveryv1.EndpointHints{}}
		for _, h := range hints {
			e.Hints.ForZones = append(e.Hints.ForZones, discoveryv1.ForZone{Name: h})
		}
		return e
	}
	if _, err := client.DiscoveryV1().EndpointSlices(ns).Create(ctx, &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Name: "zoned-1", Labels: map[string]string{
			discoveryv1.LabelServiceName: "zoned", discoveryv1.LabelManagedBy: "detour-test"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: ptr("http"), Port: ptr(int32(8080)), Protocol: ptr(corev1.ProtocolTCP)}},
		Endpoints:   []discoveryv1.Endpoint{zoned("198.18.5.21", "zone-a", "zone-a"), zoned("198.18.5.22", "zone-b", "zone-b", "zone-c")},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	defer watcher.Use("zoned.disc")()
	eventually(t, 20*time.Second, func() string {
		select {
		case atProxy = <-watch:
		default:
		}
		z, ok := atProxy.Service("zoned.disc")
		if !ok || len(z.Endpoints) != 2 {
			return fmt.Sprintf("the proxy sees %v for zoned.disc, want 2 endpoints", z)
		}
		got := fmt.Sprintf("%s %s %v; %s %s %v", z.Endpoints[0].Addr, z.Endpoints[0].Zone, z.Endpoints[0].ForZones, z.Endpoints[1].Addr, z.Endpoints[1].Zone, z.Endpoints[1].ForZones)
		if want := "198.18.5.21:8080 zone-a [zone-a]; 198.18.5.22:8080 zone-b [zone-b zone-c]"; got != want {
			return fmt.Sprintf("the proxy sees %s, want %s", got, want)
		}
		return ""
	})
}
