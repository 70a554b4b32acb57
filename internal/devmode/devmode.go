// Package devmode is `reeve dev`: a fleet server and an agent on embedded
// defaults, with a fleet the agent joins like any device, and a registry in
// the process serving a small example app built from the reeve binary
// itself, so that a first run needs no setup and no internet.
package devmode

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"reeve.dev/reeve"
	"reeve.dev/reeve/internal/agentd"
	"reeve.dev/reeve/internal/atomicfile"
	"reeve.dev/reeve/internal/clicfg"
	"reeve.dev/reeve/internal/example"
	"reeve.dev/reeve/internal/fleetlink"
	"reeve.dev/reeve/internal/gateway"
	"reeve.dev/reeve/internal/gateway/driver"
	"reeve.dev/reeve/internal/gateway/driver/sim"
	"reeve.dev/reeve/internal/localapi"
	"reeve.dev/reeve/internal/selfimage"
	"reeve.dev/reeve/internal/server"
	"reeve.dev/reeve/internal/serverd"
)

// Config configures `reeve dev`.
type Config struct {
	DataDir        string
	Listen         string // agent API; default 127.0.0.1:48484
	ServerListen   string // fleet server; default 127.0.0.1:48400
	RegistryListen string // example registry; default 127.0.0.1:48485
	GatewayListen  string // reeve gateway's API and hooks; default 127.0.0.1:1337
	// Boards is how many simulated microcontrollers the gateway drives;
	// default 5.
	Boards     int
	DockerHost string
	// Binary is the static reeve binary packed into the example's image;
	// default: the running one.
	Binary string
	// Namespace separates this agent's containers from another agent's on
	// the same engine (tests).
	Namespace string
	Logger    *slog.Logger
	Out       io.Writer // where the next steps are printed
}

// The fleet `reeve dev` makes and its device joins, and the dependent
// fleet of the simulated boards its gateway carries.
const (
	fleetName   = "hello"
	boardsFleet = "hello-boards"
)

// Main runs `reeve dev`.
type Main struct {
	cfg      Config
	server   *serverd.Main
	agent    *agentd.Main
	gateway  *gateway.Gateway
	stopGW   context.CancelFunc
	reg      *http.Server
	regLn    net.Listener
	loggedIn string // where the CLI login was written; "" when not
	wg       sync.WaitGroup
	closeOne sync.Once
}

// New prepares the fleet server (with a fleet and a provisioning key on a
// first run), the agent provisioned from it, and the example registry.
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
	if cfg.GatewayListen == "" {
		cfg.GatewayListen = "127.0.0.1:1337"
	}
	if cfg.Boards <= 0 {
		cfg.Boards = 5
	}
	if cfg.DataDir == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			return nil, fmt.Errorf("no home directory for the default data directory: pass --data DIR")
		}
		cfg.DataDir = filepath.Join(home, ".reeve", "dev")
	}
	token, err := devToken(filepath.Join(cfg.DataDir, "admin-token"))
	if err != nil {
		return nil, err
	}
	srv, err := serverd.New(ctx, serverd.Config{DataDir: filepath.Join(cfg.DataDir, "server"), Listen: cfg.ServerListen,
		AdminToken: token, Logger: cfg.Logger.With("role", "server")})
	if err != nil {
		return nil, err
	}
	m := &Main{cfg: cfg, server: srv}
	confPath := filepath.Join(cfg.DataDir, "agent", "config.json")
	if err := m.provision(ctx, confPath); err != nil {
		srv.Close()
		return nil, err
	}
	if m.regLn, err = net.Listen("tcp", cfg.RegistryListen); err != nil {
		srv.Close()
		return nil, fmt.Errorf("listen for the example registry on %s: %w (pick another with --registry)", cfg.RegistryListen, err)
	}
	m.agent, err = agentd.New(ctx, agentd.Config{DataDir: filepath.Join(cfg.DataDir, "agent"), Listen: cfg.Listen, ConfigPath: confPath,
		DockerHost: cfg.DockerHost, Logger: cfg.Logger.With("role", "agent"), Namespace: cfg.Namespace})
	if err != nil {
		m.regLn.Close()
		srv.Close()
		return nil, err
	}
	boards := strconv.Itoa(cfg.Boards)
	m.gateway, err = gateway.New(ctx, gateway.Config{AgentAddress: "http://" + m.agent.Addr(), AgentKey: m.agent.Agent().APIKey(),
		DataDir: filepath.Join(cfg.DataDir, "gateway"), Listen: cfg.GatewayListen, LoopDelay: 2 * time.Second,
		LockFile: filepath.Join(cfg.DataDir, "gateway", "updates.lock"),
		Drivers:  map[string]driver.Factory{"sim": sim.New}, Driver: "sim",
		Settings: map[string]map[string]string{"sim": {"devices": boards, "prefix": "board-", "chunk_delay": "20ms"}},
		Logger:   cfg.Logger.With("role", "gateway")})
	if err != nil {
		m.agent.Close()
		m.regLn.Close()
		srv.Close()
		return nil, fmt.Errorf("%w (pick another address with --gateway-listen)", err)
	}
	// The agent's hooks go to this gateway.
	if _, err := srv.Server().SetVar(ctx, reeve.VarConfig, server.VarScope{Device: m.agent.Agent().UUID()},
		"REEVE_DEPENDENT_DEVICES_HOOK_ADDRESS", "http://"+m.gateway.Addr()); err != nil && reeve.ErrorCode(err) != reeve.CodeNotFound {
		cfg.Logger.Warn("cannot point the agent's hooks at the gateway: it hears of new releases at its next round", "err", err)
	}
	return m, nil
}

