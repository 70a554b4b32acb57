// Package serverdtest runs a real fleet server (SQLite in a temporary
// directory, HTTP on a loopback port) for the length of a test.
package serverdtest

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"testing"
	"time"

	"reeve.dev/reeve/internal/serverd"
)

// Start starts a server that accepts the operator token and stops it when
// the test ends, failing the test if it stopped with an error.
func Start(t testing.TB, token string, log *slog.Logger) *serverd.Main {
	t.Helper()
	m, _ := StartConfig(t, serverd.Config{AdminToken: token, Logger: log})
	return m
}

// StartConfig starts a server on cfg, in a temporary directory unless
// cfg.DataDir is set and on a loopback port unless cfg.Listen is. stop
// stops it and returns what it stopped with (more calls return the same);
// the end of the test stops it too, failing the test on an error.
func StartConfig(t testing.TB, cfg serverd.Config) (m *serverd.Main, stop func() error) {
	t.Helper()
	if cfg.DataDir == "" {
		cfg.DataDir = t.TempDir()
	}
	if cfg.Listen == "" {
		cfg.Listen = "127.0.0.1:0"
	}
	ctx, cancel := context.WithCancel(context.Background())
	m, err := serverd.New(ctx, cfg)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	var (
		once    sync.Once
		stopErr error
	)
	stop = func() error {
		once.Do(func() {
			cancel()
			select {
			case stopErr = <-done:
			case <-time.After(30 * time.Second):
				stopErr = errors.New("the fleet server did not stop within 30 s")
			}
		})
		return stopErr
	}
	t.Cleanup(func() {
		if err := stop(); err != nil {
			t.Errorf("fleet server stopped with %v", err)
		}
	})
	return m, stop
}
