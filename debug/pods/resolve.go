package pods

import (
	"fmt"
	"slices"
	"strings"
)

// Usage says what a POD argument may be.
const Usage = "a pod name, namespace/name, a PID, or a network namespace (a path such as /run/netns/NAME or /proc/PID/ns/net, or an `ip netns` name)"

// argKind is what a POD argument looks like.
type argKind int

const (
	argName      argKind = iota // a pod name, or an `ip netns` name
	argNamespace                // namespace/name
	argPID
	argPath
)

func kindOf(arg string) argKind {
	switch {
	case arg != "" && strings.Trim(arg, "0123456789") == "":
		return argPID
	case strings.HasPrefix(arg, "/") || strings.HasPrefix(arg, "./") || strings.HasPrefix(arg, "../"):
		return argPath
	case strings.Contains(arg, "/"):
		return argNamespace
	}
	return argName
}

// matchName finds the namespace a pod name or namespace/name argument means: among the
// proxies found first, then (a plain name only) among the `ip netns` names.
func matchName(arg string, found []Pod, names map[nsKey][]string) (nsKey, error) {
	var hits []Pod
	if kindOf(arg) == argNamespace {
		ns, name, _ := strings.Cut(arg, "/")
		for _, p := range found {
			if p.Namespace == ns && p.Name == name {
				hits = append(hits, p)
			}
		}
	} else {
		for _, p := range found {
			if p.Name == arg {
				hits = append(hits, p)
			}
		}
	}
	keys := map[nsKey]bool{}
	for _, p := range hits {
		keys[nsKey{p.NetNS.dev, p.NetNS.Inode}] = true
	}
	switch {
	case len(keys) == 1:
		return nsKey{hits[0].NetNS.dev, hits[0].NetNS.Inode}, nil
	case len(keys) > 1:
		refs := make([]string, len(hits))
		for i, p := range hits {
			refs[i] = p.Label()
		}
		return nsKey{}, fmt.Errorf("%q names %d pods: %s; say which with namespace/name or a PID", arg, len(keys), strings.Join(refs, "; "))
	}
	if kindOf(arg) == argName {
		for k, ns := range names {
			if slices.Contains(ns, arg) {
				return k, nil
			}
		}
	}
	return nsKey{}, fmt.Errorf("no meshed pod %q on this node (%s); a POD is %s", arg, Summary(found), Usage)
}

// proxiesIn returns the proxies found in the namespace k.
func proxiesIn(k nsKey, found []Pod) []Pod {
	var out []Pod
	for _, p := range found {
		if p.NetNS.dev == k.dev && p.NetNS.Inode == k.ino {
			out = append(out, p)
		}
	}
	return out
}