// devToken returns the dev server's operator token, made on the first run.
func devToken(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err == nil && len(strings.TrimSpace(string(b))) >= 16 {
		return strings.TrimSpace(string(b)), nil
	}
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return "", fmt.Errorf("read the dev server's token: %w", err)
	}
	token := server.NewSecret()
	if err := atomicfile.Write(path, []byte(token+"\n"), 0o600); err != nil {
		return "", fmt.Errorf("save the dev server's token: %w", err)
	}
	return token, nil
}

// provision makes the fleet and the device's config.json on a first run:
// the agent registers with its provisioning key like any device.
func (m *Main) provision(ctx context.Context, confPath string) error {
	if _, err := os.Stat(confPath); err == nil {
		// Provisioned before; the server may listen elsewhere this time.
		conf, err := fleetlink.LoadConfig(confPath)
		if err != nil {
			return err
		}
		if conf.APIEndpoint == m.server.URL() {
			return nil
		}
		conf.APIEndpoint = m.server.URL()
		return conf.Save()
	}
	s := m.server.Server()
	if _, err := s.CreateFleet(ctx, server.CreateFleetRequest{Name: fleetName, DeviceType: reeve.DeviceTypeAny}); err != nil && reeve.ErrorCode(err) != reeve.CodeConflict {
		return fmt.Errorf("create the %s fleet: %w", fleetName, err)
	}
	if _, err := s.CreateFleet(ctx, server.CreateFleetRequest{Name: boardsFleet, DeviceType: reeve.DeviceTypeAny, Parent: fleetName}); err != nil && reeve.ErrorCode(err) != reeve.CodeConflict {
		return fmt.Errorf("create the %s fleet: %w", boardsFleet, err)
	}
	key, _, err := s.CreateProvisioningKey(ctx, fleetName, "reeve dev", time.Time{})
	if err != nil {
		return fmt.Errorf("make a provisioning key: %w", err)
	}
	conf, _ := json.MarshalIndent(map[string]string{"apiEndpoint": m.server.URL(), "provisioningKey": key}, "", "  ")
	return atomicfile.Write(confPath, append(conf, '\n'), 0o600)
}

// Addr returns the agent API's address.
func (m *Main) Addr() string { return m.agent.Addr() }

// APIKey returns the agent's device-wide API key.
func (m *Main) APIKey() string { return m.agent.Agent().APIKey() }

// ServerURL returns the fleet server's URL.
func (m *Main) ServerURL() string { return m.server.URL() }

// Run serves the registry and the fleet server, pushes the example on a
// first run and runs the agent until ctx ends.
func (m *Main) Run(ctx context.Context) error {
	m.reg = selfimage.Serve(m.regLn)
	srvErr := make(chan error, 1)
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		srvErr <- m.server.Run(ctx)
	}()
	file, err := m.pushExample(ctx)
	if err == nil {
		err = m.pushFirmware(ctx)
	}
	if err != nil {
		return errors.Join(err, m.Close())
	}
	m.login()
	m.printNext(file)
	gctx, stop := context.WithCancel(ctx)
	m.stopGW = stop
	gwErr := make(chan error, 1)
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		gwErr <- m.gateway.Run(gctx)
	}()
	err = m.agent.Run(ctx)
	stop()
	return errors.Join(err, <-gwErr, m.Close())
}

// pushFirmware gives the boards' fleet its first release on a first run:
// an image whose /assets holds a small firmware file.
func (m *Main) pushFirmware(ctx context.Context) error {
	s := m.server.Server()
	f, err := s.Fleet(ctx, boardsFleet)
	if reeve.ErrorCode(err) == reeve.CodeNotFound {
		return nil // made by an older reeve dev: no boards
	}
	if err != nil {
		return err
	}
	if _, err := s.Store().LatestRelease(ctx, f.ID); reeve.ErrorCode(err) != reeve.CodeNotFound {
		return err // the boards have a release already (nil), or the store failed
	}
	image, err := selfimage.PushFiles(ctx, m.regLn.Addr().String(), "reeve/board-firmware", map[string][]byte{
		"/assets/firmware.bin": []byte("reeve dev example firmware 1\n"),
	})
	if err != nil {
		return err
	}
	if _, _, err := s.Push(ctx, boardsFleet, []byte("services:\n  firmware:\n    image: "+image+"\n")); err != nil {
		return fmt.Errorf("push the boards' firmware: %w", err)
	}
	return nil
}

