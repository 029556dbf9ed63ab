package discovery

import (
	"bytes"
	"errors"
	"fmt"
	"strconv"

	"gopkg.in/yaml.v3"

	"github.com/detourmesh/detour/api/discoverypb"
)

// ToProto converts a snapshot to its wire form, the message the controller's Watch streams. It
// is the inverse of FromProto: FromProto(ToProto(s)) equals s.
func ToProto(s *Snapshot) *discoverypb.Snapshot {
	pb := &discoverypb.Snapshot{
		Revision:    s.revision,
		TrustDomain: string(s.trustDomain),
		Services:    make([]*discoverypb.Service, 0, len(s.services)),
	}
	for _, svc := range s.services {
		ps := &discoverypb.Service{
			Name:        svc.Name,
			Addresses:   make([]string, 0, len(svc.Addresses)),
			Authorities: svc.Authorities,
			Protocol:    svc.Protocol.String(),
			Balancer:    svc.Balancer.String(),
			Endpoints:   make([]*discoverypb.Endpoint, 0, len(svc.Endpoints)),
		}
		for _, a := range svc.Addresses {
			ps.Addresses = append(ps.Addresses, a.String())
		}
		for _, ep := range svc.Endpoints {
			ps.Endpoints = append(ps.Endpoints, &discoverypb.Endpoint{
				Address:  ep.Addr.String(),
				Identity: ep.Identity,
				Weight:   ep.Weight,
				Zone:     ep.Zone,
			})
		}
		pb.Services = append(pb.Services, ps)
	}
	return pb
}

// ProtoSource names snapshots that came from the controller in FromProto's errors, where the
// discovery file's errors name the file.
const ProtoSource = "controller snapshot"

// FromProto converts a snapshot received from the controller and validates it exactly as Parse
// validates a discovery file, because it is checked by Parse itself: the message is written out
// in the file format and parsed. A proxy therefore accepts from the controller precisely what it
// would accept from a file, and a future rule added to Parse applies to both. The cost, a YAML
// round trip per snapshot, is paid once per change, not per connection.
//
// proto3 cannot tell an absent field from its zero value, so the zero values mean what an
// absent field means in the file: trust_domain "" is cluster.local, protocol "" is auto,
// balancer "" is p2c-ewma, weight 0 is 1, identity "" is not meshed. addresses must hold IP:port
// VIPs and authorities host:port names. Errors are an ErrorList naming the field
// ("services[0].endpoints[1].address") with no line numbers; an empty revision is replaced by a
// hash of the content.
func FromProto(pb *discoverypb.Snapshot) (*Snapshot, error) {
	if pb == nil {
		return nil, ErrorList{{File: ProtoSource, Msg: "no snapshot"}}
	}
	doc := fileDoc{TrustDomain: pb.GetTrustDomain(), Services: make([]fileService, 0, len(pb.GetServices()))}
	for _, ps := range pb.GetServices() {
		s := fileService{
			Name:      ps.GetName(),
			Addresses: append(append(make([]string, 0, len(ps.GetAddresses())+len(ps.GetAuthorities())), ps.GetAddresses()...), ps.GetAuthorities()...),
			Protocol:  ps.GetProtocol(),
			Balancer:  ps.GetBalancer(),
			Endpoints: make([]fileEndpoint, 0, len(ps.GetEndpoints())),
		}
		for _, ep := range ps.GetEndpoints() {
			s.Endpoints = append(s.Endpoints, fileEndpoint{
				Address:  ep.GetAddress(),
				Identity: ep.GetIdentity(),
				Weight:   ep.GetWeight(),
				Zone:     ep.GetZone(),
			})
		}
		doc.Services = append(doc.Services, s)
	}
	var b bytes.Buffer
	enc := yaml.NewEncoder(&b)
	if err := enc.Encode(doc); err != nil {
		return nil, ErrorList{{File: ProtoSource, Msg: fmt.Sprintf("cannot encode: %v", err)}}
	}
	if err := enc.Close(); err != nil {
		return nil, ErrorList{{File: ProtoSource, Msg: fmt.Sprintf("cannot encode: %v", err)}}
	}
	snap, err := Parse(ProtoSource, b.Bytes())
	if err != nil {
		// Lines of a document the sender never saw would only mislead; the field path stays.
		var list ErrorList
		if errors.As(err, &list) {
			for _, e := range list {
				e.Line = 0
			}
		}
		return nil, err
	}
	// The file format has one address list; the message keeps VIPs and authorities apart, and
	// each must be what its list says.
	var list ErrorList
	for i, ps := range pb.GetServices() {
		svc := snap.services[i]
		if len(svc.Addresses) != len(ps.GetAddresses()) || len(svc.Authorities) != len(ps.GetAuthorities()) {
			list = append(list, &Error{File: ProtoSource, Field: "services[" + strconv.Itoa(i) + "]",
				Msg: "addresses must be IP:port VIPs and authorities host:port names; an entry is in the wrong list"})
		}
	}
	if len(list) > 0 {
		return nil, list
	}
	rev := pb.GetRevision()
	if rev == "" {
		rev = snap.revision
	}
	return NewSnapshot(snap.trustDomain, rev, snap.services), nil
}
