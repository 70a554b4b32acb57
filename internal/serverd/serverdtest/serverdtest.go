// Package serverdtest runs a real fleet server (SQLite in a temporary
// directory, HTTP on a loopback port) for the length of a test.
package serverdtest

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"reeve.dev/reeve/internal/serverd"
)

// Start starts a server that accepts the operator token and stops it when
// the test ends, failing the test if it stopped with an error.
func Start(t testing.TB, token string, log *slog.Logger) *serverd.Main {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	m, err := serverd.New(ctx, serverd.Config{DataDir: t.TempDir(), Listen: "127.0.0.1:0", AdminToken: token, Logger: log})
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("fleet server stopped with %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Error("fleet server did not stop within 30 s")
		}
	})
	return m
}
