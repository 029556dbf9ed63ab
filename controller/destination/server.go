// Package destination is the controller's Discovery service: it exists to serve one discovery
// Source (the file, or the Kubernetes API) to every proxy over gRPC, in the model both sides
// share (package discovery), so a proxy behaves the same whichever it reads.
//
// It is built so that neither a proxy's memory nor the bytes of one change grow with the mesh
// (api/discoverypb/discovery.proto says the conversation): every proxy learns the small table of
// service destinations, and the endpoints only of the services it subscribes to; a change is
// turned into versions and deltas once (next), however many proxies watch, and goes only to the
// streams subscribed to what changed. A proxy that reads slowly is never queued a backlog: its
// stream sends, when it can, what differs between what the proxy was last sent and the newest
// state. Only callers that prove a workload identity may open a stream: the services and
// endpoints of the mesh are not for anyone who can reach the port.
package destination

import (
	"context"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/detourmesh/detour/api/discoverypb"
	"github.com/detourmesh/detour/controller/identity"
	"github.com/detourmesh/detour/discovery"
)

// maxIDLength is the longest SPIFFE ID the SPIFFE ID specification requires support for.
const maxIDLength = 2048

// maxSubscriptions bounds the services one stream may follow: far more than a proxy uses, few
// enough that one caller cannot make the controller hold the mesh once per stream.
const maxSubscriptions = 10000

// maxSentKept bounds the responses a stream remembers for reading NACKs; an answer to an older
// one is only logged.
const maxSentKept = 32

// Authenticator tells who calls. Stream calls it once per call, from the call's handler
// goroutine, concurrently with other calls and before it reads the request; it may block (a
// token review is a network call) and must honour ctx. controller/identity.Authenticator is the
// controller's (with its per-address throttle).
type Authenticator interface {
	// Authenticate returns the identity the caller proved, or a gRPC status error that Stream
	// returns as it is: codes.Unauthenticated, saying what to present, for a caller that proved
	// none. claimed is the identity the request names ("" for none): failed proofs are
	// throttled per claim, so a bad client does not lock out honest ones behind its address.
	Authenticate(ctx context.Context, claimed string) (spiffeid.ID, error)
}

// Config configures a Server. Source and Auth are required.
type Config struct {
	Source discovery.Source
	// Auth decides who may open a stream; without it every stream is refused.
	Auth Authenticator
	// Logger; default slog.Default().
	Logger *slog.Logger
}

// Server implements discoverypb.DiscoveryServer over a discovery.Source. Run must be running for
// streams to deliver anything.
type Server struct {
	discoverypb.UnimplementedDiscoveryServer
	src  discovery.Source
	auth Authenticator
	log  *slog.Logger

	mu          sync.Mutex
	cur         *state                      // nil until the source delivers
	streams     map[*stream]bool            // every open stream
	subscribers map[string]map[*stream]bool // by service name
	first       chan struct{}               // closed at the first state
	stopped     chan struct{}               // closed when Run returns: streams end, so a graceful stop can finish
	sentMsgs    atomic.Uint64               // responses sent, over all streams
	sentBytes   atomic.Uint64               // their encoded size
}

// NewServer returns the Discovery service for cfg.
func NewServer(cfg Config) *Server {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return &Server{
		src: cfg.Source, auth: cfg.Auth, log: cfg.Logger,
		streams: map[*stream]bool{}, subscribers: map[string]map[*stream]bool{},
		first: make(chan struct{}), stopped: make(chan struct{}),
	}
}

// Run follows the source until ctx is done, computing each change once and waking the streams
// it concerns. When it returns, every stream ends with OK, so grpc.Server.GracefulStop does not
// wait for streams that would otherwise never end; proxies reconnect to another controller or
// this one restarted. Call it once.
func (s *Server) Run(ctx context.Context) error {
	defer close(s.stopped)
	for snap := range s.src.Watch(ctx) {
		start := time.Now()
		s.mu.Lock()
		prev := s.cur
		st := next(prev, snap)
		s.cur = st
		var wake map[*stream]bool
		switch {
		case prev == nil:
			close(s.first)
		case st.tableChanged:
			wake = s.streams
		default:
			wake = map[*stream]bool{}
			for _, name := range st.changed {
				for c := range s.subscribers[name] {
					wake[c] = true
				}
			}
		}
		for c := range wake {
			c.poke()
		}
		woken := len(wake)
		s.mu.Unlock()
		if prev != nil {
			s.log.Info("discovery change", "table", st.table, "table_changed", st.tableChanged,
				"services_changed", len(st.changed), "streams", woken, "took", time.Since(start))
		}
	}
	return nil
}

// Sent reports the responses sent to proxies so far and their encoded size in bytes, over all
// streams (for benchmarks and tests).
func (s *Server) Sent() (messages, bytes uint64) { return s.sentMsgs.Load(), s.sentBytes.Load() }

