// Package manifest is `detour inject` and `detour uninject`: it reads Kubernetes YAML as a user
// keeps it (several documents in a file, Lists) and writes it back with Detour added to, or
// taken out of, every pod template it finds. It works on YAML nodes, not on Kubernetes API types,
// so it is linked into the sidecar's binary without client-go, and so that what it does not
// change it does not touch: a document without a pod template to change is written back byte for
// byte, and a changed one keeps its comments and every field it had (yaml.v3 re-indents it with
// two spaces).
package manifest

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"

	"github.com/detourmesh/detour/inject"
)

// Mode is what Transform does to each pod template.
type Mode uint8

const (
	// Annotate sets detour.io/inject: enabled on the template; the webhook does the rest.
	Annotate Mode = iota
	// Manual adds Detour's containers and volumes themselves (inject.Patch, as the webhook
	// would), for a cluster without the webhook.
	Manual
	// Uninject takes out whatever Annotate or Manual added.
	Uninject
)

// Options configure Transform.
type Options struct {
	Mode Mode
	// Config is the installation Manual injects for (its TrustAnchorPEM is required then).
	Config inject.Config
}

// Change is what Transform did, or chose not to do, to one pod template.
type Change struct {
	Doc       int    // 1-based document number in the input
	Kind      string // of the object holding the template
	Name      string
	Namespace string
	Changed   bool
	What      string // e.g. "annotated detour.io/inject: enabled", "already injected"
}

// String is the line `detour inject` prints on stderr.
func (c Change) String() string {
	name := strings.ToLower(c.Kind) + "/" + c.Name
	if c.Namespace != "" {
		name = c.Namespace + "/" + name
	}
	return fmt.Sprintf("document %d, %s: %s", c.Doc, name, c.What)
}

// maxInput bounds one input: far above any manifest, far below what could hurt.
const maxInput = 64 << 20

// Transform applies o.Mode to every pod template in src, YAML or JSON with any number of
// documents, and returns the result and what it did. source names src in errors. Documents
// whose templates need no change, and documents of other kinds, come back byte for byte; so does
// all of src when nothing changes. A document that is not YAML is an error naming it.
func Transform(src []byte, source string, o Options) ([]byte, []Change, error) {
	if len(src) > maxInput {
		return nil, nil, fmt.Errorf("%s: more than %d MiB", source, maxInput>>20)
	}
	var out bytes.Buffer
	var changes []Change
	for i, d := range splitDocuments(src) {
		out.Write(d.sep)
		body, ch, err := transformDoc(d.body, len(d.sep) > 0, i+1, o)
		if err != nil {
			return nil, nil, fmt.Errorf("%s: document %d: %w", source, i+1, err)
		}
		out.Write(body)
		changes = append(changes, ch...)
	}
	return out.Bytes(), changes, nil
}

// document is one YAML document of the input: the marker "---" that opened it (empty for the
// first, unless the input starts with one) and its text, which begins with the rest of the
// marker's line.
type document struct{ sep, body []byte }

// splitDocuments cuts src at the lines that begin with the document marker "---" (YAML 1.2
// §9.1.3: a marker at the start of a line always ends the document before it, even inside what
// would otherwise be a block scalar, so this needs no parser).
func splitDocuments(src []byte) []document {
	var docs []document
	cur := document{}
	start := 0
	for off := 0; off < len(src); {
		end := bytes.IndexByte(src[off:], '\n')
		lineEnd := len(src)
		if end >= 0 {
			lineEnd = off + end + 1
		}
		line := src[off:lineEnd]
		if isMarker(line) {
			cur.body = src[start:off]
			docs = append(docs, cur)
			cur = document{sep: line[:3]}
			start = off + 3
		}
		off = lineEnd
	}
	cur.body = src[start:]
	docs = append(docs, cur)
	// A leading marker leaves an empty first document: fold it into the next.
	if len(docs) > 1 && len(docs[0].sep) == 0 && len(bytes.TrimSpace(docs[0].body)) == 0 {
		docs[1].sep = append(append([]byte{}, docs[0].body...), docs[1].sep...)
		docs = docs[1:]
	}
	return docs
}

func isMarker(line []byte) bool {
	if !bytes.HasPrefix(line, []byte("---")) {
		return false
	}
	rest := line[3:]
	return len(rest) == 0 || rest[0] == '\n' || rest[0] == '\r' || rest[0] == ' ' || rest[0] == '\t'
}

