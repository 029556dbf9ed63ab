package discovery

import (
	"bytes"

	"gopkg.in/yaml.v3"
)

// The file format, as Format writes it. Parse does not decode into these types (it
// walks the YAML node tree to report lines and strict errors), but the field names are the same
// contract. Zero values are left out, so they mean what an absent field means.
type (
	fileDoc struct {
		TrustDomain string        `yaml:"trustDomain,omitempty"`
		Services    []fileService `yaml:"services"`
	}
	fileService struct {
		Name      string         `yaml:"name"`
		Addresses []string       `yaml:"addresses,flow"`
		Protocol  string         `yaml:"protocol,omitempty"`
		Balancer  string         `yaml:"balancer,omitempty"`
		Timeout   string         `yaml:"timeout,omitempty"`
		Retry     *fileRetry     `yaml:"retry,omitempty"`
		Budget    *fileBudget    `yaml:"budget,omitempty"`
		Accrual   *fileAccrual   `yaml:"accrual,omitempty"`
		Routes    []fileRoute    `yaml:"routes,omitempty"`
		Endpoints []fileEndpoint `yaml:"endpoints"`
	}
	fileRetry struct {
		On         []string `yaml:"on,flow"`
		Attempts   int      `yaml:"attempts"`
		Backoff    string   `yaml:"backoff"`
		MaxBackoff string   `yaml:"maxBackoff"`
	}
	fileBudget struct {
		Ratio        float64 `yaml:"ratio"`
		MinPerSecond float64 `yaml:"minPerSecond"`
		Window       string  `yaml:"window"`
	}
	fileAccrual struct {
		ConsecutiveFailures int     `yaml:"consecutiveFailures"`
		FailureRate         float64 `yaml:"failureRate"`
		Window              string  `yaml:"window"`
		MinRequests         int     `yaml:"minRequests"`
		BaseEjection        string  `yaml:"baseEjection"`
		MaxEjection         string  `yaml:"maxEjection"`
	}
	fileRoute struct {
		Path       string     `yaml:"path"`
		Method     string     `yaml:"method,omitempty"`
		Timeout    string     `yaml:"timeout,omitempty"`
		Retry      *fileRetry `yaml:"retry,omitempty"`
		Idempotent bool       `yaml:"idempotent,omitempty"`
	}
	fileEndpoint struct {
		Address  string   `yaml:"address"`
		Identity string   `yaml:"identity,omitempty"`
		Weight   uint32   `yaml:"weight,omitempty"`
		Zone     string   `yaml:"zone,omitempty"`
		ForZones []string `yaml:"forZones,flow,omitempty"`
	}
)

// Format writes s as a discovery file that Parse reads back to an equal snapshot: every field
// explicit, addresses before authorities. The controller's file source and `detour` debugging
// commands use it to show the table in force.
func Format(s *Snapshot) []byte {
	doc := fileDoc{TrustDomain: string(s.trustDomain), Services: make([]fileService, 0, len(s.services))}
	for _, svc := range s.services {
		fs := fileService{
			Name:      svc.Name,
			Addresses: make([]string, 0, len(svc.Addresses)+len(svc.Authorities)),
			Protocol:  svc.Protocol.String(),
			Balancer:  svc.Balancer.String(),
			Endpoints: make([]fileEndpoint, 0, len(svc.Endpoints)),
		}
		if p := svc.Policy; p != nil {
			fs.Timeout = p.Timeout.String()
			fs.Retry = formatRetry(p.Retry)
			fs.Budget = &fileBudget{Ratio: p.Budget.Ratio, MinPerSecond: p.Budget.MinPerSecond, Window: p.Budget.Window.String()}
			a := p.Accrual
			fs.Accrual = &fileAccrual{ConsecutiveFailures: a.ConsecutiveFailures, FailureRate: a.FailureRate, Window: a.Window.String(),
				MinRequests: a.MinRequests, BaseEjection: a.BaseEjection.String(), MaxEjection: a.MaxEjection.String()}
			for _, r := range p.Routes {
				fr := fileRoute{Path: r.PathPrefix, Method: r.Method, Retry: formatRetry(r.Retry), Idempotent: r.Idempotent}
				if r.Timeout != 0 {
					fr.Timeout = r.Timeout.String()
				}
				fs.Routes = append(fs.Routes, fr)
			}
		}
		for _, a := range svc.Addresses {
			fs.Addresses = append(fs.Addresses, a.String())
		}
		fs.Addresses = append(fs.Addresses, svc.Authorities...)
		for _, ep := range svc.Endpoints {
			fs.Endpoints = append(fs.Endpoints, fileEndpoint{
				Address:  ep.Addr.String(),
				Identity: ep.Identity,
				Weight:   ep.Weight,
				Zone:     ep.Zone,
				ForZones: ep.ForZones,
			})
		}
		doc.Services = append(doc.Services, fs)
	}
	var b bytes.Buffer
	enc := yaml.NewEncoder(&b)
	enc.SetIndent(2)
	// Encoding plain structs of strings and integers cannot fail.
	_ = enc.Encode(doc)
	_ = enc.Close()
	return b.Bytes()
}

func formatRetry(r *RetryPolicy) *fileRetry {
	if r == nil {
		return nil
	}
	return &fileRetry{On: r.On.Names(), Attempts: r.Attempts, Backoff: r.Backoff.String(), MaxBackoff: r.MaxBackoff.String()}
}
