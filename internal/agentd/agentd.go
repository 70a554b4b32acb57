// Package agentd is `reeve agent` put together: the runtime, the agent and
// its local API, started and stopped as one. cmd/reeve and end-to-end tests
// run the same wiring.
package agentd

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"reeve.dev/reeve"
	"reeve.dev/reeve/internal/agent"
	"reeve.dev/reeve/internal/dependent"
	"reeve.dev/reeve/internal/fleetlink"
	"reeve.dev/reeve/internal/httpx"
	"reeve.dev/reeve/internal/localapi"
	"reeve.dev/reeve/internal/runtime"
	"reeve.dev/reeve/internal/runtime/docker"
)

// Config configures `reeve agent`.
type Config struct {
	DataDir string
	Listen  string // local API address; default 127.0.0.1:48484
	Local   bool   // local mode: the target is set through the local API
	// ConfigPath is the device's config.json (fleet server, provisioning
	// key, identity): required unless Local.
	ConfigPath   string
	DockerHost   string // "" = DOCKER_HOST or the default socket
	RegistryAuth string // a docker config.json with registry credentials
	DeviceName   string
	DeviceType   string
	// Namespace separates agents sharing one engine (tests); "" for the
	// one agent of a device.
	Namespace string
	Logger    *slog.Logger
	// Agent tunes the apply loop; DataDir, Runtime and Logger are filled in.
	Agent agent.Config
	// RebootCommand and ShutdownCommand are what POST /v1/reboot and
	// /v1/shutdown run (after checking update locks). Default: logind's
	// Reboot and PowerOff over the system D-Bus (busctl) where there is
	// one, else systemctl reboot and poweroff.
	RebootCommand   []string
	ShutdownCommand []string
	// Link tunes the fleet-server link; Config, DataDir, Agent, Logger and
	// APIPort are filled in.
	Link fleetlink.LinkConfig
	// Logs tunes collecting and shipping the device's log.
	Logs LogsConfig
	// Dependents tunes the dependent devices' hooks; Dir, Log, Export,
	// HookAddress, Provision and Logger are filled in.
	Dependents dependent.Config
}

// Main runs the agent role.
type Main struct {
	cfg       Config
	log       *slog.Logger
	rt        *docker.Runtime
	agent     *agent.Agent
	link      *fleetlink.Link // nil in local mode
	logs      *logPipeline
	deps      *dependent.Manager
	srv       *http.Server
	listener  net.Listener
	wg        sync.WaitGroup
	serveErr  chan error
	closeOnce sync.Once
}

