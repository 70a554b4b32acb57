// Package dependent keeps the dependent devices a gateway's agent carries:
// microcontrollers that cannot run an agent. It stores their targets (from
// the gateway's target state) and what the gateway application reports of
// them, provisions them through the fleet server, takes their log lines,
// serves their firmware (assets.go) and tells the gateway application when
// a device must change (hooks.go).
//
// Its state is in its own SQLite file, <dir>/dependent.db; firmware tars
// are under <dir>/assets.
package dependent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"

	"reeve.dev/reeve"
	"reeve.dev/reeve/internal/engine"
	"reeve.dev/reeve/internal/runtime"
)

// ProvisionRequest is what the fleet server needs to provision a
// dependent device.
type ProvisionRequest struct {
	AppID      int64
	DeviceType string
	LocalID    string
	Name       string
}

// Config configures a Manager. Zero values get the documented defaults.
type Config struct {
	// Dir holds dependent.db and the firmware tars. Required.
	Dir string
	// Provision provisions a device through the fleet server. Nil: the
	// agent has no fleet server, and provisioning answers unavailable.
	Provision func(ctx context.Context, req ProvisionRequest) (reeve.Device, error)
	// Log takes a dependent device's log line (Device set). Required.
	Log func(reeve.LogLine)
	// Export writes a tar of the /assets directory of an image on the
	// device. Required.
	Export func(ctx context.Context, image string, w io.Writer) error
	// HookAddress returns where hooks go (see hooks.go). Nil: the default.
	HookAddress func() string
	// HookTimeout bounds one hook request. Default 10 s.
	HookTimeout time.Duration
	// HookInterval is the least time between two hooks about one device.
	// Default 30 s.
	HookInterval time.Duration
	// HTTPClient sends hooks. Default: a client of its own.
	HTTPClient *http.Client
	Logger     *slog.Logger
	Now        func() time.Time
}

func (c *Config) defaults() error {
	if c.Dir == "" {
		return errors.New("dependent: a directory is required")
	}
	if c.Log == nil || c.Export == nil {
		return errors.New("dependent: Log and Export are required")
	}
	if c.HookAddress == nil {
		c.HookAddress = func() string { return "" }
	}
	if c.HookTimeout <= 0 {
		c.HookTimeout = DefaultHookTimeout
	}
	if c.HookInterval <= 0 {
		c.HookInterval = DefaultHookInterval
	}
	if c.HTTPClient == nil {
		c.HTTPClient = &http.Client{}
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	return nil
}

// Manager keeps the dependent devices. Create it with Open, then Start
// (hooks); Close stops what Start started and closes the database.
type Manager struct {
	cfg    Config
	log    *slog.Logger
	st     *store
	assets *AssetCache

	mu   sync.Mutex // one change of a device at a time: read, merge, write
	wake chan struct{}

	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// Open opens (creating) the store in cfg.Dir.
func Open(ctx context.Context, cfg Config) (*Manager, error) {
	if err := cfg.defaults(); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("create %s: %w", cfg.Dir, err)
	}
	st, err := openStore(ctx, cfg.Dir)
	if err != nil {
		return nil, err
	}
	m := &Manager{cfg: cfg, log: cfg.Logger, st: st, wake: make(chan struct{}, 1)}
	m.assets = NewAssetCache(filepath.Join(cfg.Dir, "assets"), cfg.Export)
	m.assets.Logger = cfg.Logger
	m.assets.Keep = m.targetCommits
	return m, nil
}

// Start starts sending hooks.
func (m *Manager) Start(ctx context.Context) {
	ctx, m.cancel = context.WithCancel(ctx)
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		m.hookLoop(ctx)
	}()
}

// Close stops the hooks and closes the database.
func (m *Manager) Close() error {
	if m.cancel != nil {
		m.cancel()
	}
	m.wg.Wait()
	return m.st.close()
}

// poke makes the hook loop look now.
func (m *Manager) poke() {
	select {
	case m.wake <- struct{}{}:
	default:
	}
}

// ---- what the apply loop calls (agent.Dependents) ----

// PlanState returns what is stored of each dependent app.
func (m *Manager) PlanState(ctx context.Context) (map[string]engine.DependentState, error) {
	return m.st.planState(ctx)
}

