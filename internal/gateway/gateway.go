// Package gateway is `reeve gateway`, the edge node manager: it runs beside
// the agent on a gateway device, finds the dependent devices of each
// dependent app over their own links (drivers), provisions them through
// the agent, keeps their firmware, config and environment in line with
// their targets, and reports their status and logs.
package gateway

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"reeve.dev/reeve"
	"reeve.dev/reeve/internal/dependent"
	"reeve.dev/reeve/internal/gateway/driver"
	"reeve.dev/reeve/internal/httpx"
	"reeve.dev/reeve/internal/localapi"
)

// Gateway statuses (GET/PUT /v1/enm/status).
const (
	Running = "Running"
	Paused  = "Paused"
)

// Config configures the gateway. Zero values get the documented defaults.
type Config struct {
	// AgentAddress and AgentKey reach the agent's API (the
	// REEVE_SUPERVISOR_ADDRESS and REEVE_SUPERVISOR_API_KEY a service
	// labelled for the supervisor API gets). Required.
	AgentAddress string
	AgentKey     string
	// DataDir holds gateway.db and the firmware. Required.
	DataDir string
	// Listen is the address of the gateway's API and hook receiver.
	// Default 127.0.0.1:1337 (where the agent's hooks go by default).
	Listen string
	// FirmwareURL is how devices that fetch firmware themselves reach
	// this gateway's API ("http://192.168.1.10:1337"). Default: the
	// listen address.
	FirmwareURL string
	// Drivers make the drivers by name; Driver names the one used for an
	// app whose config has no REEVE_GATEWAY_DRIVER; Settings holds each
	// driver's settings by driver name.
	Drivers  map[string]driver.Factory
	Driver   string
	Settings map[string]map[string]string
	// LoopDelay is the wait between two rounds. Default 10 s.
	LoopDelay time.Duration
	// UpdateRetries is how many times an install of one release is tried
	// on a device before it is left failed (until its target changes).
	// Default 3.
	UpdateRetries int
	// UpdateTimeout bounds one install. Default 30 min.
	UpdateTimeout time.Duration
	// Parallel bounds the installs in progress at once. Default 32.
	Parallel int
	// LockFile, while it exists, holds back installs and restarts (the
	// app's update lock). Default $REEVE_APP_LOCK_PATH, else
	// /tmp/reeve/updates.lock.
	LockFile string
	Logger   *slog.Logger
}

// Gateway is the edge node manager. New, then Run; Run returns when its
// context ends, having stopped everything it started.
type Gateway struct {
	cfg   Config
	log   *slog.Logger
	st    *store
	agent *localapi.Client
	fw    *firmwareCache
	ln    net.Listener
	srv   *http.Server

	wake chan struct{}

	mu       sync.Mutex
	target   string                        // Running or Paused
	current  string                        // what the loop last made it
	drivers  map[int64]*appDriver          // by app ID, open while running
	updating map[string]context.CancelFunc // device UUID → install in progress
	found    map[string]driver.Device      // device UUID → last scan
	warned   map[string]string             // what warn last said, by key
	sem      chan struct{}
	wg       sync.WaitGroup
}

type appDriver struct {
	name string
	drv  driver.Driver
	app  driver.App
}