// New prepares the agent: opens its database, connects the runtime (which may
// be down: the agent retries) and binds the API address.
func New(ctx context.Context, cfg Config) (*Main, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Listen == "" {
		cfg.Listen = localapi.DefaultAddress
	}
	if cfg.DataDir == "" {
		return nil, errors.New("a data directory is required: pass --data DIR")
	}
	var conf *fleetlink.Config
	if !cfg.Local {
		if cfg.ConfigPath == "" {
			return nil, errors.New("say where the device's fleet server is: pass --config config.json (from `reeve key create`), or --local to run without one")
		}
		var err error
		if conf, err = loadDeviceConfig(cfg.ConfigPath); err != nil {
			return nil, err
		}
	}
	creds, err := loadRegistryAuth(cfg.RegistryAuth)
	if err != nil {
		return nil, err
	}
	rt, err := docker.New(ctx, docker.Options{Host: cfg.DockerHost, Credentials: creds, Logger: cfg.Logger, Namespace: cfg.Namespace})
	if err != nil {
		return nil, fmt.Errorf("set up docker runtime: %w", err)
	}
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		rt.Close()
		return nil, fmt.Errorf("listen on %s: %w (another agent running? pick another address with --listen)", cfg.Listen, err)
	}
	logs, err := newLogPipeline(cfg, rt, conf != nil)
	if err != nil {
		ln.Close()
		rt.Close()
		return nil, err
	}
	var (
		a    *agent.Agent
		link *fleetlink.Link
	)
	dc := cfg.Dependents
	dc.Dir, dc.Logger, dc.Log = filepath.Join(cfg.DataDir, "dependent"), cfg.Logger, logs.add
	dc.Export = func(ctx context.Context, image string, w io.Writer) error {
		return rt.ExportDir(ctx, image, "/assets", w)
	}
	dc.HookAddress = func() string {
		ts, _ := a.Target()
		return dependent.HookAddress(ts[a.UUID()])
	}
	if conf != nil {
		dc.Provision = func(ctx context.Context, req dependent.ProvisionRequest) (reeve.Device, error) {
			return link.RegisterDependent(ctx, req)
		}
	}
	deps, err := dependent.Open(ctx, dc)
	if err != nil {
		ln.Close()
		logs.close()
		rt.Close()
		return nil, err
	}
	ac := cfg.Agent
	ac.DataDir, ac.Runtime, ac.Logger = cfg.DataDir, rt, cfg.Logger
	ac.SystemLog = logs.system
	ac.Dependents = deps
	ac.Observe = func(snap reeve.Snapshot) {
		ts, _ := a.Target()
		logs.observe(snap, ts[a.UUID()].Config)
	}
	ac.APIAddress = ln.Addr().String()
	if cfg.DeviceName != "" {
		ac.DeviceName = cfg.DeviceName
	}
	if cfg.DeviceType != "" {
		ac.DeviceType = cfg.DeviceType
	}
	if conf != nil {
		ac.UUID = conf.UUID
		if conf.DeviceType != "" && cfg.DeviceType == "" {
			ac.DeviceType = conf.DeviceType
		}
		if conf.DeviceName != "" && cfg.DeviceName == "" {
			ac.DeviceName = conf.DeviceName
		}
	}
	a, err = agent.New(ctx, ac)
	if err != nil {
		ln.Close()
		deps.Close()
		logs.close()
		rt.Close()
		return nil, err
	}
	opts := localapi.Options{Local: cfg.Local, Logger: cfg.Logger,
		Reboot:   hostCommand(cfg.RebootCommand, powerCommand("Reboot", exec.LookPath, fileExists)),
		Shutdown: hostCommand(cfg.ShutdownCommand, powerCommand("PowerOff", exec.LookPath, fileExists))}
	if conf != nil {
		lc := cfg.Link
		lc.Config, lc.DataDir, lc.Agent, lc.Logger = conf, cfg.DataDir, a, cfg.Logger
		lc.APIPort = ln.Addr().(*net.TCPAddr).Port
		lc.Dependents = deps.Reports
		if link, err = fleetlink.New(lc); err != nil {
			ln.Close()
			a.Close()
			deps.Close()
			logs.close()
			rt.Close()
			return nil, err
		}
		logs.startShipping(cfg.Logs, link)
		opts.Link, opts.LinkHealthy, opts.LocalMode = link.Status, link.Healthy, link.LocalMode
		opts.Update = func(bool) { link.Poke() }
		opts.Tags, opts.PatchTags = link.Tags, link.PatchTags
	}
	opts.Logs, opts.LogStatus = logs.tail, logs.status
	opts.Dependents = deps
	api := localapi.New(a, opts)
	m := &Main{cfg: cfg, log: cfg.Logger, rt: rt, agent: a, link: link, logs: logs, deps: deps, listener: ln, serveErr: make(chan error, 1),
		srv: &http.Server{Handler: api, ReadHeaderTimeout: 10 * time.Second}}
	return m, nil
}

// Addr returns the address the API listens on.
func (m *Main) Addr() string { return m.listener.Addr().String() }

// DataDir returns the agent's data directory.
func (m *Main) DataDir() string { return m.cfg.DataDir }

// Agent returns the agent.
func (m *Main) Agent() *agent.Agent { return m.agent }

// Run starts the agent and serves the API until ctx ends, then stops both.
func (m *Main) Run(ctx context.Context) error {
	m.logs.start(ctx)
	if err := m.agent.Start(ctx); err != nil {
		return errors.Join(err, m.Close())
	}
	m.deps.Start(ctx)
	if m.link != nil {
		if err := m.link.Start(ctx); err != nil {
			return errors.Join(err, m.Close())
		}
	}
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		if err := m.srv.Serve(m.listener); err != nil && !errors.Is(err, http.ErrServerClosed) {
			m.serveErr <- err
		}
	}()
	server := ""
	if m.link != nil {
		server = m.link.Status().Server
	}
	m.log.Info("agent running", "uuid", m.agent.UUID(), "api", "http://"+m.Addr(), "runtime", m.rt.Name(), "local", m.cfg.Local, "server", server, "data", m.cfg.DataDir)
	var err error
	select {
	case <-ctx.Done():
	case err = <-m.serveErr:
		err = fmt.Errorf("serve local API: %w", err)
	}
	return errors.Join(err, m.Close())
}