// stream is one proxy's conversation. The handler goroutine sends; a receiving goroutine reads
// the proxy's requests, updates what the stream follows and pokes the sender.
type stream struct {
	wake chan struct{} // capacity 1: a poke never blocks, and pokes coalesce

	mu           sync.Mutex
	table        string // the table version the proxy holds, as far as the server knows
	tableRefused string // a table version the proxy refused: not sent again
	subs         map[string]*subscription
	synced       bool // the first response (sent even if empty) went out
	nonce        uint64
	sent         []sentResponse // the last responses, for NACKs
	lastNack     string         // last NACK detail logged, to log each once
}

type subscription struct {
	version     string // the endpoint version the proxy holds, as far as the server knows
	refused     string // a version the proxy refused: not sent again
	unknownSent bool   // the proxy was told the service does not exist
}

// sentResponse remembers the versions a response carried, to know what a NACK refused.
type sentResponse struct {
	nonce     string
	table     string
	endpoints map[string]string // service -> version
}

func (c *stream) poke() {
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

// Stream implements discoverypb.DiscoveryServer (api/discoverypb/discovery.proto).
//
// The caller is authenticated before its first request is read, so an unknown caller cannot
// exercise the request parser. A first request that names an identity must name the one
// proven: a proxy given another's token is refused instead of being logged under a name it
// does not have.
func (s *Server) Stream(ss discoverypb.Discovery_StreamServer) error {
	ctx := ss.Context()
	addr := ""
	if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
		addr = p.Addr.String()
	}
	// The claim comes as metadata: the request is read only once the caller is known.
	claimed := ""
	if v := metadata.ValueFromIncomingContext(ctx, identity.ClaimKey); len(v) == 1 {
		claimed = v[0]
	}
	id, err := s.authenticate(ctx, claimed)
	if err != nil {
		switch status.Code(err) {
		case codes.Canceled, codes.DeadlineExceeded: // the caller left; nothing was refused
		case codes.ResourceExhausted: // throttled; the throttle logged the address once
			s.log.Debug("discovery stream refused", "peer", addr, "err", status.Convert(err).Message())
		case codes.Unauthenticated, codes.PermissionDenied:
			s.log.Warn("discovery stream refused", "peer", addr, "err", status.Convert(err).Message())
		default:
			s.log.Error("discovery stream: authenticating the caller failed", "peer", addr, "err", err)
		}
		return err
	}
	req, err := ss.Recv()
	if err != nil {
		return err
	}
	if want := req.GetIdentity(); want != "" && want != id.String() {
		if len(want) > maxIDLength { // the caller's string, echoed to logs: bounded
			want = want[:maxIDLength] + "…"
		}
		s.log.Warn("discovery stream refused: the request names another identity than the caller proved",
			"peer", addr, "identity", id.String(), "requested", want)
		return status.Errorf(codes.PermissionDenied, "the request names another identity than the one the caller proved: %s", id)
	}
	log := s.log.With("peer", addr, "identity", id.String())
	c := &stream{wake: make(chan struct{}, 1), subs: map[string]*subscription{}, table: req.GetTableVersion()}
	s.mu.Lock()
	s.streams[c] = true
	s.mu.Unlock()
	defer s.remove(c)
	if err := s.apply(c, req, log); err != nil {
		return err
	}
	log.Info("discovery stream started", "subscriptions", len(req.GetSubscribe()), "resume", req.GetTableVersion() != "")
	defer log.Info("discovery stream ended")

	// The receiver ends when the stream does: Recv fails once this handler has returned.
	recvErr := make(chan error, 1)
	go func() {
		for {
			req, err := ss.Recv()
			if err == nil {
				err = s.apply(c, req, log)
			}
			if err != nil {
				recvErr <- err
				c.poke()
				return
			}
		}
	}()
	select {
	case <-s.first:
	case <-ctx.Done():
		return nil
	case <-s.stopped:
		return nil
	}
	for {
		select {
		case err := <-recvErr:
			if status.Code(err) == codes.InvalidArgument {
				return err
			}
			return nil // the proxy went away or closed its side
		default:
		}
		s.mu.Lock()
		st := s.cur
		s.mu.Unlock()
		if resp := c.build(st); resp != nil {
			if err := ss.Send(resp); err != nil {
				return err
			}
			s.sentMsgs.Add(1)
			s.sentBytes.Add(uint64(proto.Size(resp)))
			continue // something newer may have come while Send blocked
		}
		select {
		case <-ctx.Done():
			return nil
		case <-s.stopped:
			return nil
		case <-c.wake:
		}
	}
}