// New prepares the gateway: opens its database and binds its address.
func New(ctx context.Context, cfg Config) (*Gateway, error) {
	if cfg.AgentAddress == "" || cfg.AgentKey == "" {
		return nil, errors.New("the agent's address and API key are needed: run the gateway as a service labelled io.reeve.features.supervisor-api (it then gets REEVE_SUPERVISOR_ADDRESS and REEVE_SUPERVISOR_API_KEY), or pass --agent and --agent-key")
	}
	if cfg.DataDir == "" {
		return nil, errors.New("a data directory is required: pass --data DIR")
	}
	if cfg.Listen == "" {
		cfg.Listen = "127.0.0.1:1337"
	}
	if cfg.LoopDelay <= 0 {
		cfg.LoopDelay = 10 * time.Second
	}
	if cfg.UpdateRetries <= 0 {
		cfg.UpdateRetries = 3
	}
	if cfg.UpdateTimeout <= 0 {
		cfg.UpdateTimeout = 30 * time.Minute
	}
	if cfg.Parallel <= 0 {
		cfg.Parallel = 32
	}
	if cfg.LockFile == "" {
		cfg.LockFile = os.Getenv("REEVE_APP_LOCK_PATH")
	}
	if cfg.LockFile == "" {
		cfg.LockFile = "/tmp/reeve/updates.lock"
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Driver != "" && cfg.Drivers[cfg.Driver] == nil {
		return nil, fmt.Errorf("no driver %q: use one of %s", cfg.Driver, strings.Join(driverNames(cfg.Drivers), ", "))
	}
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, err
	}
	st, err := openStore(ctx, cfg.DataDir)
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		st.close()
		return nil, fmt.Errorf("listen on %s: %w", cfg.Listen, err)
	}
	if cfg.FirmwareURL == "" {
		cfg.FirmwareURL = "http://" + ln.Addr().String()
	}
	g := &Gateway{cfg: cfg, log: cfg.Logger, st: st, ln: ln, wake: make(chan struct{}, 1),
		agent: localapi.NewClient(cfg.AgentAddress).WithKey(cfg.AgentKey), target: Running, current: Running,
		drivers: map[int64]*appDriver{}, updating: map[string]context.CancelFunc{},
		found: map[string]driver.Device{}, warned: map[string]string{}, sem: make(chan struct{}, cfg.Parallel)}
	if v, err := st.get(ctx, "target_status"); err == nil && v == Paused {
		g.target = Paused
	}
	g.fw = newFirmwareCache(filepath.Join(cfg.DataDir, "firmware"), g.agent, func(appID int64, commit, file string) string {
		return strings.TrimRight(cfg.FirmwareURL, "/") + firmwarePath(appID, commit, file)
	})
	g.srv = &http.Server{Handler: g.handler(), ReadHeaderTimeout: 10 * time.Second}
	return g, nil
}

func driverNames(m map[string]driver.Factory) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// Addr is the address the gateway's API listens on.
func (g *Gateway) Addr() string { return g.ln.Addr().String() }

// Run serves the API and runs the loop until ctx ends.
func (g *Gateway) Run(ctx context.Context) error {
	serveErr := make(chan error, 1)
	go func() {
		if err := g.srv.Serve(g.ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			serveErr <- err
		}
	}()
	g.log.Info("gateway running", "api", "http://"+g.Addr(), "agent", g.cfg.AgentAddress, "driver", g.cfg.Driver)
	err := g.waitForAgent(ctx)
	for err == nil {
		g.round(ctx)
		select {
		case <-ctx.Done():
			err = ctx.Err()
		case err = <-serveErr:
		case <-g.wake:
		case <-time.After(g.cfg.LoopDelay):
		}
	}
	g.shutdown()
	if errors.Is(err, context.Canceled) {
		return nil
	}
	return err
}

// Close releases what New took, for a gateway whose Run never ran (Run
// releases it itself).
func (g *Gateway) Close() error {
	return errors.Join(g.ln.Close(), g.st.close())
}

func (g *Gateway) shutdown() {
	_ = httpx.Shutdown(g.srv, 5*time.Second, g.log)
	g.mu.Lock()
	for _, cancel := range g.updating {
		cancel()
	}
	g.mu.Unlock()
	g.wg.Wait()
	g.closeDrivers()
	g.st.close()
}

// waitForAgent waits until the agent answers.
func (g *Gateway) waitForAgent(ctx context.Context) error {
	delay := 500 * time.Millisecond
	for {
		err := g.agent.Ready(ctx)
		if err == nil {
			return nil
		}
		g.log.Info("waiting for the agent", "agent", g.cfg.AgentAddress, "err", err)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(delay):
		}
		delay = min(delay*2, 10*time.Second)
	}
}