// transformDoc handles one document.
func transformDoc(body []byte, marker bool, n int, o Options) ([]byte, []Change, error) {
	var root yaml.Node
	if err := yaml.Unmarshal(body, &root); err != nil {
		return nil, nil, fmt.Errorf("not YAML: %w", err)
	}
	if root.Kind != yaml.DocumentNode || len(root.Content) == 0 || root.Content[0].Kind != yaml.MappingNode {
		return body, nil, nil // empty, a comment, or not an object: nothing to do
	}
	var changes []Change
	changed, err := walkObject(root.Content[0], n, o, &changes, 0)
	if err != nil {
		return nil, nil, err
	}
	if !changed {
		return body, changes, nil
	}
	var out bytes.Buffer
	switch {
	case !marker:
	case len(body) > 0 && body[0] != '\n' && body[0] != '\r':
		out.WriteByte(' ') // the document began on its marker's line: keep "--- " apart
	default:
		out.WriteByte('\n')
	}
	if t := bytes.TrimLeft(body, " \t\r\n"); len(t) > 0 && t[0] == '{' {
		// JSON in, JSON out (kubectl get -o json | detour inject -).
		if err := writeJSON(&out, root.Content[0], ""); err != nil {
			return nil, nil, fmt.Errorf("writing the document back: %w", err)
		}
		out.WriteByte('\n')
		return out.Bytes(), changes, nil
	}
	enc := yaml.NewEncoder(&out)
	enc.SetIndent(2)
	if err := enc.Encode(&root); err != nil {
		return nil, nil, fmt.Errorf("writing the document back: %w", err)
	}
	if err := enc.Close(); err != nil {
		return nil, nil, err
	}
	return out.Bytes(), changes, nil
}

// writeJSON writes n as indented JSON, keys in their order.
func writeJSON(w *bytes.Buffer, n *yaml.Node, indent string) error {
	switch n.Kind {
	case yaml.AliasNode:
		return writeJSON(w, n.Alias, indent)
	case yaml.MappingNode, yaml.SequenceNode:
		open, closing, step := byte('{'), byte('}'), 2
		if n.Kind == yaml.SequenceNode {
			open, closing, step = '[', ']', 1
		}
		if len(n.Content) == 0 {
			w.WriteByte(open)
			w.WriteByte(closing)
			return nil
		}
		w.WriteByte(open)
		inner := indent + "  "
		for i := 0; i < len(n.Content); i += step {
			if i > 0 {
				w.WriteByte(',')
			}
			w.WriteString("\n" + inner)
			if step == 2 {
				k, _ := json.Marshal(n.Content[i].Value)
				w.Write(k)
				w.WriteString(": ")
			}
			if err := writeJSON(w, n.Content[i+step-1], inner); err != nil {
				return err
			}
		}
		w.WriteString("\n" + indent)
		w.WriteByte(closing)
		return nil
	}
	var v any
	if err := n.Decode(&v); err != nil {
		return err
	}
	b, err := json.Marshal(jsonable(v))
	if err != nil {
		return err
	}
	w.Write(b)
	return nil
}

// maxDepth bounds List nesting.
const maxDepth = 8

// walkObject transforms the pod template of obj, or of every item of a List.
func walkObject(obj *yaml.Node, n int, o Options, changes *[]Change, depth int) (bool, error) {
	kind := scalar(get(obj, "kind"))
	if items := get(obj, "items"); items != nil && items.Kind == yaml.SequenceNode && strings.HasSuffix(kind, "List") {
		if depth >= maxDepth {
			return false, errors.New("lists nested too deep")
		}
		any := false
		for _, it := range items.Content {
			if it.Kind != yaml.MappingNode {
				continue
			}
			c, err := walkObject(it, n, o, changes, depth+1)
			if err != nil {
				return false, err
			}
			any = any || c
		}
		return any, nil
	}
	var path []string
	switch kind {
	case "Pod":
		path = nil
	case "Deployment", "ReplicaSet", "StatefulSet", "DaemonSet", "Job", "ReplicationController":
		path = []string{"spec", "template"}
	case "CronJob":
		path = []string{"spec", "jobTemplate", "spec", "template"}
	default:
		return false, nil
	}
	meta := get(obj, "metadata")
	ch := Change{Doc: n, Kind: kind, Name: scalar(get(meta, "name")), Namespace: scalar(get(meta, "namespace"))}
	if ch.Name == "" {
		ch.Name = scalar(get(meta, "generateName"))
	}
	tmpl := obj
	for _, k := range path {
		if tmpl = get(tmpl, k); tmpl == nil || tmpl.Kind != yaml.MappingNode {
			ch.What = "no pod template at ." + strings.Join(path, ".") + ", unchanged"
			*changes = append(*changes, ch)
			return false, nil
		}
	}
	var err error
	switch o.Mode {
	case Annotate:
		ch.Changed, ch.What, err = annotate(tmpl)
	case Manual:
		ch.Changed, ch.What, err = manual(tmpl, o.Config)
	case Uninject:
		ch.Changed, ch.What = uninject(tmpl)
	default:
		err = fmt.Errorf("unknown mode %d", o.Mode)
	}
	if err != nil {
		return false, fmt.Errorf("%s %s: %w", kind, ch.Name, err)
	}
	*changes = append(*changes, ch)
	return ch.Changed, nil
}