func (s *Server) authenticate(ctx context.Context, claimed string) (spiffeid.ID, error) {
	if s.auth == nil {
		return spiffeid.ID{}, status.Error(codes.Internal, "the controller has no way to authenticate callers")
	}
	return s.auth.Authenticate(ctx, claimed)
}

func (s *Server) remove(c *stream) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.streams, c)
	c.mu.Lock()
	defer c.mu.Unlock()
	for name := range c.subs {
		s.unsubscribeLocked(c, name)
	}
}

func (s *Server) unsubscribeLocked(c *stream, name string) {
	if set := s.subscribers[name]; set != nil {
		delete(set, c)
		if len(set) == 0 {
			delete(s.subscribers, name)
		}
	}
}

// apply takes in one request of the proxy: an answer to a response, subscriptions, the versions
// it holds. A request the proxy could not have meant (a bad name, too many subscriptions) ends
// the stream with InvalidArgument.
func (s *Server) apply(c *stream, req *discoverypb.DiscoveryRequest, log *slog.Logger) error {
	for i, sub := range req.GetSubscribe() {
		if err := discovery.CheckServiceName(sub.GetService(), "subscribe["+strconv.Itoa(i)+"].service"); err != nil {
			return status.Error(codes.InvalidArgument, err.Error())
		}
	}
	for i, name := range req.GetUnsubscribe() {
		if err := discovery.CheckServiceName(name, "unsubscribe["+strconv.Itoa(i)+"]"); err != nil {
			return status.Error(codes.InvalidArgument, err.Error())
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	c.mu.Lock()
	defer c.mu.Unlock()
	if detail := req.GetErrorDetail(); detail != "" {
		// A NACK: the proxy kept what it had. Do not send it the refused versions again, and
		// take the versions it says it holds as the bases of what comes next.
		for _, r := range c.sent {
			if r.nonce != req.GetResponseNonce() {
				continue
			}
			if r.table != "" {
				c.tableRefused = r.table
			}
			for name, v := range r.endpoints {
				if sub := c.subs[name]; sub != nil {
					sub.refused = v
				}
			}
		}
		c.table = req.GetTableVersion()
		if len(detail) > 1024 {
			detail = detail[:1024] + "…"
		}
		if detail != c.lastNack {
			c.lastNack = detail
			log.Warn("a proxy refused part of a discovery response; it keeps its last good state", "nonce", req.GetResponseNonce(), "err", detail)
		}
	}
	for _, sub := range req.GetSubscribe() {
		name := sub.GetService()
		if cur := c.subs[name]; cur != nil {
			cur.version = sub.GetVersion()
			continue
		}
		if len(c.subs) >= maxSubscriptions {
			return status.Errorf(codes.InvalidArgument, "more than %d subscriptions on one stream", maxSubscriptions)
		}
		c.subs[name] = &subscription{version: sub.GetVersion()}
		set := s.subscribers[name]
		if set == nil {
			set = map[*stream]bool{}
			s.subscribers[name] = set
		}
		set[c] = true
	}
	for _, name := range req.GetUnsubscribe() {
		if c.subs[name] != nil {
			delete(c.subs, name)
			s.unsubscribeLocked(c, name)
		}
	}
	c.poke()
	return nil
}

// build returns the response that brings the proxy from what it holds to st, or nil when it
// holds st already (after the first response, which is sent even if empty, so the proxy knows
// it is in sync).
func (c *stream) build(st *state) *discoverypb.DiscoveryResponse {
	c.mu.Lock()
	defer c.mu.Unlock()
	resp := &discoverypb.DiscoveryResponse{}
	rec := sentResponse{}
	if st.table != c.table && st.table != c.tableRefused {
		resp.Table = st.tableFor(c.table)
		rec.table = st.table
		c.table = st.table
	}
	for name, sub := range c.subs {
		ss := st.services[name]
		if ss == nil {
			if !sub.unknownSent {
				resp.Endpoints = append(resp.Endpoints, &discoverypb.Endpoints{Service: name, Unknown: true})
				sub.unknownSent, sub.version = true, ""
			}
			continue
		}
		sub.unknownSent = false
		if v := ss.eps.version; v == sub.version || v == sub.refused {
			continue
		}
		resp.Endpoints = append(resp.Endpoints, ss.eps.messageFor(sub.version))
		if rec.endpoints == nil {
			rec.endpoints = map[string]string{}
		}
		rec.endpoints[name] = ss.eps.version
		sub.version = ss.eps.version
	}
	if resp.Table == nil && len(resp.Endpoints) == 0 && c.synced {
		return nil
	}
	c.synced = true
	c.nonce++
	resp.Nonce = strconv.FormatUint(c.nonce, 10)
	rec.nonce = resp.Nonce
	if len(c.sent) == maxSentKept {
		c.sent = append(c.sent[:0], c.sent[1:]...)
	}
	c.sent = append(c.sent, rec)
	return resp
}
