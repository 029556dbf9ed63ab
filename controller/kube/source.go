// Package kube is the controller's Kubernetes discovery source: it watches Services,
// EndpointSlices and Pods through client-go informers and turns them into the mesh's discovery
// model (package discovery), a Snapshot after every change. Build is the pure conversion; Source
// around it keeps the informers, indexes pods by IP and slices by Service, and rebuilds in one
// worker: the informers' handlers only mark the state dirty, and the worker rebuilds once the
// changes pause (debounced), so a rollout that touches a hundred objects makes a few snapshots,
// not a hundred.
package kube

import (
	"context"
	"fmt"
	"log/slog"
	"reflect"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"

	"github.com/detourmesh/detour/discovery"
)

// Options configure a Source.
type Options struct {
	TrustDomain discovery.TrustDomain
	// ClusterDomain is the cluster's DNS suffix for the services' authorities; default
	// cluster.local.
	ClusterDomain string
	// Debounce is how long the worker waits after a change for more before it rebuilds; at most
	// 10 times that passes between a change and its snapshot under a steady stream of changes.
	// Default 50 ms.
	Debounce time.Duration
	Logger   *slog.Logger
}

// Index names.
const (
	byIP      = "ip"
	byService = "service"
)

// Source is a discovery.Source on the Kubernetes API. Services whose content did not change keep
// the same *discovery.Service pointer from one snapshot to the next (the controller's diffing of
// what to send relies on it: an unchanged pointer is an unchanged service), so consumers may
// compare pointers to find what changed.
type Source struct {
	opts     Options
	factory  informers.SharedInformerFactory
	services cache.SharedIndexInformer
	slices   cache.SharedIndexInformer
	pods     cache.SharedIndexInformer
	dirty    chan struct{}

	mu       sync.Mutex
	current  *discovery.Snapshot
	changed  chan struct{} // closed and replaced when current changes
	revision uint64
	prev     map[string]*discovery.Service
	problems map[Problem]bool
}

// New prepares a Source on client; Run starts it.
func New(client kubernetes.Interface, opts Options) (*Source, error) {
	if opts.ClusterDomain == "" {
		opts.ClusterDomain = "cluster.local"
	}
	if opts.Debounce <= 0 {
		opts.Debounce = 50 * time.Millisecond
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.TrustDomain == "" {
		return nil, fmt.Errorf("kubernetes source: no trust domain")
	}
	f := informers.NewSharedInformerFactory(client, 0)
	s := &Source{
		opts: opts, factory: f,
		services: f.Core().V1().Services().Informer(),
		slices:   f.Discovery().V1().EndpointSlices().Informer(),
		pods:     f.Core().V1().Pods().Informer(),
		dirty:    make(chan struct{}, 1),
		changed:  make(chan struct{}),
		prev:     map[string]*discovery.Service{},
		problems: map[Problem]bool{},
	}
	// Keep only what Build reads of a pod: a node's pods are most of the cluster's objects.
	if err := s.pods.SetTransform(trimPod); err != nil {
		return nil, err
	}
	if err := s.pods.AddIndexers(cache.Indexers{byIP: podIPs}); err != nil {
		return nil, err
	}
	if err := s.slices.AddIndexers(cache.Indexers{byService: sliceService}); err != nil {
		return nil, err
	}
	h := cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { s.mark() },
		UpdateFunc: func(_, _ any) { s.mark() },
		DeleteFunc: func(any) { s.mark() },
	}
	for _, inf := range []cache.SharedIndexInformer{s.services, s.slices, s.pods} {
		if _, err := inf.AddEventHandler(h); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// mark is every informer handler: it never blocks, and many marks before the worker runs are
// one rebuild.
func (s *Source) mark() {
	select {
	case s.dirty <- struct{}{}:
	default:
	}
}

// Run starts the informers, waits for their caches, builds the first snapshot and then
// rebuilds after changes until ctx ends. It returns an error only if the caches never sync.
func (s *Source) Run(ctx context.Context) error {
	s.factory.Start(ctx.Done())
	defer s.factory.Shutdown()
	if !cache.WaitForCacheSync(ctx.Done(), s.services.HasSynced, s.slices.HasSynced, s.pods.HasSynced) {
		if ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("kubernetes source: the informers' caches did not sync")
	}
	s.opts.Logger.Info("kubernetes source synced", "services", len(s.services.GetStore().ListKeys()),
		"endpointslices", len(s.slices.GetStore().ListKeys()), "pods", len(s.pods.GetStore().ListKeys()))
	s.rebuild()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-s.dirty:
		}
		// Wait for a pause in the changes, but not forever.
		deadline := time.NewTimer(10 * s.opts.Debounce)
	quiet:
		for {
			t := time.NewTimer(s.opts.Debounce)
			select {
			case <-ctx.Done():
				t.Stop()
				deadline.Stop()
				return nil
			case <-s.dirty:
				t.Stop()
				continue
			case <-t.C:
				break quiet
			case <-deadline.C:
				t.Stop()
				break quiet
			}
		}
		deadline.Stop()
		s.rebuild()
	}
}

