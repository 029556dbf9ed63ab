package discovery

import (
	"fmt"
	"net/netip"
	"slices"
	"strconv"

	"github.com/detourmesh/detour/api/discoverypb"
)

// The controller's Discovery service sends the model in pieces (api/discoverypb): table entries
// (a Service without its endpoints) and endpoints, each converted here. What comes from the
// controller is checked by the same functions, with the same rules, as what Parse reads from a
// discovery file (a test holds the two to agreement), so a proxy accepts from the controller
// precisely what it would accept from a file. Rules that span several pieces (a destination
// selects one service, an endpoint address is listed once per service) are the receiver's to
// check on the whole it builds: Table and EndpointSet do.

// ProtoSource names what came from the controller in errors, where the discovery file's errors
// name the file.
const ProtoSource = "controller"

// EntryToProto converts a service's table entry (everything but its endpoints) to its wire form.
func EntryToProto(s *Service) *discoverypb.Service {
	pb := &discoverypb.Service{
		Name:        s.Name,
		Addresses:   make([]string, 0, len(s.Addresses)),
		Authorities: s.Authorities,
		Protocol:    s.Protocol.String(),
		Balancer:    s.Balancer.String(),
		Policy:      PolicyToProto(s.Policy),
	}
	for _, a := range s.Addresses {
		pb.Addresses = append(pb.Addresses, a.String())
	}
	return pb
}

// EndpointToProto converts an endpoint to its wire form.
func EndpointToProto(e *Endpoint) *discoverypb.Endpoint {
	return &discoverypb.Endpoint{Address: e.Addr.String(), Identity: e.Identity, Weight: e.Weight, Zone: e.Zone, ForZones: e.ForZones}
}

// EntryFromProto validates a table entry from the controller and returns it as a Service with
// no endpoints and Unresolved set. field names the entry in errors ("table.services[3]").
//
// proto3 cannot tell an absent field from its zero value, so the zero values mean what an
// absent field means in the file: protocol "" is auto, balancer "" is p2c-ewma. addresses must
// hold IP:port VIPs and authorities host:port names, at least one in all.
func EntryFromProto(pb *discoverypb.Service, field string) (*Service, error) {
	if pb == nil {
		return nil, protoError(field, "no service")
	}
	if err := checkServiceName(pb.GetName()); err != nil {
		return nil, protoError(join(field, "name"), err.Error())
	}
	svc := &Service{Name: pb.GetName(), Unresolved: true,
		Addresses: make([]netip.AddrPort, 0, len(pb.GetAddresses()))}
	if n := len(pb.GetAuthorities()); n > 0 {
		svc.Authorities = make([]string, 0, n)
	}
	if len(pb.GetAddresses())+len(pb.GetAuthorities()) == 0 {
		return nil, protoError(join(field, "addresses"), "a service needs at least one address (a VIP like \"198.19.0.10:80\" or an authority like \"stockdata.stocks:80\")")
	}
	// A service has a handful of destinations: a scan for duplicates costs less than a map,
	// and a table of thousands of services is checked without thousands of maps.
	for i, s := range pb.GetAddresses() {
		f := field + ".addresses[" + strconv.Itoa(i) + "]"
		ap, authority, err := parseDestination(s)
		switch {
		case err != nil:
			return nil, protoError(f, err.Error())
		case authority != "":
			return nil, protoError(f, fmt.Sprintf("%q is an authority: it belongs in authorities", s))
		case slices.Contains(svc.Addresses, ap):
			return nil, protoError(f, ap.String()+" is listed twice")
		}
		svc.Addresses = append(svc.Addresses, ap)
	}
	for i, s := range pb.GetAuthorities() {
		f := field + ".authorities[" + strconv.Itoa(i) + "]"
		_, authority, err := parseDestination(s)
		switch {
		case err != nil:
			return nil, protoError(f, err.Error())
		case authority == "":
			return nil, protoError(f, fmt.Sprintf("%q is an IP address: it belongs in addresses", s))
		case slices.Contains(svc.Authorities, authority):
			return nil, protoError(f, authority+" is listed twice")
		}
		svc.Authorities = append(svc.Authorities, authority)
	}
	if p := pb.GetProtocol(); p != "" {
		proto, ok := ParseProtocol(p)
		if !ok {
			return nil, protoError(join(field, "protocol"), fmt.Sprintf("unknown protocol %q (want auto, http1, http2 or opaque)", p))
		}
		svc.Protocol = proto
	}
	if b := pb.GetBalancer(); b != "" {
		bal, ok := ParseBalancer(b)
		if !ok {
			return nil, protoError(join(field, "balancer"), fmt.Sprintf("unknown balancer %q (want p2c-ewma or round-robin)", b))
		}
		svc.Balancer = bal
	}
	pol, err := PolicyFromProto(pb.GetPolicy(), join(field, "policy"))
	if err != nil {
		return nil, err
	}
	svc.Policy = pol
	return svc, nil
}