func (g *Gateway) poke() {
	select {
	case g.wake <- struct{}{}:
	default:
	}
}

func (g *Gateway) closeDrivers() {
	g.mu.Lock()
	ds := g.drivers
	g.drivers = map[int64]*appDriver{}
	g.mu.Unlock()
	for _, d := range ds {
		if err := d.drv.Close(); err != nil {
			g.log.Warn("closing a driver", "driver", d.name, "app", d.app.Name, "err", err)
		}
	}
}

// round is one pass over every dependent app.
func (g *Gateway) round(ctx context.Context) {
	g.mu.Lock()
	target := g.target
	g.mu.Unlock()
	if target == Paused {
		// Every link released, so that user code can use them; installs
		// under way are stopped first.
		g.mu.Lock()
		for _, cancel := range g.updating {
			cancel()
		}
		g.mu.Unlock()
		g.wg.Wait()
		g.closeDrivers()
		g.setCurrent(Paused)
		return
	}
	apps, err := g.agent.DependentApps(ctx)
	if err != nil {
		g.warn("agent", "cannot list the dependent apps", "err", err)
		return
	}
	devs, err := g.agent.DependentDevices(ctx)
	if err != nil {
		g.warn("agent", "cannot list the dependent devices", "err", err)
		return
	}
	g.fine("agent")
	seen := map[int64]bool{}
	for _, app := range apps {
		seen[app.ID] = true
		ad, err := g.driverFor(ctx, app)
		if err != nil {
			g.warn("driver/"+app.UUID, "no driver for a dependent app", "app", app.Name, "err", err)
			continue
		}
		var mine []dependent.Device
		for _, d := range devs {
			if d.AppID == app.ID {
				mine = append(mine, d)
			}
		}
		g.roundApp(ctx, app, ad, mine)
	}
	// Apps that left: their drivers close.
	g.mu.Lock()
	for id, ad := range g.drivers {
		if !seen[id] {
			delete(g.drivers, id)
			go ad.drv.Close()
		}
	}
	g.mu.Unlock()
	g.setCurrent(Running)
}

func (g *Gateway) setCurrent(s string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.current != s {
		g.log.Info("gateway status", "status", s)
	}
	g.current = s
}

// driverFor returns the app's driver, opening it when needed.
func (g *Gateway) driverFor(ctx context.Context, app dependent.App) (*appDriver, error) {
	name := app.Config["REEVE_GATEWAY_DRIVER"]
	if name == "" {
		name = g.cfg.Driver
	}
	if name == "" {
		return nil, fmt.Errorf("set REEVE_GATEWAY_DRIVER in the app's config, or start the gateway with --driver (one of %s)", strings.Join(driverNames(g.cfg.Drivers), ", "))
	}
	g.mu.Lock()
	ad, ok := g.drivers[app.ID]
	g.mu.Unlock()
	if ok && ad.name == name {
		return ad, nil
	}
	if ok {
		ad.drv.Close()
	}
	factory := g.cfg.Drivers[name]
	if factory == nil {
		return nil, fmt.Errorf("the app's REEVE_GATEWAY_DRIVER %q is not a driver: use one of %s", name, strings.Join(driverNames(g.cfg.Drivers), ", "))
	}
	drv, err := factory(g.cfg.Settings[name])
	if err != nil {
		return nil, fmt.Errorf("driver %s: %w", name, err)
	}
	hostType := app.Config["REEVE_HOST_TYPE"]
	if hostType == "" {
		hostType = app.Config["RESIN_HOST_TYPE"]
	}
	da := driver.App{ID: app.ID, UUID: app.UUID, Name: app.Name, HostType: hostType, Config: maps.Clone(app.Config)}
	if err := drv.Open(ctx, da); err != nil {
		return nil, fmt.Errorf("open driver %s: %w", name, err)
	}
	ad = &appDriver{name: name, drv: drv, app: da}
	g.mu.Lock()
	g.drivers[app.ID] = ad
	g.mu.Unlock()
	g.log.Info("driver open", "driver", name, "app", app.Name)
	return ad, nil
}