// optedOut is the reason a template annotated detour.io/inject: disabled stays out: the user
// said so in the manifest, and inject does not overrule a manifest.
func optedOut(tmpl *yaml.Node) string {
	if v := scalar(get(get(get(tmpl, "metadata"), "annotations"), inject.AnnotationInject)); v == inject.Disabled {
		return "annotated " + inject.AnnotationInject + ": " + v + ", unchanged (take the annotation out to mesh it)"
	}
	return ""
}

func annotate(tmpl *yaml.Node) (bool, string, error) {
	if why := optedOut(tmpl); why != "" {
		return false, why, nil
	}
	skip, err := skipOf(tmpl)
	if err != nil {
		return false, "", err
	}
	if skip != "" {
		return false, skip + ", unchanged", nil
	}
	ann := ensureMap(ensureMap(tmpl, "metadata"), "annotations")
	was := get(ann, inject.AnnotationInject)
	if scalar(was) == inject.Enabled {
		return false, "already annotated " + inject.AnnotationInject + ": " + inject.Enabled, nil
	}
	what := "annotated " + inject.AnnotationInject + ": " + inject.Enabled
	if was != nil {
		what += fmt.Sprintf(" (was %q)", scalar(was))
	}
	set(ann, inject.AnnotationInject, strNode(inject.Enabled))
	return true, what, nil
}

func manual(tmpl *yaml.Node, cfg inject.Config) (bool, string, error) {
	if why := optedOut(tmpl); why != "" {
		return false, why, nil
	}
	obj, err := toJSON(tmpl)
	if err != nil {
		return false, "", err
	}
	ops, skip, err := inject.Patch(obj, cfg)
	if err != nil {
		return false, "", err
	}
	if skip != "" {
		return false, skip + ", unchanged", nil
	}
	for _, op := range ops {
		if err := addAt(tmpl, op.Path, op.Value); err != nil {
			return false, "", fmt.Errorf("applying %s %s: %w", op.Op, op.Path, err)
		}
	}
	return true, "added " + inject.InitContainer + " and " + inject.ProxyContainer, nil
}

// uninject takes out the annotation and everything inject.Patch adds, by name, and removes the
// lists and maps that end up empty (inject made them).
func uninject(tmpl *yaml.Node) (bool, string) {
	var did []string
	meta := get(tmpl, "metadata")
	if ann := get(meta, "annotations"); ann != nil && scalar(get(ann, inject.AnnotationInject)) == inject.Enabled {
		del(ann, inject.AnnotationInject)
		did = append(did, "the annotation")
		if len(ann.Content) == 0 {
			del(meta, "annotations")
		}
		if len(meta.Content) == 0 {
			del(tmpl, "metadata")
		}
	}
	spec := get(tmpl, "spec")
	removed := 0
	for _, k := range []string{"initContainers", "containers", "volumes"} {
		seq := get(spec, k)
		if seq == nil || seq.Kind != yaml.SequenceNode {
			continue
		}
		kept := seq.Content[:0:0]
		for _, it := range seq.Content {
			switch scalar(get(it, "name")) {
			case inject.InitContainer, inject.ProxyContainer, inject.TokenVolume, inject.InitRunVolume:
				removed++
				continue
			}
			kept = append(kept, it)
		}
		seq.Content = kept
		if len(kept) == 0 && k != "containers" {
			del(spec, k)
		}
	}
	if removed > 0 {
		did = append(did, "Detour's containers and volumes")
	}
	if len(did) == 0 {
		return false, "no Detour in it, unchanged"
	}
	return true, "removed " + strings.Join(did, " and ")
}

func skipOf(tmpl *yaml.Node) (string, error) {
	obj, err := toJSON(tmpl)
	if err != nil {
		return "", err
	}
	return inject.Skip(obj)
}

// toJSON is the template as JSON, for the inject package, which reads JSON.
func toJSON(n *yaml.Node) ([]byte, error) {
	var v any
	if err := n.Decode(&v); err != nil {
		return nil, fmt.Errorf("reading the pod template: %w", err)
	}
	b, err := json.Marshal(jsonable(v))
	if err != nil {
		return nil, fmt.Errorf("reading the pod template: %w", err)
	}
	return b, nil
}