// rebuild makes a snapshot from the informers' caches and publishes it if it differs.
func (s *Source) rebuild() {
	var svcs []*corev1.Service
	for _, o := range s.services.GetStore().List() {
		svcs = append(svcs, o.(*corev1.Service))
	}
	in := Input{
		TrustDomain: s.opts.TrustDomain, ClusterDomain: s.opts.ClusterDomain, Services: svcs,
		SlicesOf: func(ns, name string) []*discoveryv1.EndpointSlice {
			objs, _ := s.slices.GetIndexer().ByIndex(byService, ns+"/"+name)
			out := make([]*discoveryv1.EndpointSlice, 0, len(objs))
			for _, o := range objs {
				out = append(out, o.(*discoveryv1.EndpointSlice))
			}
			return out
		},
		Pod: func(ns, name string) *corev1.Pod {
			o, ok, _ := s.pods.GetStore().GetByKey(ns + "/" + name)
			if !ok {
				return nil
			}
			return o.(*corev1.Pod)
		},
		PodByIP: func(ip string) *corev1.Pod {
			objs, _ := s.pods.GetIndexer().ByIndex(byIP, ip)
			for _, o := range objs {
				if p := o.(*corev1.Pod); p.Status.Phase != corev1.PodSucceeded && p.Status.Phase != corev1.PodFailed {
					return p
				}
			}
			return nil
		},
	}
	built, problems := Build(in)

	s.mu.Lock()
	defer s.mu.Unlock()
	seen := map[Problem]bool{}
	for _, p := range problems {
		seen[p] = true
		if !s.problems[p] {
			s.opts.Logger.Warn("service not fully in the mesh", "service", p.Service, "reason", p.Msg)
		}
	}
	s.problems = seen
	// Reuse the previous pointer of every service that did not change.
	same := s.current != nil && len(built) == len(s.prev)
	next := make(map[string]*discovery.Service, len(built))
	for i, svc := range built {
		if old, ok := s.prev[svc.Name]; ok && reflect.DeepEqual(old, svc) {
			built[i] = old
		} else {
			same = false
		}
		next[svc.Name] = built[i]
	}
	if same {
		return
	}
	s.prev = next
	s.revision++
	s.current = discovery.NewSnapshot(s.opts.TrustDomain, fmt.Sprintf("kubernetes-%d", s.revision), built)
	s.opts.Logger.Debug("discovery snapshot", "revision", s.current.Revision(), "services", len(built))
	close(s.changed)
	s.changed = make(chan struct{})
}

// Snapshot returns the snapshot in force, nil before the caches synced.
func (s *Source) Snapshot() *discovery.Snapshot {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.current
}

// Watch implements discovery.Source. The first snapshot arrives once the informers' caches have
// synced (Run must be running).
func (s *Source) Watch(ctx context.Context) <-chan *discovery.Snapshot {
	ch := make(chan *discovery.Snapshot, 1)
	go func() {
		defer close(ch)
		var sent *discovery.Snapshot
		for {
			s.mu.Lock()
			cur, changed := s.current, s.changed
			s.mu.Unlock()
			if cur != nil && cur != sent {
				// Latest wins: this goroutine is the only sender.
				select {
				case ch <- cur:
				default:
					select {
					case <-ch:
					default:
					}
					ch <- cur
				}
				sent = cur
			}
			select {
			case <-ctx.Done():
				return
			case <-changed:
			}
		}
	}()
	return ch
}

// trimPod keeps the fields Build and the indexers read.
func trimPod(o any) (any, error) {
	p, ok := o.(*corev1.Pod)
	if !ok {
		return o, nil // a DeletedFinalStateUnknown tombstone
	}
	t := &corev1.Pod{}
	t.Name, t.Namespace, t.UID, t.ResourceVersion = p.Name, p.Namespace, p.UID, p.ResourceVersion
	t.Spec.ServiceAccountName = p.Spec.ServiceAccountName
	for _, c := range p.Spec.InitContainers {
		t.Spec.InitContainers = append(t.Spec.InitContainers, corev1.Container{Name: c.Name})
	}
	for _, c := range p.Spec.Containers {
		t.Spec.Containers = append(t.Spec.Containers, corev1.Container{Name: c.Name})
	}
	t.Status.Phase, t.Status.PodIP, t.Status.PodIPs = p.Status.Phase, p.Status.PodIP, p.Status.PodIPs
	return t, nil
}

func podIPs(o any) ([]string, error) {
	p := o.(*corev1.Pod)
	var out []string
	for _, ip := range p.Status.PodIPs {
		out = append(out, ip.IP)
	}
	if len(out) == 0 && p.Status.PodIP != "" {
		out = append(out, p.Status.PodIP)
	}
	return out, nil
}

func sliceService(o any) ([]string, error) {
	sl := o.(*discoveryv1.EndpointSlice)
	name := sl.Labels[discoveryv1.LabelServiceName]
	if name == "" {
		return nil, nil
	}
	return []string{sl.Namespace + "/" + name}, nil
}