// roundApp scans an app's devices, provisions the new ones and brings
// each in line with its target.
func (g *Gateway) roundApp(ctx context.Context, app dependent.App, ad *appDriver, devs []dependent.Device) {
	found, err := ad.drv.Scan(ctx)
	if err != nil {
		g.warn("scan/"+app.UUID, "scan failed", "app", app.Name, "driver", ad.name, "err", err)
		return
	}
	byLocal := map[string]dependent.Device{}
	for _, d := range devs {
		if d.LocalID != "" {
			byLocal[d.LocalID] = d
		}
	}
	for _, f := range found {
		if _, ok := byLocal[f.LocalID]; ok || f.LocalID == "" {
			continue
		}
		if gone, err := g.st.get(ctx, forgottenKey(app.ID, f.LocalID)); err != nil || gone != "" {
			continue // removed from the fleet: not provisioned again
		}
		if !g.staleRecord(ctx, app.ID, f.LocalID) {
			continue
		}
		dtype := f.DeviceType
		if dtype == "" {
			dtype = ad.app.HostType
		}
		if dtype == "" {
			dtype = ad.name
		}
		d, err := g.agent.ProvisionDependent(ctx, app.ID, dtype, f.LocalID)
		if err != nil {
			g.warn("provision/"+f.LocalID, "cannot provision a device", "app", app.Name, "local_id", f.LocalID, "err", err)
			continue
		}
		g.log.Info("device provisioned", "app", app.Name, "local_id", f.LocalID, "uuid", d.UUID)
		d.TargetCommit = "" // not in the agent's target yet: next round
		byLocal[f.LocalID] = d
		devs = append(devs, d)
	}
	foundBy := map[string]driver.Device{}
	for _, f := range found {
		foundBy[f.LocalID] = f
	}
	recs, err := g.st.records(ctx)
	if err != nil {
		g.log.Warn("cannot read the gateway's records", "err", err)
		return
	}
	keep := map[string]bool{}
	for _, d := range devs {
		if d.LocalID == "" {
			continue // not one of this gateway's
		}
		rec, ok := recs[d.UUID]
		if !ok {
			if err := g.st.ensure(ctx, d.UUID, app.ID, d.LocalID); err != nil {
				g.log.Warn("cannot record a device", "uuid", d.UUID, "err", err)
				continue
			}
			rec = record{UUID: d.UUID, AppID: app.ID, LocalID: d.LocalID}
		}
		if d.TargetCommit != "" {
			keep[d.TargetCommit] = true
		}
		f, present := foundBy[d.LocalID]
		g.mu.Lock()
		g.found[d.UUID] = f
		g.mu.Unlock()
		g.syncDevice(ctx, app, ad, d, rec, f, present && f.Online)
	}
	g.fw.prune(app.ID, keep)
}

// staleRecord reports whether the device found on the link may be
// provisioned: the gateway has no record of it, or the agent does not
// know the device recorded at all (its data was reset). A device the agent
// is deleting (410: removed from the fleet, the hook not sent yet) is not.
func (g *Gateway) staleRecord(ctx context.Context, appID int64, localID string) bool {
	rec, ok, err := g.st.recordByLocal(ctx, appID, localID)
	if err != nil {
		g.log.Warn("cannot read the gateway's records", "err", err)
		return false
	}
	if !ok {
		return true
	}
	_, err = g.agent.DependentDevice(ctx, rec.UUID)
	if reeve.ErrorCode(err) == reeve.CodeNotFound {
		g.log.Info("the agent no longer knows a device: provisioning it again", "local_id", localID, "old_uuid", rec.UUID)
		return g.st.remove(ctx, rec.UUID) == nil
	}
	return false
}

