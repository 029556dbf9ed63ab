// Package resolve is the proxy's client of the controller's Discovery service: it follows the
// controller's stream and turns it into the discovery model (package discovery) the proxy routes
// by, keeping the last good view while the controller is away.
package resolve

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/status"

	"github.com/detourmesh/detour/api/discoverypb"
	"github.com/detourmesh/detour/discovery"
)

// ControllerOptions configures a Controller source. Address and TLS are required.
type ControllerOptions struct {
	// Address is the controller's gRPC address, host:port.
	Address string
	// TLS verifies the controller: spiffe.ClientTLS(trust anchors, spiffe.ControllerID(td)).
	TLS *tls.Config
	// Identity is the proxy's SPIFFE ID. The controller refuses a watch naming an identity the
	// caller did not prove; empty names none.
	Identity string
	// TokenFile holds the proxy's proof of identity (a bootstrap token), sent with each Watch
	// as "authorization: Bearer <token>". It is read again at every attempt, so a token rotated
	// on disk is used at the next reconnection. The controller refuses a watch without it.
	TokenFile string
	// Targets limits the services watched to those with these VIPs or authorities; empty: all.
	Targets []string
	// StartTimeout bounds the wait for the first snapshot in StartController; default 30 s.
	StartTimeout time.Duration
	// MinBackoff and MaxBackoff bound the wait between reconnections; default 500 ms and 30 s.
	MinBackoff, MaxBackoff time.Duration
	// Logger; default slog.Default().
	Logger *slog.Logger
}

// Controller is a Source that follows the controller's Discovery.Watch stream. It validates every
// snapshot exactly as the file source does (FromProto), and when the controller goes away or sends
// something invalid it keeps the last good snapshot and reconnects with backoff.
type Controller struct {
	opts    ControllerOptions
	conn    *grpc.ClientConn
	current atomic.Pointer[discovery.Snapshot]
	first   chan struct{} // closed at the first snapshot
	done    chan struct{} // closed when the stream goroutine has exited

	mu      sync.Mutex
	changed chan struct{} // closed and replaced at every new snapshot
	lastErr error
}

var _ discovery.Source = (*Controller)(nil)

// NewController starts following the controller and returns at once, before any snapshot: a
// goroutine owned by ctx keeps the stream open (reconnecting with backoff, for as long as it
// takes) until ctx is done; Done reports when it has exited. Until the first snapshot arrives,
// Snapshot is nil, Watch delivers nothing and Err says why. It fails only for options that
// can never work.
func NewController(ctx context.Context, opts ControllerOptions) (*Controller, error) {
	c, err := newController(opts)
	if err != nil {
		return nil, err
	}
	go c.follow(ctx)
	return c, nil
}

// StartController is NewController that waits up to opts.StartTimeout for the first snapshot;
// on timeout it stops following and fails with the reason the controller could not be used.
func StartController(ctx context.Context, opts ControllerOptions) (*Controller, error) {
	c, err := newController(opts)
	if err != nil {
		return nil, err
	}
	runCtx, cancel := context.WithCancel(ctx)
	go c.follow(runCtx)
	timer := time.NewTimer(c.opts.StartTimeout)
	defer timer.Stop()
	select {
	case <-c.first:
		context.AfterFunc(ctx, cancel) // the goroutine's lifetime is ctx's from here
		return c, nil
	case <-timer.C:
	case <-ctx.Done():
	}
	cancel()
	<-c.done
	c.mu.Lock()
	last := c.lastErr
	c.mu.Unlock()
	if last == nil {
		last = ctx.Err()
	}
	if last == nil {
		last = errors.New("no snapshot arrived")
	}
	return nil, fmt.Errorf("no discovery snapshot from the controller at %s within %s: %w (%s)",
		opts.Address, c.opts.StartTimeout, last, hint(last))
}

// hint says what to check when the controller cannot be used for err.
func hint(err error) string {
	switch status.Code(err) {
	case codes.Unauthenticated, codes.PermissionDenied:
		return "check that the identity token file holds a token the controller's --tokens file maps to this proxy's identity"
	}
	return "check that the controller runs and that the trust anchor is its ca.crt"
}

func newController(opts ControllerOptions) (*Controller, error) {
	if opts.Address == "" || opts.TLS == nil {
		return nil, errors.New("discovery from the controller needs its address and TLS configuration (trust anchors)")
	}
	if opts.StartTimeout <= 0 {
		opts.StartTimeout = 30 * time.Second
	}
	if opts.MinBackoff <= 0 {
		opts.MinBackoff = 500 * time.Millisecond
	}
	if opts.MaxBackoff < opts.MinBackoff {
		opts.MaxBackoff = max(30*time.Second, opts.MinBackoff)
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	dialOpts := []grpc.DialOption{
		grpc.WithTransportCredentials(credentials.NewTLS(opts.TLS)),
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: opts.MinBackoff, Multiplier: 1.6, Jitter: 0.2, MaxDelay: opts.MaxBackoff},
			MinConnectTimeout: 10 * time.Second,
		}),
		// A controller that vanishes without closing the connection (a node lost) is noticed
		// within 40 s instead of the kernel's TCP timeout.
		grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: 30 * time.Second, Timeout: 10 * time.Second}),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(discovery.MaxFileSize)),
	}
	if opts.TokenFile != "" {
		dialOpts = append(dialOpts, grpc.WithPerRPCCredentials(tokenFile(opts.TokenFile)))
	}
	conn, err := grpc.NewClient(opts.Address, dialOpts...)
	if err != nil {
		return nil, fmt.Errorf("discovery controller %q: %w", opts.Address, err)
	}
	return &Controller{
		opts:    opts,
		conn:    conn,
		first:   make(chan struct{}),
		done:    make(chan struct{}),
		changed: make(chan struct{}),
	}, nil
}

