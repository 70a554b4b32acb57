// Package server is the fleet server's logic: enrolment, fleets, releases,
// variables and the target state each device gets, independent of storage
// (a store.Store) and of HTTP (internal/serverapi).
package server

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"reeve.dev/reeve"
	"reeve.dev/reeve/internal/store"
)

// Options configures a Server.
type Options struct {
	Store  store.Store
	Logger *slog.Logger
	// Now is the clock; default time.Now.
	Now func() time.Time
	// DefaultPollInterval is the poll interval assumed for devices that did
	// not report theirs. Default 1 min.
	DefaultPollInterval time.Duration
	// SeenFlushInterval is how often last-seen times kept in memory are
	// written to the store. Default 2 s.
	SeenFlushInterval time.Duration
	// Logs keeps device logs (see logs.go); nil: the server keeps none.
	// Its owner starts and closes it.
	Logs *Logs
}

// Server is the fleet logic. Start it to flush last-seen times; Close
// stops it and writes what is pending.
type Server struct {
	st  store.Store
	log *slog.Logger
	now func() time.Time
	opt Options

	hub    *hub
	linkMu sync.Mutex // one linkFleets reads the store at a time

	seenMu  sync.Mutex
	seen    map[string]time.Time // not yet written to the store
	polling map[string]int       // device UUID → long polls open now

	releases releaseCache
	polls    pollCache

	closed    chan struct{} // closed by Close: long polls end
	closeOnce sync.Once

	reports  chan reportReq // to writeReports
	batching atomic.Bool    // writeReports runs

	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// New returns a server on the store.
func New(opts Options) *Server {
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.DefaultPollInterval <= 0 {
		opts.DefaultPollInterval = time.Minute
	}
	if opts.SeenFlushInterval <= 0 {
		opts.SeenFlushInterval = 2 * time.Second
	}
	return &Server{
		st: opts.Store, log: opts.Logger, now: opts.Now, opt: opts,
		hub:      newHub(),
		seen:     map[string]time.Time{},
		polling:  map[string]int{},
		releases: releaseCache{m: map[int64]reeve.FleetRelease{}},
		polls:    pollCache{m: map[string]*polled{}},
		closed:   make(chan struct{}),
		reports:  make(chan reportReq, maxReportBatch),
	}
}

// Start starts writing reports and last-seen times in the background,
// after reading which fleets are dependent (a failure to read them is
// logged, and the first poll reads them again).
func (s *Server) Start(ctx context.Context) {
	if err := s.linkFleets(ctx); err != nil {
		s.log.Warn("read the dependent fleets; the first poll tries again", "err", err)
	}
	ctx, s.cancel = context.WithCancel(ctx)
	s.wg.Add(2)
	go func() {
		defer s.wg.Done()
		s.writeReports(ctx)
	}()
	s.batching.Store(true)
	go func() {
		defer s.wg.Done()
		t := time.NewTicker(s.opt.SeenFlushInterval)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				if err := s.flushSeen(ctx); err != nil && ctx.Err() == nil {
					s.log.Warn("write last-seen times", "err", err)
				}
			}
		}
	}()
}

// Close stops the background work and writes pending last-seen times.
func (s *Server) Close() error {
	s.closeOnce.Do(func() { close(s.closed) })
	if s.cancel != nil {
		s.cancel()
	}
	s.wg.Wait()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return s.flushSeen(ctx)
}

// Store returns the server's store.
func (s *Server) Store() store.Store { return s.st }

// NewSecret returns a new key or token: 32 random bytes, hex.
func NewSecret() string {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		panic("reeve: no randomness: " + err.Error())
	}
	return hex.EncodeToString(b)
}

// Hash is how keys and tokens are stored: they are long random strings, so
// a plain SHA-256 is enough (no password stretching needed).
func Hash(secret string) string {
	sum := sha256.Sum256([]byte(secret))
	return hex.EncodeToString(sum[:])
}

func sameHash(a, b string) bool {
	return len(a) == len(b) && subtle.ConstantTimeCompare([]byte(a), []byte(b)) == 1
}

// releaseCache keeps parsed releases: they never change once pushed, and
// every poll needs one.
type releaseCache struct {
	mu sync.Mutex
	m  map[int64]reeve.FleetRelease
}

func (c *releaseCache) get(ctx context.Context, st store.Store, id int64) (reeve.FleetRelease, error) {
	c.mu.Lock()
	r, ok := c.m[id]
	c.mu.Unlock()
	if ok {
		return r, nil
	}
	r, err := st.ReleaseByID(ctx, id)
	if err != nil {
		return r, err
	}
	r.Compose = "" // not needed for targets; keep the cache small
	c.mu.Lock()
	if len(c.m) > 4096 {
		clear(c.m)
	}
	c.m[id] = r
	c.mu.Unlock()
	return r, nil
}