// syncDevice brings one device in line: status, logs, restart, config,
// firmware.
func (g *Gateway) syncDevice(ctx context.Context, app dependent.App, ad *appDriver, d dependent.Device, rec record, f driver.Device, online bool) {
	log := g.log.With("device", d.UUID, "local_id", d.LocalID, "app", app.Name)
	g.mu.Lock()
	_, installing := g.updating[d.UUID]
	g.mu.Unlock()
	// What the device runs and whether it answers.
	fields := map[string]any{}
	if online != d.IsOnline {
		fields["is_online"] = online
	}
	if online && f.Commit != "" && f.Commit != d.Commit {
		fields["commit"] = f.Commit
	}
	failedForGood := rec.FailedCommit == d.TargetCommit && rec.Attempts >= g.cfg.UpdateRetries
	update := !installing && online && d.TargetCommit != "" && f.Commit != d.TargetCommit && !failedForGood && !g.locked()
	if !installing && !update { // an install reports its own status
		status := g.idleStatus(rec, d, online, f)
		if status != d.Status {
			fields["status"] = status
		}
	}
	if len(fields) > 0 {
		if err := g.agent.UpdateDependent(ctx, d.UUID, fields); err != nil {
			g.warn("report/"+d.UUID, "cannot report the device's state", "device", d.UUID, "local_id", d.LocalID, "err", err)
		} else {
			g.fine("report/" + d.UUID)
		}
		if online != rec.IsOnline {
			g.st.set(ctx, d.UUID, "is_online", online)
		}
	}
	if !online {
		return
	}
	g.shipLogs(ctx, ad, d)
	if rec.RestartRequested && !installing && !g.locked() {
		if err := ad.drv.Restart(ctx, d.LocalID); err != nil {
			g.warn("restart/"+d.UUID, "restart failed", "device", d.UUID, "local_id", d.LocalID, "err", err)
		} else {
			log.Info("device restarted")
			g.fine("restart/" + d.UUID)
			g.st.set(ctx, d.UUID, "restart_requested", false)
		}
	}
	// Config and environment.
	if h := configHash(d.TargetEnvironment, d.TargetConfig); h != rec.Configured && d.TargetCommit != "" {
		err := ad.drv.Configure(ctx, d.LocalID, d.TargetEnvironment, d.TargetConfig)
		if errors.Is(err, errors.ErrUnsupported) {
			// The link cannot carry them: nothing to do until they change.
			log.Debug("the device's link takes no config or environment", "err", err)
			g.st.set(ctx, d.UUID, "configured", h)
		} else if err != nil {
			g.warn("configure/"+d.UUID, "cannot configure the device", "device", d.UUID, "local_id", d.LocalID, "err", err)
		} else if err := g.agent.UpdateDependent(ctx, d.UUID, map[string]any{"environment": nonNil(d.TargetEnvironment), "config": nonNil(d.TargetConfig)}); err != nil {
			log.Warn("cannot report the device's config", "err", err)
		} else {
			g.fine("configure/" + d.UUID)
			g.st.set(ctx, d.UUID, "configured", h)
		}
	}
	// Firmware: not while the update lock is held, nor once the target
	// failed for good (it waits for another target).
	if update {
		g.startUpdate(ctx, app, ad, d, log)
	}
}

// idleStatus is a device's status when no install is under way.
func (g *Gateway) idleStatus(rec record, d dependent.Device, online bool, f driver.Device) string {
	switch {
	case !online:
		return "Offline"
	case rec.FailedCommit != "" && rec.FailedCommit == d.TargetCommit && f.Commit != d.TargetCommit && rec.Attempts >= g.cfg.UpdateRetries:
		return failedStatus(rec.LastError)
	default:
		return "Idle"
	}
}

