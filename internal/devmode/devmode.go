// Package devmode is `reeve dev`: a local-mode agent on embedded defaults,
// with a registry in the process serving a small example app built from the
// reeve binary itself, so that a first run needs no server and no internet.
package devmode

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"reeve.dev/reeve"
	"reeve.dev/reeve/internal/agentd"
	"reeve.dev/reeve/internal/compose"
	"reeve.dev/reeve/internal/example"
	"reeve.dev/reeve/internal/localapi"
	"reeve.dev/reeve/internal/selfimage"
)

// Config configures `reeve dev`.
type Config struct {
	DataDir        string
	Listen         string // agent API; default 127.0.0.1:48484
	RegistryListen string // example registry; default 127.0.0.1:48485
	DockerHost     string
	// Binary is the static reeve binary packed into the example's image;
	// default: the running one.
	Binary string
	// Namespace separates this agent's containers from another agent's on
	// the same engine (tests).
	Namespace string
	Logger    *slog.Logger
	Out       io.Writer // where the next steps are printed
}

// Main runs `reeve dev`.
type Main struct {
	cfg      Config
	agent    *agentd.Main
	reg      *http.Server
	regLn    net.Listener
	closeOne sync.Once
}

// New prepares the agent and the example registry.
func New(ctx context.Context, cfg Config) (*Main, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Out == nil {
		cfg.Out = os.Stdout
	}
	if cfg.RegistryListen == "" {
		cfg.RegistryListen = "127.0.0.1:48485"
	}
	if cfg.DataDir == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			return nil, fmt.Errorf("no home directory for the default data directory: pass --data DIR")
		}
		cfg.DataDir = filepath.Join(home, ".reeve", "dev")
	}
	ln, err := net.Listen("tcp", cfg.RegistryListen)
	if err != nil {
		return nil, fmt.Errorf("listen for the example registry on %s: %w (pick another with --registry)", cfg.RegistryListen, err)
	}
	a, err := agentd.New(ctx, agentd.Config{DataDir: cfg.DataDir, Listen: cfg.Listen, Local: true,
		DockerHost: cfg.DockerHost, Logger: cfg.Logger, Namespace: cfg.Namespace})
	if err != nil {
		ln.Close()
		return nil, err
	}
	return &Main{cfg: cfg, agent: a, regLn: ln}, nil
}

// Addr returns the agent API's address.
func (m *Main) Addr() string { return m.agent.Addr() }

// Run serves the registry, installs the example on a first run and runs the
// agent until ctx ends.
func (m *Main) Run(ctx context.Context) error {
	m.reg = selfimage.Serve(m.regLn)
	file, err := m.installExample(ctx)
	if err != nil {
		m.Close()
		return err
	}
	m.printNext(file)
	err = m.agent.Run(ctx)
	return errors.Join(err, m.Close())
}

// installExample writes the example compose file and, when the device has
// no app yet, makes it the target.
func (m *Main) installExample(ctx context.Context) (string, error) {
	exe := m.cfg.Binary
	if exe == "" {
		var err error
		if exe, err = os.Executable(); err != nil {
			return "", fmt.Errorf("find the reeve binary: %w", err)
		}
	}
	image, err := selfimage.Push(ctx, m.regLn.Addr().String(), "reeve/example", exe, nil)
	if err != nil {
		return "", err
	}
	dir := filepath.Join(m.cfg.DataDir, "example")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	file := filepath.Join(dir, "docker-compose.yml")
	ag := m.agent.Agent()
	ts, _ := ag.Target()
	if len(ts[ag.UUID()].Apps) > 0 {
		// Not a first run: the agent resumes its target, with the example
		// image moved to this binary's (a rebuilt reeve has another).
		return file, m.refreshExampleImage(ctx, file, image)
	}
	data := example.ComposeFile(image)
	if err := os.WriteFile(file, data, 0o644); err != nil {
		return "", fmt.Errorf("write the example compose file: %w", err)
	}
	rel, err := compose.Load(ctx, data, compose.Options{ProjectName: "hello", WorkingDir: dir})
	if err != nil {
		return "", fmt.Errorf("the bundled example does not load: %w", err)
	}
	uuid, app := localapi.LocalApp("hello", rel, compose.Commit(data))
	if _, err := ag.SetTarget(ctx, localapi.WithApp(ts, ag.UUID(), ag.DeviceName(), uuid, app)); err != nil {
		return "", fmt.Errorf("set the example as target: %w", err)
	}
	return file, nil
}

// refreshExampleImage points every service that runs an example image of
// an earlier reeve binary at this binary's image, in the target and in the
// example compose file, keeping everything else the user changed.
func (m *Main) refreshExampleImage(ctx context.Context, file, image string) error {
	prefix := m.regLn.Addr().String() + "/reeve/example:"
	ag := m.agent.Agent()
	ts, _ := ag.Target()
	dev := ts[ag.UUID()]
	changed := map[string]bool{}
	apps := map[string]reeve.App{}
	for uuid, app := range dev.Apps {
		rels := map[string]reeve.Release{}
		for commit, rel := range app.Releases {
			svcs := map[string]reeve.Service{}
			for name, svc := range rel.Services {
				if strings.HasPrefix(svc.Image, prefix) && svc.Image != image {
					changed[svc.Image] = true
					svc.Image = image
				}
				svcs[name] = svc
			}
			rel.Services = svcs
			rels[commit] = rel
		}
		app.Releases = rels
		apps[uuid] = app
	}
	if len(changed) == 0 {
		return nil
	}
	dev.Apps = apps
	if _, err := ag.SetTarget(ctx, reeve.TargetState{ag.UUID(): dev}); err != nil {
		return fmt.Errorf("move the example to this reeve's image: %w", err)
	}
	if data, err := os.ReadFile(file); err == nil {
		text := string(data)
		for old := range changed {
			text = strings.ReplaceAll(text, old, image)
		}
		if err := os.WriteFile(file, []byte(text), 0o644); err != nil {
			return fmt.Errorf("update the example compose file: %w", err)
		}
	}
	return nil
}

func (m *Main) printNext(file string) {
	addr := m.agent.Addr()
	dev := ""
	if addr != localapi.DefaultAddress {
		dev = " --device " + addr
	}
	fmt.Fprintf(m.cfg.Out, `
reeve dev is running: device %s, agent API http://%s, data in %s

The example app "hello" (a worker counting into a volume, and a web page) is
being installed. From another terminal:

  reeve local status%s            watch it converge
  curl http://127.0.0.1:48480/          the example's web page
  reeve local apply%s -f %s
                                        after editing it: only what changed is updated

Ctrl-C stops the agent; containers keep running and the next start resumes.

`, m.agent.Agent().UUID(), addr, m.cfg.DataDir, dev, dev, file)
}

// Close stops the agent and the registry.
func (m *Main) Close() error {
	var err error
	m.closeOne.Do(func() {
		err = m.agent.Close()
		if m.reg != nil {
			// Closed, not shut down gracefully: the engine may hold a
			// connection open, and nothing here needs finishing.
			err = errors.Join(err, m.reg.Close())
		} else {
			err = errors.Join(err, m.regLn.Close())
		}
	})
	return err
}