// UpdateTargets stores an app's target and its devices'.
func (m *Manager) UpdateTargets(ctx context.Context, app reeve.DependentApp) error {
	m.mu.Lock()
	marked, err := m.st.updateTargets(ctx, app, m.cfg.Now())
	m.mu.Unlock()
	if err != nil {
		return err
	}
	m.log.Info("dependent targets stored", "app", app.Name, "commit", app.Commit, "devices", len(app.Devices), "marked_for_deletion", marked)
	if marked > 0 {
		m.poke()
	}
	return nil
}

// ReleaseHooks lets hooks go out for the app's stored target.
func (m *Manager) ReleaseHooks(ctx context.Context, appUUID, hash string) error {
	if err := m.st.releaseHooks(ctx, appUUID, hash); err != nil {
		return err
	}
	m.poke()
	return nil
}

// RemoveApp forgets an app, its devices and its firmware.
func (m *Manager) RemoveApp(ctx context.Context, appUUID string) error {
	m.mu.Lock()
	id, err := m.st.removeApp(ctx, appUUID)
	m.mu.Unlock()
	if err != nil {
		return err
	}
	if id > 0 {
		if err := m.assets.RemoveApp(id); err != nil {
			m.log.Warn("could not remove the firmware of a removed dependent app", "app", appUUID, "err", err)
		}
	}
	m.log.Info("dependent app removed", "app", appUUID)
	return nil
}

// ---- what the API calls ----

// Apps lists the dependent apps.
func (m *Manager) Apps(ctx context.Context) ([]App, error) { return m.st.apps(ctx) }

// Devices lists the dependent devices, those marked for deletion too.
func (m *Manager) Devices(ctx context.Context) ([]Device, error) { return m.st.devices(ctx) }

// Device returns one device: not_found when unknown, gone when it is
// marked for deletion.
func (m *Manager) Device(ctx context.Context, uuid string) (Device, error) {
	d, err := m.st.device(ctx, uuid)
	if err != nil {
		return d, err
	}
	if d.MarkedForDeletion {
		return d, reeve.Errorf(reeve.CodeGone, "dependent device %s was removed from the fleet: it is being deleted", uuid)
	}
	return d, nil
}

// Provision provisions a device of a dependent app through the fleet
// server and records it.
func (m *Manager) Provision(ctx context.Context, req ProvisionRequest) (Device, error) {
	if m.cfg.Provision == nil {
		return Device{}, reeve.Errorf(reeve.CodeUnavailable, "this agent has no fleet server: dependent devices are provisioned through one")
	}
	app, err := m.st.appByID(ctx, req.AppID)
	if err != nil {
		return Device{}, err
	}
	dev, err := m.cfg.Provision(ctx, req)
	if err != nil {
		return Device{}, err
	}
	m.mu.Lock()
	err = m.st.addDevice(ctx, Device{UUID: dev.UUID, AppUUID: app.UUID, LocalID: dev.LocalID, Name: dev.Name, DeviceType: dev.DeviceType}, m.cfg.Now())
	m.mu.Unlock()
	if err != nil {
		return Device{}, err
	}
	m.log.Info("dependent device provisioned", "uuid", dev.UUID, "app", app.Name, "local_id", dev.LocalID)
	return m.st.device(ctx, dev.UUID)
}

// Patch is a change the gateway application reports of a device; nil
// fields are unchanged.
type Patch struct {
	Status      *string
	IsOnline    *bool
	Commit      *string
	ReleaseID   *int64
	Environment map[string]string
	Config      map[string]string
}

// Empty reports whether the patch changes nothing.
func (p Patch) Empty() bool {
	return p.Status == nil && p.IsOnline == nil && p.Commit == nil && p.ReleaseID == nil && p.Environment == nil && p.Config == nil
}