func (g *Gateway) shipLogs(ctx context.Context, ad *appDriver, d dependent.Device) {
	lines, err := ad.drv.Logs(ctx, d.LocalID)
	if err != nil || len(lines) == 0 {
		return
	}
	out := make([]localapi.DependentLogLine, len(lines))
	for i, l := range lines {
		out[i] = localapi.DependentLogLine{Message: l.Message, Timestamp: l.Time.UnixMilli(), IsSystem: l.System}
	}
	if err := g.agent.DependentLogs(ctx, d.UUID, out); err != nil {
		g.warn("logs/"+d.UUID, "cannot pass on the device's log lines", "device", d.UUID, "lines", len(out), "err", err)
	} else {
		g.fine("logs/" + d.UUID)
	}
}

// locked reports whether the app's update lock is held.
func (g *Gateway) locked() bool {
	_, err := os.Stat(g.cfg.LockFile)
	return err == nil
}

// startUpdate installs the device's target release in the background.
func (g *Gateway) startUpdate(ctx context.Context, app dependent.App, ad *appDriver, d dependent.Device, log *slog.Logger) {
	uctx, cancel := context.WithTimeout(ctx, g.cfg.UpdateTimeout)
	g.mu.Lock()
	g.updating[d.UUID] = cancel
	g.mu.Unlock()
	g.wg.Add(1)
	go func() {
		defer g.wg.Done()
		defer func() {
			cancel()
			g.mu.Lock()
			delete(g.updating, d.UUID)
			g.mu.Unlock()
			g.poke()
		}()
		select {
		case g.sem <- struct{}{}:
			defer func() { <-g.sem }()
		case <-uctx.Done():
			return
		}
		// The round read its records before installs that ended since.
		if cur, ok, err := g.st.record(uctx, d.UUID); err != nil || !ok ||
			(cur.FailedCommit == d.TargetCommit && cur.Attempts >= g.cfg.UpdateRetries) {
			return
		}
		g.install(uctx, app, ad, d, log)
	}()
}

// install downloads the firmware (once per release) and installs it,
// telling the agent how it goes.
func (g *Gateway) install(ctx context.Context, app dependent.App, ad *appDriver, d dependent.Device, log *slog.Logger) {
	report := func(fields map[string]any) {
		// A report must outlive an install's timeout.
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		if err := g.agent.UpdateDependent(rctx, d.UUID, fields); err != nil {
			log.Warn("cannot report the install", "err", err)
		}
	}
	commit := d.TargetCommit
	if !g.fw.cached(app.ID, commit) {
		report(map[string]any{"status": "Downloading"})
	}
	fw, err := g.fw.get(ctx, app.ID, commit, app.Config[FirmwareFileVar])
	if transient(err) {
		// The agent is still downloading the release, or cannot be
		// reached: no attempt is spent; the next round tries again.
		log.Info("firmware not available yet; trying again at the next round", "commit", commit, "err", err)
		report(map[string]any{"status": "Downloading"})
		return
	}
	if err == nil {
		report(map[string]any{"status": "Installing (0 %)"})
		last, lastAt := 0, time.Now()
		err = ad.drv.Update(ctx, d.LocalID, fw, func(pc int) {
			// In steps of 10 %, at most one a second: every report is a
			// durable write in the agent, and hundreds of devices may be
			// installing at once.
			if step := pc / 10 * 10; step > last && pc < 100 && time.Since(lastAt) >= progressEvery {
				last, lastAt = step, time.Now()
				report(map[string]any{"status": fmt.Sprintf("Installing (%d %%)", step)})
			}
		})
	}
	wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	if err == nil {
		log.Info("firmware installed", "commit", commit)
		if rec, ok, _ := g.st.record(wctx, d.UUID); ok && (rec.Attempts != 0 || rec.FailedCommit != "") {
			g.st.set(wctx, d.UUID, "attempts", 0)
			g.st.set(wctx, d.UUID, "failed_commit", "")
			g.st.set(wctx, d.UUID, "last_error", "")
		}
		report(map[string]any{"status": "Idle", "commit": commit})
		return
	}
	if errors.Is(err, context.Canceled) && ctx.Err() != nil && context.Cause(ctx) == context.Canceled {
		report(map[string]any{"status": "Idle"}) // paused or stopping: tried again later
		return
	}
	reason := err.Error()
	var ue *driver.UpdateError
	var bad *errBadFirmware
	switch {
	case errors.As(err, &ue):
		reason = ue.Reason
	case errors.As(err, &bad):
		reason = bad.msg
	case errors.Is(err, context.DeadlineExceeded):
		reason = fmt.Sprintf("the install took longer than %s", g.cfg.UpdateTimeout)
	}
	attempts := 1
	if rec, ok, _ := g.st.record(wctx, d.UUID); ok && rec.FailedCommit == commit {
		attempts = rec.Attempts + 1
	}
	if bad != nil {
		attempts = g.cfg.UpdateRetries // the same files will not do better
	}
	g.st.set(wctx, d.UUID, "failed_commit", commit)
	g.st.set(wctx, d.UUID, "attempts", attempts)
	g.st.set(wctx, d.UUID, "last_error", reason)
	log.Warn("firmware install failed", "commit", commit, "attempt", attempts, "of", g.cfg.UpdateRetries, "reason", reason)
	if attempts >= g.cfg.UpdateRetries {
		report(map[string]any{"status": failedStatus(reason)})
	} else {
		report(map[string]any{"status": failedStatus(reason) + "; trying again"})
	}
}

