// Package agent keeps one device in line with its target state: it stores
// the target durably, plans with the engine against what the runtime reports,
// carries out the steps, and keeps a status anyone can read.
package agent

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	goruntime "runtime"
	"strings"
	"sync"
	"time"

	"reeve.dev/reeve"
	"reeve.dev/reeve/internal/engine"
	"reeve.dev/reeve/internal/runtime"
)

// Config configures an Agent. Zero values get the documented defaults.
type Config struct {
	// DataDir holds the database and anything else the agent keeps.
	// Required.
	DataDir string
	// RunDir holds what must not outlive a reboot: the services' update
	// lock directories (a lock held when the power went must not block
	// updates for ever). Default: /run/reeve/<hash of DataDir>, on tmpfs;
	// <DataDir>/run when /run cannot be written.
	RunDir string
	// Runtime runs the services. Required.
	Runtime runtime.Runtime
	Logger  *slog.Logger
	// APIAddress is where the agent's API listens (host:port), given to
	// services labelled io.reeve.features.supervisor-api.
	APIAddress string
	// UUID is the device's identity when it is given one (a fleet device's
	// config.json); "" keeps the UUID stored in the database, made at the
	// first start.
	UUID string
	// DeviceName defaults to the host name; DeviceType to generic-<arch>.
	DeviceName string
	DeviceType string
	// NoopDelay is how long the loop waits when it is waiting on something
	// (a download, a dependency, a hand-over). Default 1 s.
	NoopDelay time.Duration
	// ReconcileInterval is how often a converged device is checked again
	// for drift (a container removed by hand, an engine restart). Default 10 s.
	ReconcileInterval time.Duration
	// BackoffMin and BackoffMax bound the wait after a failed batch.
	// Defaults 1 s and 2 min.
	BackoffMin time.Duration
	BackoffMax time.Duration
	// FetchBackoffMax caps the wait between retries of a failed download.
	// Default 5 min.
	FetchBackoffMax time.Duration
	// Now is the clock; default time.Now.
	Now func() time.Time
	// SystemLog, when set, is given the agent's own messages for the
	// device's log (what it does to services, downloads, locks, failures)
	// with the service they concern ("" for none). It must not block: it
	// is called from the apply loop, sometimes with the agent's lock held.
	SystemLog func(service, message string)
	// Observe, when set, is given every snapshot the apply loop reads of
	// the runtime (the log collector follows the containers it lists).
	// It must not block.
	Observe func(reeve.Snapshot)
	// Dependents keeps the dependent devices this device carries as a
	// gateway. Nil: a target with dependent apps is refused.
	Dependents Dependents
}

// Dependents is what the apply loop needs of the dependent-device store
// (package dependent): what it holds, and the steps of dependent apps.
type Dependents interface {
	// PlanState returns what is stored of each dependent app.
	PlanState(ctx context.Context) (map[string]engine.DependentState, error)
	// UpdateTargets stores an app's target and its devices'; devices
	// that left it are marked for deletion.
	UpdateTargets(ctx context.Context, app reeve.DependentApp) error
	// ReleaseHooks lets hooks go out for the stored target hash (its
	// firmware is on the device).
	ReleaseHooks(ctx context.Context, appUUID, hash string) error
	// RemoveApp forgets an app, its devices and its firmware.
	RemoveApp(ctx context.Context, appUUID string) error
}