// Update applies what the gateway application reports of a device. The
// fleet server hears of it with the agent's next report.
func (m *Manager) Update(ctx context.Context, uuid string, p Patch) (Device, error) {
	if p.Empty() {
		return Device{}, reeve.Errorf(reeve.CodeInvalid, "nothing to update: send one or more of status, is_online, commit, releaseId, environment, config")
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	d, err := m.Device(ctx, uuid)
	if err != nil {
		return d, err
	}
	if p.Status != nil {
		d.Status = *p.Status
	}
	if p.IsOnline != nil {
		d.IsOnline = *p.IsOnline
	}
	if d.IsOnline {
		d.LastSeen = m.cfg.Now().UTC()
	}
	if p.Commit != nil {
		d.Commit = *p.Commit
	}
	if p.ReleaseID != nil {
		d.ReleaseID = *p.ReleaseID
	}
	if p.Environment != nil {
		d.Environment = p.Environment
	}
	if p.Config != nil {
		d.Config = p.Config
	}
	if err := m.st.updateCurrent(ctx, d); err != nil {
		return d, err
	}
	m.poke() // it may now run its target, or still not
	return d, nil
}

// LogEntry is a line a dependent device logged.
type LogEntry struct {
	Message   string
	Timestamp time.Time // zero: now
	System    bool
}

// Log takes log lines of a device for the device's log.
func (m *Manager) Log(ctx context.Context, uuid string, lines []LogEntry) error {
	if _, err := m.Device(ctx, uuid); err != nil {
		return err
	}
	now := m.cfg.Now().UTC()
	for _, l := range lines {
		ts := l.Timestamp
		if ts.IsZero() {
			ts = now
		}
		m.cfg.Log(reeve.LogLine{Device: uuid, Timestamp: ts, System: l.System, Message: reeve.TruncateLogMessage(l.Message)})
	}
	return nil
}

// Assets opens a tar of the firmware of an app's release: the /assets
// directory of its image, built once per commit. commit must be one the
// app's target holds (its release's, or a pinned device's).
func (m *Manager) Assets(ctx context.Context, appID int64, commit string) (*os.File, error) {
	app, err := m.st.appByID(ctx, appID)
	if err != nil {
		return nil, err
	}
	image := ""
	if app.Commit == commit {
		image = app.Image
	} else {
		devs, err := m.st.devices(ctx)
		if err != nil {
			return nil, err
		}
		for _, d := range devs {
			if d.AppUUID == app.UUID && d.TargetCommit == commit && d.targetImage != "" {
				image = d.targetImage
				break
			}
		}
	}
	if image == "" {
		return nil, reeve.Errorf(reeve.CodeNotFound, "dependent app %d has no release %q on this device (its release is %q)", appID, commit, app.Commit)
	}
	f, err := m.assets.Open(ctx, appID, commit, image)
	if errors.Is(err, runtime.ErrImageNotPresent) {
		// The target is stored as soon as it arrives; its image follows.
		return nil, reeve.Errorf(reeve.CodeUnavailable, "the firmware of release %s is still being downloaded to this device: try again shortly", commit)
	}
	return f, err
}

// targetCommits returns the commits an app's stored target holds: its
// release's and those devices are pinned to.
func (m *Manager) targetCommits(appID int64) map[string]bool {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out := map[string]bool{}
	app, err := m.st.appByID(ctx, appID)
	if err != nil {
		return out
	}
	out[app.Commit] = true
	devs, err := m.st.devices(ctx)
	if err != nil {
		m.log.Warn("cannot list the dependent devices: keeping only the newest firmware tar", "err", err)
		return out
	}
	for _, d := range devs {
		if d.AppUUID == app.UUID && d.TargetCommit != "" {
			out[d.TargetCommit] = true
		}
	}
	return out
}

// Reports returns what the fleet server should hear of each device, by
// UUID (devices marked for deletion left out).
func (m *Manager) Reports(ctx context.Context) (map[string]reeve.DeviceReport, error) {
	devs, err := m.st.devices(ctx)
	if err != nil {
		return nil, err
	}
	out := make(map[string]reeve.DeviceReport, len(devs))
	for _, d := range devs {
		if d.MarkedForDeletion {
			continue
		}
		status, online, commit := d.Status, d.IsOnline, d.Commit
		r := reeve.DeviceReport{Status: &status, IsOnline: &online, Environment: d.Environment, Config: d.Config}
		if commit != "" {
			r.Commit = &commit
		}
		out[d.UUID] = r
	}
	return out, nil
}