// pushExample writes the example compose file and pushes it to the fleet
// when the fleet has no release yet, or when its newest is the example
// with the image of an earlier reeve binary (a rebuilt reeve has another).
func (m *Main) pushExample(ctx context.Context) (string, error) {
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
	file := filepath.Join(dir, "docker-compose.yml")
	s := m.server.Server()
	f, err := s.Fleet(ctx, fleetName)
	if err != nil {
		return "", err
	}
	var data []byte
	latest, err := s.Store().LatestRelease(ctx, f.ID)
	switch {
	case reeve.ErrorCode(err) == reeve.CodeNotFound:
		data = example.ComposeFile(image)
	case err != nil:
		return "", err
	default:
		prefix := m.regLn.Addr().String() + "/reeve/example:"
		old := exampleImages(latest.Release, prefix, image)
		if len(old) == 0 {
			return file, nil // the user's own release, or this binary's example
		}
		text := latest.Compose
		for _, ref := range old {
			text = strings.ReplaceAll(text, ref, image)
		}
		data = []byte(text)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	if err := os.WriteFile(file, data, 0o644); err != nil {
		return "", fmt.Errorf("write the example compose file: %w", err)
	}
	if _, _, err := s.Push(ctx, fleetName, data); err != nil {
		return "", fmt.Errorf("push the example: %w", err)
	}
	return file, nil
}

// exampleImages lists the example images of other reeve binaries that rel
// runs.
func exampleImages(rel reeve.Release, prefix, current string) []string {
	var out []string
	for _, svc := range rel.Services {
		if strings.HasPrefix(svc.Image, prefix) && svc.Image != current && !slices.Contains(out, svc.Image) {
			out = append(out, svc.Image)
		}
	}
	return out
}

// login points the CLI at the dev server, unless it is logged in to
// another server: that login is the user's and is kept.
func (m *Main) login() {
	saved, err := clicfg.Load()
	if err != nil || (saved.Server != "" && clicfg.NormalizeServer(saved.Server) != clicfg.NormalizeServer(m.server.URL())) {
		return
	}
	token, err := devToken(filepath.Join(m.cfg.DataDir, "admin-token"))
	if err != nil {
		return
	}
	if path, err := clicfg.Save(clicfg.Config{Server: m.server.URL(), Token: token}); err == nil {
		m.loggedIn = path
	}
}

func (m *Main) printNext(file string) {
	addr := m.agent.Addr()
	dev := ""
	if addr != localapi.DefaultAddress {
		dev = " --device " + addr
	}
	login := "The CLI is logged in to it."
	if m.loggedIn == "" {
		token, _ := devToken(filepath.Join(m.cfg.DataDir, "admin-token"))
		login = fmt.Sprintf("The CLI is logged in elsewhere; to use this server:\n  reeve login %s --token %s", m.server.URL(), token)
	}
	fmt.Fprintf(m.cfg.Out, `
reeve dev is running: fleet server %s, device %s in fleet %q,
agent API http://%s, data in %s. %s

The example app (a worker counting into a volume, and a web page) is being
installed from the fleet. From another terminal:

  reeve devices                         the device, online, and what it runs
  reeve logs %s -f                  its log: the services' output and the agent's own lines
  reeve local status%s            the agent's own view
  curl http://127.0.0.1:48480/          the example's web page
  reeve push --fleet %s -f %s
                                        after editing it: only what changed is updated
  reeve env set GREETING=hi --fleet %s --service web
                                        a fleet variable: the web service gets it
  reeve devices --fleet %s          %d simulated boards behind this device, updated
                                        by reeve gateway (http://%s/v1/devices)

Ctrl-C stops the server and the agent; containers keep running and the next
start resumes.

`, m.server.URL(), m.agent.Agent().UUID(), fleetName, addr, m.cfg.DataDir, login, shortUUID(m.agent.Agent().UUID()), dev, fleetName, file, fleetName,
		boardsFleet, m.cfg.Boards, m.gateway.Addr())
}

// shortUUID is the prefix of a UUID the CLI takes for it.
func shortUUID(uuid string) string { return uuid[:min(7, len(uuid))] }

// Close stops the agent, the server and the registry.
func (m *Main) Close() error {
	var err error
	m.closeOne.Do(func() {
		if m.stopGW != nil {
			m.stopGW() // Run waits for the gateway
		} else {
			err = m.gateway.Close()
		}
		err = errors.Join(err, m.agent.Close(), m.server.Close())
		m.wg.Wait()
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