func (c *Config) defaults() error {
	if c.DataDir == "" {
		return errors.New("agent: a data directory is required")
	}
	if c.Runtime == nil {
		return errors.New("agent: a runtime is required")
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.DeviceName == "" {
		c.DeviceName, _ = os.Hostname()
	}
	if c.DeviceType == "" {
		c.DeviceType = "generic-" + goruntime.GOARCH
	}
	if c.NoopDelay <= 0 {
		c.NoopDelay = time.Second
	}
	if c.ReconcileInterval <= 0 {
		c.ReconcileInterval = 10 * time.Second
	}
	if c.BackoffMin <= 0 {
		c.BackoffMin = time.Second
	}
	if c.BackoffMax <= 0 {
		c.BackoffMax = 2 * time.Minute
	}
	if c.FetchBackoffMax <= 0 {
		c.FetchBackoffMax = 5 * time.Minute
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.RunDir == "" {
		abs, err := filepath.Abs(c.DataDir)
		if err != nil {
			abs = c.DataDir
		}
		sum := sha256.Sum256([]byte(abs))
		c.RunDir = filepath.Join("/run/reeve", hex.EncodeToString(sum[:8]))
		if err := os.MkdirAll(c.RunDir, 0o755); err != nil {
			c.Logger.Warn("update locks kept in the data directory: /run cannot be written, so a lock held at a power cut survives it", "err", err)
			c.RunDir = filepath.Join(c.DataDir, "run")
		}
	}
	return nil
}

// Agent drives one device. Create it with New, then Start; Close stops every
// goroutine it started.
type Agent struct {
	cfg  Config
	log  *slog.Logger
	db   *db
	rt   runtime.Runtime
	uuid string

	wake chan struct{}

	setMu sync.Mutex // one SetTarget at a time: stored and applied in the same order

	mu          sync.Mutex
	target      reeve.TargetState
	version     int64
	hasTarget   bool               // a valid target has been stored; without one nothing is touched
	applyCancel context.CancelFunc // cancels the batch in progress
	fetches     map[string]*fetch  // by normalized image reference
	fetchFailed map[string]*fetchFailure
	stepFailed  map[string]*fetchFailure // by stepKey: failed steps wait out their backoff
	svcErrors   map[string]string        // "<app>/<service>" → last step error
	status      Status
	loopAlive   time.Time
	ov          overrides // the API's temporary changes to the target
	// What the device's log was last told of: containers by ID, apps
	// whose update waits for a lock, and who holds each app's locks.
	seenContainers map[string]reeve.ServiceState
	lockedApps     map[string]bool
	lockHolders    map[string][]string
	apiKey         string // device-wide API key

	actMu      sync.Mutex // one API action at a time
	appKeySeed string     // app API keys are derived from it

	cancel context.CancelFunc
	wg     sync.WaitGroup
}

type fetch struct {
	cancel   context.CancelFunc
	progress runtime.Progress
}

type fetchFailure struct {
	err      string
	attempts int
	retryAt  time.Time
}

// New opens the agent's database and loads its identity and stored target.
func New(ctx context.Context, cfg Config) (*Agent, error) {
	if err := cfg.defaults(); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("create data directory: %w", err)
	}
	d, err := openDB(ctx, cfg.DataDir)
	if err != nil {
		return nil, err
	}
	uuid, err := d.getOrCreate(ctx, "device_uuid", newUUID)
	if err == nil && cfg.UUID != "" && cfg.UUID != uuid {
		if !reeve.ValidUUID(cfg.UUID) {
			err = fmt.Errorf("device UUID %q is not valid: use 32 lowercase hex digits", cfg.UUID)
		} else {
			err = d.set(ctx, "device_uuid", cfg.UUID)
			uuid = cfg.UUID
		}
	}
	if err != nil {
		d.close()
		return nil, err
	}
	apiKey, err := d.getOrCreate(ctx, "api_key", newSecret)
	if err != nil {
		d.close()
		return nil, err
	}
	seed, err := d.getOrCreate(ctx, "app_key_seed", newSecret)
	if err != nil {
		d.close()
		return nil, err
	}
	ts, version, err := d.target(ctx)
	var invalid *reeve.ValidationError
	switch {
	case errors.As(err, &invalid):
		// Written by another version of reeve, say. Applying nothing is
		// safe; applying an empty target would remove every app. A new
		// target replaces it.
		cfg.Logger.Error("the stored target state is not valid for this agent; waiting for a new one", "err", err)
		ts = nil
	case err != nil:
		d.close()
		return nil, err
	}
	a := &Agent{
		cfg:         cfg,
		log:         cfg.Logger,
		db:          d,
		rt:          cfg.Runtime,
		uuid:        uuid,
		wake:        make(chan struct{}, 1),
		target:      ts,
		version:     version,
		hasTarget:   ts != nil,
		fetches:     map[string]*fetch{},
		fetchFailed: map[string]*fetchFailure{},
		stepFailed:  map[string]*fetchFailure{},
		svcErrors:   map[string]string{},
		ov:          newOverrides(),
		apiKey:      apiKey,
		appKeySeed:  seed,
	}
	if err := a.writeKeyFile(apiKey); err != nil {
		d.close()
		return nil, fmt.Errorf("write the API key file: %w", err)
	}
	a.status = Status{DeviceUUID: uuid, AppState: AppStateApplying, TargetVersion: version}
	if invalid != nil {
		a.status.LastError = "the stored target state is not valid for this agent, so nothing is applied until a new one is set: " + invalid.Error()
	}
	return a, nil
}

// UUID returns the device's UUID.
func (a *Agent) UUID() string { return a.uuid }

// DeviceName returns the device's name.
func (a *Agent) DeviceName() string {
	a.mu.Lock()
	defer a.mu.Unlock()
	if d, ok := a.target[a.uuid]; ok && d.Name != "" {
		return d.Name
	}
	return a.cfg.DeviceName
}

// DeviceType returns the device type.
func (a *Agent) DeviceType() string { return a.cfg.DeviceType }

// Start starts the apply loop and returns.
func (a *Agent) Start(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	a.cancel = cancel
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		a.loop(ctx)
	}()
	return nil
}

