package telemetry

import (
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/detourmesh/detour/api/telemetrypb"
)

// FuzzReport feeds arbitrary bytes to the report path as a stream's messages arrive: decoded,
// checked and added to a store that is then queried every way. Nothing may panic, and the
// store never holds more series than its cap.
func FuzzReport(f *testing.F) {
	seed, _ := proto.Marshal(&telemetrypb.ReportRequest{UnixMs: 1, IntervalMs: 1000, Routes: []*telemetrypb.Route{
		{Authority: "stockdata.stocks", Endpoint: "198.18.0.3:8080", PeerIdentity: stockID, Requests: 3, Failures: 1, Latency: []uint64{1, 2}},
		{Inbound: true, Authority: "198.18.0.2:80", Endpoint: "198.18.0.2:80", Requests: 1 << 40, Failures: 1 << 41, Latency: []uint64{1 << 63}},
	}})
	f.Add(seed, []byte{})
	f.Add([]byte{0x2a, 0x03, 0x12, 0x01, 0x61}, []byte{0x0a})
	f.Fuzz(func(t *testing.T, first, second []byte) {
		clock := time.Unix(1_800_000_000, 0)
		store := NewStore(8, func() time.Time { return clock })
		srv := NewServer(store, nil, quiet())
		mapping := bucketMap(Bounds)
		pod := Pod{"ns", "pod-0"}
		store.Hello(pod, stockID, nil)
		for _, raw := range [][]byte{first, second} {
			var req telemetrypb.ReportRequest
			if proto.Unmarshal(raw, &req) != nil {
				continue
			}
			srv.add(pod, mapping, &req)
			clock = clock.Add(time.Second)
		}
		for _, kind := range []string{KindService, KindPod, KindDeployment} {
			store.Stat(Query{Resource: Resource{Kind: kind}})
			store.Stat(Query{Resource: Resource{Kind: kind}, From: Resource{KindPod, "pod-0"}})
			store.Timeline(Resource{kind, "x"})
		}
		store.Top(time.Minute, 5)
		store.Graph(time.Minute)
		if n := store.Stats().Series; n > 8 {
			t.Fatalf("%d series past a cap of 8", n)
		}
	})
}
