package kubecluster

import (
	"context"
	"fmt"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
)

// The cluster DNS: CoreDNS (built by scripts/k8s-build.sh, imaged by make image) serving
// cluster.local from the API, at a fixed ClusterIP the kubelet gives every pod as its
// nameserver. It answers nothing outside the cluster: nothing leaves the node.
const (
	DNSServiceIP = "198.19.0.10"
	// DNSImage is the CoreDNS image a node cluster with Options.DNS needs among its
	// Options.Images (bin/images/coredns.tar).
	DNSImage = "detour.local/coredns:v1.15.0"
)

const corefile = `.:53 {
    errors
    health :8080
    ready :8181
    kubernetes cluster.local in-addr.arpa ip6.arpa {
        pods insecure
    }
    cache 5
}
`

// deployDNS creates CoreDNS in kube-system: its ServiceAccount and the read access its
// kubernetes plugin needs, the Corefile, a Deployment of one, and the kube-dns Service.
func deployDNS(ctx context.Context, cs kubernetes.Interface) error {
	const ns, name = "kube-system", "coredns"
	labels := map[string]string{"k8s-app": "kube-dns"}
	create := func(what string, err error) error {
		if err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("creating the cluster DNS's %s: %w", what, err)
		}
		return nil
	}
	if err := create("ServiceAccount", func() error {
		_, err := cs.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
		return err
	}()); err != nil {
		return err
	}
	if err := create("ClusterRole", func() error {
		_, err := cs.RbacV1().ClusterRoles().Create(ctx, &rbacv1.ClusterRole{
			ObjectMeta: metav1.ObjectMeta{Name: "system:coredns"},
			Rules: []rbacv1.PolicyRule{
				{APIGroups: []string{""}, Resources: []string{"services", "pods", "namespaces"}, Verbs: []string{"list", "watch"}},
				{APIGroups: []string{"discovery.k8s.io"}, Resources: []string{"endpointslices"}, Verbs: []string{"list", "watch"}},
			},
		}, metav1.CreateOptions{})
		return err
	}()); err != nil {
		return err
	}
	if err := create("ClusterRoleBinding", func() error {
		_, err := cs.RbacV1().ClusterRoleBindings().Create(ctx, &rbacv1.ClusterRoleBinding{
			ObjectMeta: metav1.ObjectMeta{Name: "system:coredns"},
			RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: "system:coredns"},
			Subjects:   []rbacv1.Subject{{Kind: "ServiceAccount", Name: name, Namespace: ns}},
		}, metav1.CreateOptions{})
		return err
	}()); err != nil {
		return err
	}
	if err := create("ConfigMap", func() error {
		_, err := cs.CoreV1().ConfigMaps(ns).Create(ctx, &corev1.ConfigMap{
			ObjectMeta: metav1.ObjectMeta{Name: name},
			Data:       map[string]string{"Corefile": corefile},
		}, metav1.CreateOptions{})
		return err
	}()); err != nil {
		return err
	}
	one := int32(1)
	no := false
	if err := create("Deployment", func() error {
		_, err := cs.AppsV1().Deployments(ns).Create(ctx, &appsv1.Deployment{
			ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels},
			Spec: appsv1.DeploymentSpec{
				Replicas: &one,
				Selector: &metav1.LabelSelector{MatchLabels: labels},
				Template: corev1.PodTemplateSpec{
					ObjectMeta: metav1.ObjectMeta{Labels: labels},
					Spec: corev1.PodSpec{
						ServiceAccountName: name,
						DNSPolicy:          corev1.DNSDefault,
						PriorityClassName:  "system-cluster-critical",
						Containers: []corev1.Container{{
							Name: name, Image: DNSImage, Args: []string{"-conf", "/etc/coredns/Corefile"},
							Ports: []corev1.ContainerPort{
								{Name: "dns", ContainerPort: 53, Protocol: corev1.ProtocolUDP},
								{Name: "dns-tcp", ContainerPort: 53, Protocol: corev1.ProtocolTCP},
							},
							ReadinessProbe: &corev1.Probe{
								ProbeHandler:  corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/ready", Port: intstr.FromInt32(8181)}},
								PeriodSeconds: 1,
							},
							VolumeMounts: []corev1.VolumeMount{{Name: "config", MountPath: "/etc/coredns", ReadOnly: true}},
							SecurityContext: &corev1.SecurityContext{
								AllowPrivilegeEscalation: &no,
								ReadOnlyRootFilesystem:   func() *bool { b := true; return &b }(),
								Capabilities:             &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}, Add: []corev1.Capability{"NET_BIND_SERVICE"}},
							},
						}},
						Volumes: []corev1.Volume{{Name: "config", VolumeSource: corev1.VolumeSource{
							ConfigMap: &corev1.ConfigMapVolumeSource{LocalObjectReference: corev1.LocalObjectReference{Name: name}},
						}}},
					},
				},
			},
		}, metav1.CreateOptions{})
		return err
	}()); err != nil {
		return err
	}
	return create("Service", func() error {
		_, err := cs.CoreV1().Services(ns).Create(ctx, &corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Name: "kube-dns", Labels: labels},
			Spec: corev1.ServiceSpec{
				Selector:  labels,
				ClusterIP: DNSServiceIP,
				Ports: []corev1.ServicePort{
					{Name: "dns", Port: 53, Protocol: corev1.ProtocolUDP, TargetPort: intstr.FromInt32(53)},
					{Name: "dns-tcp", Port: 53, Protocol: corev1.ProtocolTCP, TargetPort: intstr.FromInt32(53)},
				},
			},
		}, metav1.CreateOptions{})
		return err
	}())
}

// waitDNSReady waits until the CoreDNS pod is Ready (its kubernetes plugin has synced).
func (c *Cluster) waitDNSReady(ctx context.Context, cs kubernetes.Interface) error {
	var last string
	err := c.poll(ctx, nil, func() bool {
		d, err := cs.AppsV1().Deployments("kube-system").Get(ctx, "coredns", metav1.GetOptions{})
		if err != nil {
			last = err.Error()
			return false
		}
		last = fmt.Sprintf("%d of 1 ready", d.Status.ReadyReplicas)
		return d.Status.ReadyReplicas == 1
	})
	if err != nil {
		return fmt.Errorf("waiting for the cluster DNS (CoreDNS; last: %s): %w", last, err)
	}
	return nil
}