// Close stops the loop and every download, waits for them, and closes the
// database.
func (a *Agent) Close() error {
	if a.cancel != nil {
		a.cancel()
	}
	a.wg.Wait()
	return a.db.close()
}

// Target returns the stored target state (never nil) and its version.
func (a *Agent) Target() (reeve.TargetState, int64) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.target == nil {
		return reeve.TargetState{a.uuid: {Name: a.cfg.DeviceName, Apps: map[string]reeve.App{}}}, a.version
	}
	return a.target, a.version
}

// SetTarget validates, stores and starts applying a new target state. The
// state must be keyed by this device's UUID; other entries are dependent
// devices this device carries, of dependent apps its own entry lists. The
// batch in progress for the old target is cancelled; the loop plans
// afresh.
func (a *Agent) SetTarget(ctx context.Context, ts reeve.TargetState) (int64, error) {
	if err := ts.Validate(); err != nil {
		return 0, err
	}
	if _, ok := ts[a.uuid]; !ok {
		return 0, &reeve.ValidationError{Problems: []reeve.Problem{{
			Message: fmt.Sprintf("the target state has no entry for this device (%s): key the target state by it (GET /v2/local/target-state shows the current one)", a.uuid),
		}}}
	}
	if err := ts.CheckDependents(a.uuid); err != nil {
		return 0, err
	}
	if a.cfg.Dependents == nil {
		for uuid, app := range ts[a.uuid].Apps {
			if app.Class == reeve.ClassDependent {
				return 0, &reeve.ValidationError{Problems: []reeve.Problem{{
					Path:    "apps." + uuid,
					Message: "this agent carries no dependent devices (it runs without a dependent-device store)",
				}}}
			}
		}
	}
	a.setMu.Lock()
	defer a.setMu.Unlock()
	version, err := a.db.setTarget(ctx, ts)
	if err != nil {
		return 0, err
	}
	a.mu.Lock()
	a.endStops(a.target[a.uuid], ts[a.uuid])
	a.target, a.version, a.hasTarget = ts, version, true
	clear(a.stepFailed) // a new target gets fresh attempts
	if a.applyCancel != nil {
		a.applyCancel()
	}
	a.mu.Unlock()
	a.log.Info("target state stored", "version", version)
	a.Wake()
	return version, nil
}

// Wake makes the loop plan again now.
func (a *Agent) Wake() {
	select {
	case a.wake <- struct{}{}:
	default:
	}
}

// Healthy reports whether the apply loop is making rounds.
func (a *Agent) Healthy() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	limit := 10*time.Minute + a.cfg.BackoffMax + a.cfg.ReconcileInterval
	if a.loopAlive.IsZero() {
		return errors.New("the apply loop has not started")
	}
	if since := a.cfg.Now().Sub(a.loopAlive); since > limit {
		return fmt.Errorf("the apply loop has not completed a round for %s", since.Round(time.Second))
	}
	return nil
}

// LockDir is the host directory holding a service's update lock
// (updates.lock) and hand-over signal; it is mounted into the service's
// containers at /tmp/reeve (and /tmp/balena, /tmp/resin).
func (a *Agent) LockDir(app, service string) string { return a.lockDir(app, service) }

func (a *Agent) lockDir(app, service string) string {
	return filepath.Join(a.cfg.RunDir, "locks", app, service)
}

func svcKey(app, service string) string { return app + "/" + service }

// deviceTarget returns this device's part of the target; ok is false while
// no valid target has been stored.
func (a *Agent) deviceTarget() (reeve.DeviceTarget, int64, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	d := a.target[a.uuid]
	if d.Apps == nil {
		d.Apps = map[string]reeve.App{}
	}
	return a.ov.apply(d), a.version, a.hasTarget
}

// endStops ends the stops of services whose app gets another release: a
// new release runs. Called with a.mu held.
func (a *Agent) endStops(old, cur reeve.DeviceTarget) {
	for key := range a.ov.stopped {
		app, _, _ := strings.Cut(key, "/")
		oldCommit, _, _ := old.Apps[app].Release()
		newCommit, _, _ := cur.Apps[app].Release()
		if oldCommit != newCommit {
			delete(a.ov.stopped, key)
		}
	}
}