// jsonable turns the map[any]any... a YAML decode may produce for non-string keys into maps
// JSON can encode.
func jsonable(v any) any {
	switch x := v.(type) {
	case map[string]any:
		for k, e := range x {
			x[k] = jsonable(e)
		}
		return x
	case map[any]any:
		m := make(map[string]any, len(x))
		for k, e := range x {
			m[fmt.Sprint(k)] = jsonable(e)
		}
		return m
	case []any:
		for i, e := range x {
			x[i] = jsonable(e)
		}
		return x
	}
	return v
}

// addAt applies an RFC 6902 "add" of value at pointer (RFC 6901) below root.
func addAt(root *yaml.Node, pointer string, value any) error {
	if !strings.HasPrefix(pointer, "/") {
		return fmt.Errorf("pointer %q does not start with /", pointer)
	}
	parts := strings.Split(pointer[1:], "/")
	for i, p := range parts {
		parts[i] = strings.NewReplacer("~1", "/", "~0", "~").Replace(p)
	}
	val, err := valueNode(value)
	if err != nil {
		return err
	}
	n := root
	for _, p := range parts[:len(parts)-1] {
		switch n.Kind {
		case yaml.MappingNode:
			if n = get(n, p); n == nil {
				return fmt.Errorf("no %q", p)
			}
		case yaml.SequenceNode:
			i, err := strconv.Atoi(p)
			if err != nil || i < 0 || i >= len(n.Content) {
				return fmt.Errorf("no index %q", p)
			}
			n = n.Content[i]
		default:
			return fmt.Errorf("%q is inside a scalar", p)
		}
	}
	last := parts[len(parts)-1]
	switch n.Kind {
	case yaml.MappingNode:
		set(n, last, val)
	case yaml.SequenceNode:
		i := len(n.Content)
		if last != "-" {
			if i, err = strconv.Atoi(last); err != nil || i < 0 || i > len(n.Content) {
				return fmt.Errorf("no index %q", last)
			}
		}
		n.Content = append(n.Content[:i], append([]*yaml.Node{val}, n.Content[i:]...)...)
	default:
		return fmt.Errorf("cannot add into a scalar at %q", last)
	}
	return nil
}

// valueNode turns a JSON-marshalable value into YAML nodes in block style.
func valueNode(v any) (*yaml.Node, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	var doc yaml.Node
	if err := yaml.Unmarshal(b, &doc); err != nil {
		return nil, err
	}
	n := doc.Content[0]
	blockStyle(n)
	return n, nil
}

// blockStyle clears the flow and quoting styles JSON gave the nodes, so they print as a person
// writes YAML; the encoder quotes what needs quoting by its tag.
func blockStyle(n *yaml.Node) {
	n.Style = 0
	if n.Kind == yaml.ScalarNode && n.Tag == "!!str" && strings.Contains(n.Value, "\n") {
		n.Style = yaml.LiteralStyle
	}
	for _, c := range n.Content {
		blockStyle(c)
	}
}

// get returns the value of key in mapping n, nil if n is not a mapping or lacks it.
func get(n *yaml.Node, key string) *yaml.Node {
	if n == nil || n.Kind != yaml.MappingNode {
		return nil
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		if n.Content[i].Value == key {
			return n.Content[i+1]
		}
	}
	return nil
}

func set(n *yaml.Node, key string, val *yaml.Node) {
	for i := 0; i+1 < len(n.Content); i += 2 {
		if n.Content[i].Value == key {
			n.Content[i+1] = val
			return
		}
	}
	n.Content = append(n.Content, strNode(key), val)
}

func del(n *yaml.Node, key string) {
	if n == nil {
		return
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		if n.Content[i].Value == key {
			n.Content = append(n.Content[:i], n.Content[i+2:]...)
			return
		}
	}
}

// ensureMap returns the mapping at key in n, making it (or replacing a null) if needed.
func ensureMap(n *yaml.Node, key string) *yaml.Node {
	if m := get(n, key); m != nil && m.Kind == yaml.MappingNode {
		if m.Style&yaml.FlowStyle != 0 && len(m.Content) == 0 {
			m.Style = 0 // "annotations: {}" grows into a block
		}
		return m
	}
	m := &yaml.Node{Kind: yaml.MappingNode, Tag: "!!map"}
	set(n, key, m)
	return m
}

func scalar(n *yaml.Node) string {
	if n == nil || n.Kind != yaml.ScalarNode {
		return ""
	}
	return n.Value
}

func strNode(s string) *yaml.Node {
	return &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: s}
}