// EndpointFromProto validates an endpoint from the controller, whose identity must be in td.
// Weight 0 means 1 (an absent weight); identity "" means not meshed.
func EndpointFromProto(pb *discoverypb.Endpoint, td TrustDomain, field string) (Endpoint, error) {
	if pb == nil {
		return Endpoint{}, protoError(field, "no endpoint")
	}
	ap, err := parseAddrPort(pb.GetAddress())
	if err != nil {
		return Endpoint{}, protoError(join(field, "address"), err.Error())
	}
	ep := Endpoint{Addr: ap, Weight: max(pb.GetWeight(), 1)}
	if id := pb.GetIdentity(); id != "" {
		if err := td.CheckID(id); err != nil {
			return Endpoint{}, protoError(join(field, "identity"), err.Error())
		}
		ep.Identity = id
	}
	if err := checkZone(pb.GetZone()); err != nil {
		return Endpoint{}, protoError(join(field, "zone"), err.Error())
	}
	ep.Zone = pb.GetZone()
	if ep.ForZones, err = CheckForZones(pb.GetForZones()); err != nil {
		return Endpoint{}, protoError(join(field, "for_zones"), err.Error())
	}
	return ep, nil
}

// ParseEndpointAddress validates the address of an endpoint the controller says was removed.
func ParseEndpointAddress(s, field string) (netip.AddrPort, error) {
	ap, err := parseAddrPort(s)
	if err != nil {
		return netip.AddrPort{}, protoError(field, err.Error())
	}
	return ap, nil
}

// CheckServiceName validates a service name as the discovery file requires it.
func CheckServiceName(s, field string) error {
	if err := checkServiceName(s); err != nil {
		return protoError(field, err.Error())
	}
	return nil
}

func protoError(field, msg string) error {
	return ErrorList{{File: ProtoSource, Field: field, Msg: msg}}
}

// Table is a service table under construction from entries that each passed EntryFromProto: it
// checks the rule that spans entries, that a name and a destination select one service.
type Table struct {
	names       map[string]bool
	addrs       map[netip.AddrPort]string // VIP -> service
	authorities map[string]string         // authority -> service
}

// NewTable returns an empty table with room for n services.
func NewTable(n int) *Table {
	return &Table{names: make(map[string]bool, n), addrs: make(map[netip.AddrPort]string, n), authorities: make(map[string]string, n)}
}

// Add adds svc, or says which rule it breaks.
func (t *Table) Add(svc *Service) error {
	if t.names[svc.Name] {
		return protoError("services", fmt.Sprintf("service %q is defined twice", svc.Name))
	}
	t.names[svc.Name] = true
	for _, a := range svc.Addresses {
		if prev, dup := t.addrs[a]; dup {
			return protoError("services", fmt.Sprintf("%s is used by services %q and %q; an address selects one service", a, prev, svc.Name))
		}
		t.addrs[a] = svc.Name
	}
	for _, a := range svc.Authorities {
		if prev, dup := t.authorities[a]; dup {
			return protoError("services", fmt.Sprintf("%s is used by services %q and %q; an address selects one service", a, prev, svc.Name))
		}
		t.authorities[a] = svc.Name
	}
	return nil
}