// follow runs the stream until ctx is done, then closes the connection and done.
func (c *Controller) follow(ctx context.Context) {
	defer close(c.done)
	defer c.conn.Close()
	c.run(ctx, discoverypb.NewDiscoveryClient(c.conn))
}

// tokenFile is the bootstrap token as per-RPC credentials, read from its file at every call.
type tokenFile string

func (f tokenFile) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	data, err := os.ReadFile(string(f))
	if err != nil {
		return nil, fmt.Errorf("reading the identity token: %w", err)
	}
	tok := strings.TrimSpace(string(data))
	if tok == "" {
		return nil, fmt.Errorf("the identity token file %s is empty", string(f))
	}
	for i := 0; i < len(tok); i++ {
		// A metadata value cannot carry these, and a token never holds them.
		if tok[i] < 0x21 || tok[i] > 0x7e {
			return nil, fmt.Errorf("the identity token file %s holds more than one token, white space or a byte that is not printable ASCII", string(f))
		}
	}
	return map[string]string{"authorization": "Bearer " + tok}, nil
}

// RequireTransportSecurity: the token proves an identity and must never cross the wire in clear.
func (tokenFile) RequireTransportSecurity() bool { return true }

// Snapshot returns the snapshot in force: the last good one the controller sent.
func (c *Controller) Snapshot() *discovery.Snapshot { return c.current.Load() }

// Err returns why the stream to the controller is down, or nil while it is up: for
// /debug/endpoints and readiness reporting. The snapshot in force stays Snapshot's either way.
func (c *Controller) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lastErr
}

// Done is closed when the stream goroutine has exited, after the ctx given to StartController
// is done.
func (c *Controller) Done() <-chan struct{} { return c.done }

// Watch implements Source. Before the first snapshot it delivers nothing: the first one comes
// when the controller sends it.
func (c *Controller) Watch(ctx context.Context) <-chan *discovery.Snapshot {
	ch := make(chan *discovery.Snapshot, 1)
	last := c.current.Load()
	if last != nil {
		ch <- last
	}
	go func() {
		defer close(ch)
		for {
			c.mu.Lock()
			changed := c.changed
			c.mu.Unlock()
			if s := c.current.Load(); s != last {
				last = s
				// Latest wins, as in File.poll: this goroutine is the only sender.
				select {
				case ch <- s:
				default:
					select {
					case <-ch:
					default:
					}
					ch <- s
				}
			}
			select {
			case <-ctx.Done():
				return
			case <-changed:
			}
		}
	}()
	return ch
}

func (c *Controller) publish(s *discovery.Snapshot) {
	first := c.current.Swap(s) == nil
	c.mu.Lock()
	close(c.changed)
	c.changed = make(chan struct{})
	c.lastErr = nil
	c.mu.Unlock()
	if first {
		close(c.first)
	}
}

func (c *Controller) run(ctx context.Context, client discoverypb.DiscoveryClient) {
	var delay time.Duration
	var logged string
	for {
		got, err := c.stream(ctx, client)
		if ctx.Err() != nil {
			return
		}
		if got {
			delay = 0
		}
		c.mu.Lock()
		c.lastErr = err
		c.mu.Unlock()
		// One log line per distinct problem: a controller away for an hour logs once.
		if msg := err.Error(); msg != logged {
			logged = msg
			keeping := "none yet"
			if s := c.current.Load(); s != nil {
				keeping = s.Revision()
			}
			c.opts.Logger.Warn("discovery stream from the controller lost; keeping the last good snapshot and reconnecting",
				"controller", c.opts.Address, "revision", keeping, "err", msg)
		}
		delay = min(max(delay*2, c.opts.MinBackoff), c.opts.MaxBackoff)
		wait := time.Duration(float64(delay) * (0.8 + 0.4*rand.Float64()))
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

// stream runs one Watch call until it fails; got reports whether it delivered a snapshot.
func (c *Controller) stream(ctx context.Context, client discoverypb.DiscoveryClient) (got bool, err error) {
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	st, err := client.Watch(sctx, &discoverypb.WatchRequest{Identity: c.opts.Identity, Targets: c.opts.Targets})
	if err != nil {
		return false, err
	}
	var badRev string
	for {
		pb, err := st.Recv()
		if errors.Is(err, io.EOF) {
			return got, errors.New("the controller closed the stream")
		}
		if err != nil {
			return got, err
		}
		snap, err := discovery.FromProto(pb)
		if err != nil {
			if pb.GetRevision() != badRev {
				badRev = pb.GetRevision()
				c.opts.Logger.Error("the controller sent an invalid discovery snapshot; keeping the last good one",
					"controller", c.opts.Address, "revision", pb.GetRevision(), "err", err)
			}
			continue
		}
		if !got {
			c.opts.Logger.Info("discovery stream from the controller connected", "controller", c.opts.Address)
		}
		got = true
		if cur := c.current.Load(); cur != nil && cur.Revision() == snap.Revision() {
			// The same content again (a reconnection): consumers keep the snapshot they have.
			c.mu.Lock()
			c.lastErr = nil
			c.mu.Unlock()
			continue
		}
		c.opts.Logger.Info("discovery snapshot from the controller", "revision", snap.Revision(), "services", len(snap.Services()))
		c.publish(snap)
	}
}
