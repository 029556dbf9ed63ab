package apply

import (
	"errors"
	"strings"
	"testing"

	"github.com/detourmesh/detour/init/plan"
)

func fakeOptions(h fakeHost, backend string) Options {
	return Options{Backend: backend, IPv6: "on", Open: h.open}
}

func TestBackendChoice(t *testing.T) {
	tests := []struct {
		name    string
		setup   func(fakeHost)
		backend string
		want    Backend
		err     string
	}{
		{"nft when no backend holds rules", func(fakeHost) {}, "auto", NFT, ""},
		{"legacy when only legacy holds rules", func(h fakeHost) { h[Legacy][plan.IPv4].other = 3 }, "auto", Legacy, ""},
		{"nft when only nft holds rules", func(h fakeHost) { h[NFT][plan.IPv6].other = 1 }, "auto", NFT, ""},
		{"rules in both backends are an error", func(h fakeHost) {
			h[Legacy][plan.IPv4].other = 1
			h[NFT][plan.IPv4].other = 2
		}, "auto", "", "both iptables-legacy (1 rules) and iptables-nft (2 rules)"},
		{"an explicit backend wins over unrelated rules elsewhere", func(h fakeHost) { h[NFT][plan.IPv4].other = 2 }, "legacy", Legacy, ""},
		{"Detour rules in the other backend are an error", func(h fakeHost) {
			mustInstall(t, h, "legacy")
		}, "nft", "", "already installed with iptables-legacy"},
		{"an unknown backend is an error", func(fakeHost) {}, "iptables", "", `--backend "iptables"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newFakeHost()
			tt.setup(h)
			res, err := Install(plan.DefaultConfig(), fakeOptions(h, tt.backend))
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("Install error = %v, want one containing %q", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if res.Backend != tt.want {
				t.Fatalf("backend = %s (%s), want %s", res.Backend, res.Reason, tt.want)
			}
		})
	}
}

func mustInstall(t *testing.T, h fakeHost, backend string) {
	t.Helper()
	if _, err := Install(plan.DefaultConfig(), fakeOptions(h, backend)); err != nil {
		t.Fatal(err)
	}
}

func TestInstallTwiceChangesNothing(t *testing.T) {
	h := newFakeHost()
	mustInstall(t, h, "auto")
	first := h.dump()
	mustInstall(t, h, "auto")
	if got := h.dump(); got != first {
		t.Fatalf("second install changed the rules:\n%s\nwant\n%s", got, first)
	}
}

func TestAFailedFamilyPutsTheFirstBack(t *testing.T) {
	h := newFakeHost()
	h[NFT][plan.IPv4].chains["OUTPUT"] = []string{"-A OUTPUT -d 198.18.5.0/24 -j RETURN"}
	h[NFT][plan.IPv4].other = 0
	before := h.dump()
	h[NFT][plan.IPv6].failNext = errors.New("ip6tables-nft-restore: line 3 failed")
	_, err := Install(plan.DefaultConfig(), fakeOptions(h, "nft"))
	if err == nil || !strings.Contains(err.Error(), "installing IPv6 rules") {
		t.Fatalf("Install error = %v, want the IPv6 failure", err)
	}
	if got := h.dump(); got != before {
		t.Fatalf("a failed IPv6 install left:\n%s\nwant\n%s", got, before)
	}
}

func TestAFailedProofPutsEverythingBack(t *testing.T) {
	h := newFakeHost()
	before := h.dump()
	o := fakeOptions(h, "auto")
	o.Verify = func([]plan.Family) error { return errors.New("IPv4 outbound: did not land") }
	_, err := Install(plan.DefaultConfig(), o)
	if err == nil || !strings.Contains(err.Error(), "taken out again") {
		t.Fatalf("Install error = %v, want the proof failure", err)
	}
	if got := h.dump(); got != before {
		t.Fatalf("a failed proof left:\n%s\nwant\n%s", got, before)
	}
}

func TestRemoveTakesOnlyDetoursRules(t *testing.T) {
	h := newFakeHost()
	v4 := h[NFT][plan.IPv4]
	v4.chains["OUTPUT"] = []string{"-A OUTPUT -d 198.18.5.0/24 -j RETURN"}
	v4.chains["USER"] = []string{"-A USER -j RETURN"}
	v4.order = []string{"USER"}
	before := h.dump()
	mustInstall(t, h, "nft")
	if h.dump() == before {
		t.Fatal("install changed nothing")
	}
	res, err := Remove(fakeOptions(h, "auto"))
	if err != nil {
		t.Fatal(err)
	}
	if got := h.dump(); got != before {
		t.Fatalf("after remove:\n%s\nwant\n%s", got, before)
	}
	if strings.Join(res.Removed, ",") != "nft/IPv4,nft/IPv6" {
		t.Errorf("Removed = %v", res.Removed)
	}
}

func TestChangedFlagsReplaceTheRules(t *testing.T) {
	h := newFakeHost()
	mustInstall(t, h, "auto")
	c := plan.DefaultConfig()
	c.SkipOutboundPorts = []plan.PortRange{{First: 5432, Last: 5432}}
	if _, err := Install(c, fakeOptions(h, "auto")); err != nil {
		t.Fatal(err)
	}
	want := newFakeHost()
	if _, err := Install(c, fakeOptions(want, "auto")); err != nil {
		t.Fatal(err)
	}
	if h.dump() != want.dump() {
		t.Fatalf("reinstall with new flags:\n%s\nwant as if installed fresh:\n%s", h.dump(), want.dump())
	}
}

func TestCheckFindsTampering(t *testing.T) {
	tests := []struct {
		name   string
		tamper func(*fakeTables)
		want   string
	}{
		{"nothing changed passes", func(*fakeTables) {}, ""},
		{"a deleted rule is missing", func(t *fakeTables) {
			t.chains[plan.ChainOutbound] = t.chains[plan.ChainOutbound][1:]
		}, "missing in DETOUR_OUTBOUND: -m owner --uid-owner 2102"},
		{"an added rule is extra", func(t *fakeTables) {
			t.chains[plan.ChainInbound] = append(t.chains[plan.ChainInbound], "-A DETOUR_INBOUND -j RETURN")
		}, "DETOUR_INBOUND holds 3 rules, want 2"},
		{"a duplicated jump is found", func(t *fakeTables) {
			t.chains["OUTPUT"] = append(t.chains["OUTPUT"], "-A OUTPUT -j DETOUR_OUTBOUND")
		}, "2 jumps from OUTPUT"},
		{"a deleted jump is missing", func(t *fakeTables) { t.chains["PREROUTING"] = nil }, "missing in PREROUTING"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newFakeHost()
			mustInstall(t, h, "auto")
			tt.tamper(h[NFT][plan.IPv6])
			_, err := Check(plan.DefaultConfig(), fakeOptions(h, "auto"))
			if tt.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.want) || !strings.Contains(err.Error(), "IPv6") {
				t.Fatalf("Check error = %v, want one naming IPv6 and %q", err, tt.want)
			}
		})
	}
}

func TestCheckWithNothingInstalled(t *testing.T) {
	_, err := Check(plan.DefaultConfig(), fakeOptions(newFakeHost(), "auto"))
	if err == nil || !strings.Contains(err.Error(), "no Detour rules are installed") {
		t.Fatalf("Check error = %v", err)
	}
}