// Close stops serving, stops the agent and releases the runtime. It may be
// called more than once.
func (m *Main) Close() error {
	var errs []error
	m.closeOnce.Do(func() {
		if err := httpx.Shutdown(m.srv, 5*time.Second, m.log); err != nil {
			errs = append(errs, err)
		}
		m.wg.Wait()
		if m.link != nil {
			errs = append(errs, m.link.Close())
		}
		// The agent before the logs, so that its last lines are kept.
		errs = append(errs, m.agent.Close(), m.deps.Close(), m.logs.close(), m.rt.Close())
	})
	return errors.Join(errs...)
}

// loadRegistryAuth reads registry credentials from a docker config.json
// ({"auths": {"host": {"auth": base64("user:pass")}}} or with username and
// password fields).
func loadRegistryAuth(path string) (map[string]runtime.Auth, error) {
	if path == "" {
		return nil, nil
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read registry credentials: %w", err)
	}
	var cfg struct {
		Auths map[string]struct {
			Auth     string `json:"auth"`
			Username string `json:"username"`
			Password string `json:"password"`
		} `json:"auths"`
	}
	if err := json.Unmarshal(b, &cfg); err != nil {
		return nil, fmt.Errorf("read registry credentials %s: %w (expected a docker config.json with an \"auths\" object)", path, err)
	}
	out := map[string]runtime.Auth{}
	for host, a := range cfg.Auths {
		user, pass := a.Username, a.Password
		if a.Auth != "" {
			dec, err := base64.StdEncoding.DecodeString(a.Auth)
			if err != nil {
				return nil, fmt.Errorf("registry credentials for %s: auth is not base64 of user:password", host)
			}
			u, p, ok := strings.Cut(string(dec), ":")
			if !ok {
				return nil, fmt.Errorf("registry credentials for %s: auth is not base64 of user:password", host)
			}
			user, pass = u, p
		}
		host = strings.TrimPrefix(strings.TrimPrefix(host, "https://"), "http://")
		out[strings.TrimSuffix(host, "/")] = runtime.Auth{Username: user, Password: pass}
	}
	return out, nil
}

// loadDeviceConfig reads config.json and gives the device its identity
// (UUID and key) when it has none yet, written back before anything is
// sent, so a power cut cannot make it register under two identities.
func loadDeviceConfig(path string) (*fleetlink.Config, error) {
	conf, err := fleetlink.LoadConfig(path)
	if err != nil {
		return nil, err
	}
	if _, err := conf.EnsureIdentity(); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return conf, nil
}

// logindBus is the system bus socket logind listens on.
const logindBus = "/run/dbus/system_bus_socket"

// powerCommand is the default command for a logind power method (Reboot,
// PowerOff): a call to logind over the system D-Bus where there is one
// (busctl), else systemctl, which asks systemd.
func powerCommand(method string, lookPath func(string) (string, error), exists func(string) bool) []string {
	if _, err := lookPath("busctl"); err == nil && exists(logindBus) {
		return []string{"busctl", "call", "org.freedesktop.login1", "/org/freedesktop/login1",
			"org.freedesktop.login1.Manager", method, "b", "false"}
	}
	verb := map[string]string{"Reboot": "reboot", "PowerOff": "poweroff"}[method]
	return []string{"systemctl", verb}
}

func fileExists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

// hostCommand returns a function that runs command (or the default) on the
// host and says what it printed when it fails.
func hostCommand(command []string, def []string) func(context.Context) error {
	if len(command) == 0 {
		command = def
	}
	return func(ctx context.Context) error {
		out, err := exec.CommandContext(ctx, command[0], command[1:]...).CombinedOutput()
		if err != nil {
			return fmt.Errorf("%s: %w: %s", strings.Join(command, " "), err, strings.TrimSpace(string(out)))
		}
		return nil
	}
}
