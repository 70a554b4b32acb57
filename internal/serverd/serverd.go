// Package serverd is `reeve server` put together: the store, the log store,
// the fleet logic and the HTTP API, started and stopped as one. cmd/reeve,
// `reeve dev` and end-to-end tests run the same wiring.
package serverd

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"sync"
	"time"

	"reeve.dev/reeve/internal/httpx"
	"reeve.dev/reeve/internal/server"
	"reeve.dev/reeve/internal/serverapi"
	"reeve.dev/reeve/internal/store/sqlite"
)

// Config configures `reeve server`.
type Config struct {
	DataDir string
	Listen  string // default 127.0.0.1:48400
	// AdminToken, when set, is accepted as an operator token from now on.
	// Without it, the first start makes one (see FirstToken).
	AdminToken string
	Logger     *slog.Logger
	// Server tunes the fleet logic; Store, Logger and Logs are filled in.
	Server server.Options
	// Logs tunes the device logs (kept in <DataDir>/logs.db: how many
	// lines a device keeps, for how long); Store and Logger are filled
	// in. Zero values take the defaults.
	Logs server.LogOptions
}

// Main runs the server role.
type Main struct {
	cfg        Config
	log        *slog.Logger
	st         *sqlite.Store
	ls         *sqlite.LogStore
	logs       *server.Logs
	srv        *server.Server
	http       *http.Server
	ln         net.Listener
	firstToken string
	wg         sync.WaitGroup
	serveErr   chan error
	closeOnce  sync.Once
	closeErr   error
}

// New opens the database, makes sure an operator can get in, and binds the
// address.
func New(ctx context.Context, cfg Config) (*Main, error) {
	if cfg.DataDir == "" {
		return nil, errors.New("a data directory is required: pass --data DIR")
	}
	if cfg.Listen == "" {
		cfg.Listen = serverapi.DefaultAddress
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Logs.MaxLines < 0 || cfg.Logs.MaxAge < 0 {
		return nil, fmt.Errorf("keep a positive number of log lines for a positive time (got %d lines, %s)", cfg.Logs.MaxLines, cfg.Logs.MaxAge)
	}
	st, err := sqlite.New(ctx, filepath.Join(cfg.DataDir, "server.db"))
	if err != nil {
		return nil, err
	}
	ls, err := sqlite.NewLogStore(ctx, filepath.Join(cfg.DataDir, "logs.db"))
	if err != nil {
		st.Close()
		return nil, err
	}
	closeStores := func() { st.Close(); ls.Close() }
	lopts := cfg.Logs
	lopts.Store, lopts.Logger = ls, cfg.Logger
	logs := server.NewLogs(lopts)
	opts := cfg.Server
	opts.Store, opts.Logger, opts.Logs = st, cfg.Logger, logs
	srv := server.New(opts)
	first, err := srv.EnsureAdminToken(ctx, cfg.AdminToken)
	if err != nil {
		closeStores()
		return nil, err
	}
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		closeStores()
		return nil, fmt.Errorf("listen on %s: %w (another server running? pick another address with --listen)", cfg.Listen, err)
	}
	m := &Main{cfg: cfg, log: cfg.Logger, st: st, ls: ls, logs: logs, srv: srv, ln: ln, firstToken: first, serveErr: make(chan error, 1)}
	m.http = &http.Server{
		Handler:           serverapi.NewHandler(srv, cfg.Logger),
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
	}
	return m, nil
}

// Addr is the address the API listens on.
func (m *Main) Addr() string { return m.ln.Addr().String() }

// URL is the API's base URL.
func (m *Main) URL() string { return "http://" + m.Addr() }

// FirstToken is the operator token made at this first start, "" when
// there was one already or one was given.
func (m *Main) FirstToken() string { return m.firstToken }

// Server returns the fleet logic.
func (m *Main) Server() *server.Server { return m.srv }

// Run serves until ctx ends, then stops.
func (m *Main) Run(ctx context.Context) error {
	m.srv.Start(ctx)
	m.logs.Start(ctx)
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		if err := m.http.Serve(m.ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			m.serveErr <- err
		}
	}()
	m.log.Info("fleet server running", "api", m.URL(), "data", m.cfg.DataDir)
	var err error
	select {
	case <-ctx.Done():
	case err = <-m.serveErr:
		err = fmt.Errorf("serve API: %w", err)
	}
	return errors.Join(err, m.Close())
}

// Close stops serving (long polls and log followers end at once) and
// closes the databases. It may be called more than once.
func (m *Main) Close() error {
	m.closeOnce.Do(func() {
		var errs []error
		// The fleet logic first: it ends the long polls, so Shutdown
		// does not wait for them; then again once every request is done,
		// to write the last-seen times they left. The logs' Close ends
		// the followers likewise, and answers log lines still coming
		// with 503 (the agent sends them again).
		errs = append(errs, m.srv.Close(), m.logs.Close())
		if err := httpx.Shutdown(m.http, 5*time.Second, m.log); err != nil {
			errs = append(errs, err)
		}
		m.wg.Wait()
		errs = append(errs, m.srv.Close(), m.st.Close(), m.ls.Close())
		m.closeErr = errors.Join(errs...)
	})
	return m.closeErr
}
