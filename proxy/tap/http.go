package tap

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"time"
)

// Line is one line of the /debug/tap stream, a JSON object per line. Kind says which fields
// are set: "start" once the watch is in place (requests from then on are seen), "request" for
// each request, "dropped" when the watcher fell behind (Dropped is the total so far), and "end"
// when the limit or duration ran out.
type Line struct {
	Kind string    `json:"kind"`
	Time time.Time `json:"time"`

	Direction  string  `json:"direction,omitempty"`
	Protocol   string  `json:"protocol,omitempty"`
	Service    string  `json:"service,omitempty"`
	Authority  string  `json:"authority,omitempty"`
	Method     string  `json:"method,omitempty"`
	Path       string  `json:"path,omitempty"`
	GRPCMethod string  `json:"grpc_method,omitempty"`
	Status     int     `json:"status,omitempty"`
	GRPCStatus *int    `json:"grpc_status,omitempty"`
	LatencyMS  float64 `json:"latency_ms,omitempty"`
	Endpoint   string  `json:"endpoint,omitempty"`
	Peer       string  `json:"tls_peer,omitempty"`
	Client     string  `json:"client,omitempty"`
	Dst        string  `json:"original_destination,omitempty"`
	Error      string  `json:"error,omitempty"`
	ReqBytes   int64   `json:"request_bytes,omitempty"`
	RespBytes  int64   `json:"response_bytes,omitempty"`

	Dropped int64  `json:"dropped,omitempty"`
	Events  int64  `json:"events,omitempty"`
	Reason  string `json:"reason,omitempty"`
}

// LineOf is the stream line of e.
func LineOf(e Event) Line {
	l := Line{
		Kind: "request", Time: e.Time.UTC(), Direction: e.Direction, Protocol: e.Protocol, Service: e.Service,
		Authority: e.Authority, Method: e.Method, Path: e.Path, Status: e.Status,
		LatencyMS: float64(e.Latency.Microseconds()) / 1000, Peer: e.Peer, Error: e.Error,
		ReqBytes: e.ReqBytes, RespBytes: e.RespBytes,
	}
	if e.GRPC && len(e.Path) > 1 {
		l.GRPCMethod = e.Path[1:]
	}
	if e.GRPCStatus >= 0 {
		s := e.GRPCStatus
		l.GRPCStatus = &s
	}
	if e.Endpoint.IsValid() {
		l.Endpoint = e.Endpoint.String()
	}
	if e.Client.IsValid() {
		l.Client = e.Client.String()
	}
	if e.Dst.IsValid() {
		l.Dst = e.Dst.String()
	}
	return l
}

// Handler serves /debug/tap: ?service= filters (see Filter), ?limit=N ends the stream after N
// requests, ?duration= (a Go duration such as 30s) after that long; without them it streams
// until the client goes away.
func (h *Hub) Handler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		var limit int64
		var duration time.Duration
		var err error
		if s := q.Get("limit"); s != "" {
			if limit, err = strconv.ParseInt(s, 10, 64); err != nil || limit < 0 {
				http.Error(w, fmt.Sprintf("limit %q: want a count of requests", s), http.StatusBadRequest)
				return
			}
		}
		if s := q.Get("duration"); s != "" {
			if duration, err = time.ParseDuration(s); err != nil || duration < 0 {
				http.Error(w, fmt.Sprintf("duration %q: want a duration such as 30s", s), http.StatusBadRequest)
				return
			}
		}
		watcher := h.Watch(Filter{Service: q.Get("service")})
		if watcher == nil {
			http.Error(w, fmt.Sprintf("%d watchers already tap this proxy; try again later", MaxWatchers), http.StatusServiceUnavailable)
			return
		}
		defer watcher.Close()
		// A tap outlives the admin server's write timeout, which is meant for documents.
		rc := http.NewResponseController(w)
		rc.SetWriteDeadline(time.Time{})
		w.Header().Set("Content-Type", "application/x-ndjson")
		w.WriteHeader(http.StatusOK)
		enc := json.NewEncoder(w)
		enc.SetEscapeHTML(false)
		send := func(l Line) bool {
			if enc.Encode(l) != nil {
				return false
			}
			return rc.Flush() == nil
		}
		if !send(Line{Kind: "start", Time: time.Now().UTC()}) {
			return
		}
		var end <-chan time.Time
		if duration > 0 {
			t := time.NewTimer(duration)
			defer t.Stop()
			end = t.C
		}
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		var events, reported int64
		finish := func(reason string) {
			send(Line{Kind: "end", Time: time.Now().UTC(), Reason: reason, Events: events, Dropped: watcher.Dropped()})
		}
		for {
			select {
			case e := <-watcher.C:
				if !send(LineOf(e)) {
					return
				}
				events++
				if limit > 0 && events >= limit {
					finish("limit")
					return
				}
			case <-tick.C:
				if d := watcher.Dropped(); d != reported {
					reported = d
					if !send(Line{Kind: "dropped", Time: time.Now().UTC(), Dropped: d}) {
						return
					}
				}
			case <-end:
				finish("duration")
				return
			case <-r.Context().Done():
				return
			}
		}
	})
}
