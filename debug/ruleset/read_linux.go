package ruleset

import (
	"fmt"

	"github.com/detourmesh/detour/init/apply"
	"github.com/detourmesh/detour/init/plan"
	"github.com/detourmesh/detour/netns"
)

// Read saves every backend's rules of both families inside ns, with iptables-save, changing
// nothing. A backend that holds no table there reads as nil.
func Read(ns *netns.NS) (Snapshot, error) {
	snap := Snapshot{Saves: map[string]map[plan.Family]*Save{}}
	err := ns.Do(func() error {
		fams, err := apply.Families("auto")
		if err != nil {
			return err
		}
		snap.IPv6 = len(fams) == 2
		for _, b := range apply.Backends {
			snap.Saves[string(b)] = map[plan.Family]*Save{}
			for _, f := range []plan.Family{plan.IPv4, plan.IPv6} {
				t, err := apply.OpenExec(b, f)
				if err != nil {
					return err
				}
				out, err := t.Save()
				if err != nil {
					return fmt.Errorf("reading the %s rules of iptables-%s: %w", f, b, err)
				}
				if out == "" {
					continue
				}
				s, err := Parse(out)
				if err != nil {
					return fmt.Errorf("parsing the %s rules of iptables-%s: %w", f, b, err)
				}
				snap.Saves[string(b)][f] = s
			}
		}
		return nil
	})
	return snap, err
}

// RecordedPod reads the pod that the record of ns's Detour rules names (init's --pod-name and
// --pod-namespace); ok is false when there are no rules, no record, or it names no pod.
func RecordedPod(ns *netns.NS) (namespace, name string, ok bool) {
	snap, err := Read(ns)
	if err != nil {
		return "", "", false
	}
	for _, b := range Backends {
		for _, s := range snap.Saves[b] {
			if s == nil || !hasDetour(s) {
				continue
			}
			if rec, err := plan.ReadRecord(comments(s)); err == nil && rec.Config.PodName != "" {
				return rec.Config.PodNamespace, rec.Config.PodName, true
			}
		}
	}
	return "", "", false
}
