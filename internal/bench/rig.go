package bench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"reeve.dev/reeve/internal/serverapi"
	"reeve.dev/reeve/internal/serverd"
)

// deviceRig is a fleet server in this process and a `reeve agent` child
// process registered to it: what the benchmarks that go through a whole
// fleet share. What it starts is undone by close, last first.
type deviceRig struct {
	ns         string // the agent's namespace on the engine
	binary     string // the reeve binary the agent runs from
	dockerHost string
	logger     *slog.Logger
	workDir    string

	op        *serverapi.Client
	uuid      string
	agent     *child
	agentAddr string
	cleanup   []func() error
}

// close undoes what was set up, last first; it runs when ctx has ended
// too.
func (b *deviceRig) close() error {
	var errs []error
	for i := len(b.cleanup) - 1; i >= 0; i-- {
		errs = append(errs, b.cleanup[i]())
	}
	b.cleanup = nil
	return errors.Join(errs...)
}

// startServer runs a fleet server in this process with a fleet and a
// provisioning key, and writes the device's config.json.
func (b *deviceRig) startServer(ctx context.Context, fleet string) error {
	dir := filepath.Join(b.workDir, "server")
	if err := os.Mkdir(dir, 0o700); err != nil {
		return err
	}
	log := b.logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	token := randomHex(32)
	m, err := serverd.New(ctx, serverd.Config{DataDir: dir, Listen: "127.0.0.1:0", AdminToken: token, Logger: log})
	if err != nil {
		return fmt.Errorf("start the fleet server: %w", err)
	}
	runCtx, stop := context.WithCancel(context.WithoutCancel(ctx))
	done := make(chan error, 1)
	go func() { done <- m.Run(runCtx) }() // owned by the cleanup below
	b.cleanup = append(b.cleanup, func() error {
		stop()
		if err := <-done; err != nil {
			return fmt.Errorf("fleet server: %w", err)
		}
		return nil
	})
	b.op = serverapi.NewClient(m.URL(), token, nil)
	if _, err := b.op.CreateFleet(ctx, serverapi.CreateFleetRequest{Name: fleet}); err != nil {
		return fmt.Errorf("create fleet %s: %w", fleet, err)
	}
	key, err := b.op.CreateKey(ctx, fleet, serverapi.CreateKeyRequest{Name: "bench"})
	if err != nil {
		return fmt.Errorf("create a provisioning key: %w", err)
	}
	b.uuid = randomHex(16)
	conf, err := json.Marshal(map[string]string{"apiEndpoint": m.URL(), "provisioningKey": key.Key, "uuid": b.uuid})
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(b.workDir, "config.json"), conf, 0o600)
}

// startAgent runs `reeve agent` as a child process and waits until its
// device is registered.
func (b *deviceRig) startAgent(ctx context.Context) error {
	addr, err := freeAddr()
	if err != nil {
		return err
	}
	b.agentAddr = addr
	args := []string{"agent", "--config", filepath.Join(b.workDir, "config.json"), "--data", filepath.Join(b.workDir, "agent"),
		"--listen", addr, "--namespace", b.ns, "--log-level", "warn"}
	if b.dockerHost != "" {
		args = append(args, "--docker-host", b.dockerHost)
	}
	if err := os.Mkdir(filepath.Join(b.workDir, "agent"), 0o700); err != nil {
		return err
	}
	c, err := startChild("reeve agent", b.binary, args, nil, filepath.Join(b.workDir, "agent.log"))
	if err != nil {
		return err
	}
	b.agent = c
	b.cleanup = append(b.cleanup, func() error { c.stop(); return nil })
	if err := waitHTTP(ctx, c, "http://"+addr+"/ping", ""); err != nil {
		return err
	}
	deadline := time.Now().Add(time.Minute)
	for {
		_, err := b.op.Device(ctx, b.uuid)
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the agent did not register within a minute: %w\n%s", err, c.logTail())
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case err := <-c.exited:
			c.exited <- err
			return fmt.Errorf("the agent exited: %v\n%s", err, c.logTail())
		case <-time.After(50 * time.Millisecond):
		}
	}
}
