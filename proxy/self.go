package proxy

import (
	"os"
	"runtime/debug"
	"time"
)

// proxyDoc is /debug/proxy: the proxy's account of itself, what `detour debug` needs to find a
// pod and to tell a proxy that is up from one that is serving.
type proxyDoc struct {
	PID       int           `json:"pid"`
	Pod       string        `json:"pod,omitempty"`
	Namespace string        `json:"namespace,omitempty"`
	Version   string        `json:"version"`
	Started   time.Time     `json:"started"`
	Ready     bool          `json:"ready"`
	NotReady  string        `json:"not_ready_reason,omitempty"`
	Ports     portsDoc      `json:"ports"`
	Listeners []listenerDoc `json:"listeners"`
	Discovery discoveryDoc  `json:"discovery"`
}

type portsDoc struct {
	Outbound uint16 `json:"outbound"`
	Inbound  uint16 `json:"inbound"`
	Admin    uint16 `json:"admin"`
}

type listenerDoc struct {
	Role    string `json:"role"` // outbound, inbound or admin
	Address string `json:"address"`
}

// discoveryDoc says what the proxy routes by and whether its source is still with it.
type discoveryDoc struct {
	Source   string     `json:"source"` // e.g. controller:198.18.0.1:7086; "none"
	Revision string     `json:"revision,omitempty"`
	Services int        `json:"services"`          // in the table
	Resolved int        `json:"resolved"`          // of them, those whose endpoints the proxy follows
	Updated  *time.Time `json:"updated,omitempty"` // when the snapshot in force was installed
	// Connected is set for a source that streams (the controller): whether the stream is up.
	// While it is down the proxy routes by the last snapshot it got.
	Connected *bool  `json:"connected,omitempty"`
	Error     string `json:"error,omitempty"` // why the stream is down
}

func (p *Proxy) proxyDoc() proxyDoc {
	d := proxyDoc{
		PID: os.Getpid(), Pod: p.cfg.Pod.Name, Namespace: p.cfg.Pod.Namespace, Version: version(),
		Started: p.started.UTC(), Listeners: p.listeners,
		Ports: portsDoc{Outbound: p.cfg.OutboundPort, Inbound: p.cfg.InboundPort, Admin: p.cfg.AdminPort},
	}
	if err := p.readiness(); err != nil {
		d.NotReady = err.Error()
	} else {
		d.Ready = true
	}
	d.Discovery.Source = p.cfg.DiscoveryName
	if p.cfg.Discovery == nil {
		d.Discovery.Source = "none"
	}
	if t := p.routes.current.Load(); t != nil && t.snap != nil {
		d.Discovery.Revision = t.snap.Revision()
		d.Discovery.Services = len(t.snap.Services())
		for _, svc := range t.snap.Services() {
			if !svc.Unresolved {
				d.Discovery.Resolved++
			}
		}
	}
	if u := p.updated.Load(); u != nil {
		t := u.UTC()
		d.Discovery.Updated = &t
	}
	if s, ok := p.cfg.Discovery.(interface{ Err() error }); ok {
		err := s.Err()
		up := err == nil
		d.Discovery.Connected = &up
		if err != nil {
			d.Discovery.Error = err.Error()
		}
	}
	return d
}

// version is the module version the binary was built from, with its VCS revision if known.
func version() string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "unknown"
	}
	v := bi.Main.Version
	for _, s := range bi.Settings {
		if s.Key == "vcs.revision" && len(s.Value) >= 12 {
			v += " " + s.Value[:12]
		}
	}
	return v
}
