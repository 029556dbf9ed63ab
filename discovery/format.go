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
		Endpoints []fileEndpoint `yaml:"endpoints"`
	}
	fileEndpoint struct {
		Address  string `yaml:"address"`
		Identity string `yaml:"identity,omitempty"`
		Weight   uint32 `yaml:"weight,omitempty"`
		Zone     string `yaml:"zone,omitempty"`
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