// failedStatus is the status of a failed install, cut to what the agent
// takes (256 bytes).
func failedStatus(reason string) string {
	const maxReason = 200
	if len(reason) > maxReason {
		cut := maxReason
		for cut > 0 && !utf8.RuneStart(reason[cut]) {
			cut--
		}
		reason = reason[:cut] + "…"
	}
	return "Update failed (" + reason + ")"
}

// transient reports whether getting a release's firmware failed for a
// while only: the agent still downloads it (unavailable), or does not
// answer (no error of its own).
func transient(err error) bool {
	if err == nil {
		return false
	}
	var re *reeve.Error
	if errors.As(err, &re) {
		return re.Code == reeve.CodeUnavailable
	}
	var bad *errBadFirmware
	return !errors.As(err, &bad) && !errors.Is(err, context.Canceled) && !errors.Is(err, context.DeadlineExceeded)
}

// progressEvery is the least time between two progress reports of one
// install.
const progressEvery = time.Second

// warn logs a problem that a round may meet again and again: at warn
// level when it is new for key (a device, an app), at debug level while it
// repeats; err is the last of args.
func (g *Gateway) warn(key, msg string, args ...any) {
	text := msg
	if len(args) > 0 {
		text += fmt.Sprint(args[len(args)-1])
	}
	g.mu.Lock()
	repeat := g.warned[key] == text
	g.warned[key] = text
	g.mu.Unlock()
	if repeat {
		g.log.Debug(msg, args...)
		return
	}
	g.log.Warn(msg, args...)
}

// fine says the problem warn last logged for key is over.
func (g *Gateway) fine(key string) {
	g.mu.Lock()
	delete(g.warned, key)
	g.mu.Unlock()
}

// forgottenKey marks a device removed from the fleet that is still on its
// link.
func forgottenKey(appID int64, localID string) string {
	return fmt.Sprintf("forgotten/%d/%s", appID, localID)
}

func configHash(env, cfg map[string]string) string {
	b, _ := json.Marshal([]map[string]string{nonNil(env), nonNil(cfg)})
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:8])
}

func nonNil(m map[string]string) map[string]string {
	if m == nil {
		return map[string]string{}
	}
	return m
}
