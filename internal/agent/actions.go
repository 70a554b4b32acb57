package agent

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"reeve.dev/reeve"
	"reeve.dev/reeve/internal/atomicfile"
)

// This file holds what applications on the device ask of the agent through
// its API: restart, purge, stop and start apps and services. The agent does
// them the way it does everything, through the planner: it lays temporary
// overrides over the target (an app held out while it restarts, a service
// stopped), waits until the runtime shows the result, and lifts them. While
// an app is held out, images are kept: it comes back without a download.

// overrides are the agent's temporary changes to the target. They live in
// memory: an agent that restarts mid-action comes back to the plain target,
// which is the safe side (the app runs).
type overrides struct {
	heldApps map[string]bool // app → left out of the effective target
	heldSvcs map[string]bool // app/service → left out
	stopped  map[string]bool // app/service → not running
	force    map[string]bool // app → its users' update locks are overridden
}

func newOverrides() overrides {
	return overrides{heldApps: map[string]bool{}, heldSvcs: map[string]bool{}, stopped: map[string]bool{}, force: map[string]bool{}}
}

// apply returns dev with the overrides laid over it.
func (o overrides) apply(dev reeve.DeviceTarget) reeve.DeviceTarget {
	if len(o.heldApps)+len(o.heldSvcs)+len(o.stopped) == 0 {
		return dev
	}
	out := dev
	out.Apps = map[string]reeve.App{}
	for uuid, app := range dev.Apps {
		if o.heldApps[uuid] {
			continue
		}
		commit, rel, ok := app.Release()
		if !ok {
			out.Apps[uuid] = app
			continue
		}
		svcs := map[string]reeve.Service{}
		for name, svc := range rel.Services {
			key := svcKey(uuid, name)
			if o.heldSvcs[key] {
				continue
			}
			if o.stopped[key] {
				svc.Running = false
			}
			svcs[name] = svc
		}
		rel.Services = svcs
		app.Releases = map[string]reeve.Release{commit: rel}
		out.Apps[uuid] = app
	}
	return out
}

// intermediate reports whether something is held out, so images must stay.
func (o overrides) intermediate() bool { return len(o.heldApps)+len(o.heldSvcs) > 0 }

// actionTimeout bounds how long an action waits for the runtime.
const actionTimeout = 5 * time.Minute

// app returns an app of the stored target, or not_found.
func (a *Agent) app(uuid string) (reeve.App, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	app, ok := a.target[a.uuid].Apps[uuid]
	if !ok {
		return app, reeve.Errorf(reeve.CodeNotFound, "no app %s on this device", uuid)
	}
	if app.Class == reeve.ClassDependent {
		return app, reeve.Errorf(reeve.CodeNotFound, "app %s is a dependent app: its devices are managed through /v1/devices, it runs nothing here", uuid)
	}
	return app, nil
}

func (a *Agent) service(appUUID, service string) error {
	app, err := a.app(appUUID)
	if err != nil {
		return err
	}
	_, rel, _ := app.Release()
	if _, ok := rel.Services[service]; !ok {
		return reeve.Errorf(reeve.CodeNotFound, "app %s has no service %q", app.Name, service)
	}
	return nil
}

// AppLocked reports whether an action on the app must wait for its lock:
// a service of the app holds it, and the device config does not override
// locks (REEVE_SUPERVISOR_OVERRIDE_LOCK).
func (a *Agent) AppLocked(appUUID string) bool {
	dev, _, _ := a.deviceTarget()
	if overrideLock(dev.Config) {
		return false
	}
	_, locked := a.lockedBy(appUUID)
	return locked
}

// lockedBy returns a service of the app that holds its update lock.
func (a *Agent) lockedBy(appUUID string) (string, bool) {
	entries, err := os.ReadDir(filepath.Join(a.cfg.RunDir, "locks", appUUID))
	if err != nil {
		return "", false
	}
	for _, e := range entries {
		if held, ours := a.lockHolder(a.lockDir(appUUID, e.Name())); held && !ours {
			return e.Name(), true
		}
	}
	return "", false
}

// checkLock refuses an action on a locked app unless it is forced, by the
// caller or by the device config.
func (a *Agent) checkLock(appUUID string, force bool) error {
	if force {
		return nil
	}
	dev, _, _ := a.deviceTarget()
	if overrideLock(dev.Config) {
		return nil
	}
	if svc, locked := a.lockedBy(appUUID); locked {
		return reeve.Errorf(reeve.CodeLocked, "service %s holds the update lock of its app (%s exists): wait until it is released, or pass force: true", svc, a.lockFilePath(appUUID, svc))
	}
	return nil
}

func (a *Agent) lockFilePath(app, svc string) string {
	return filepath.Join(a.lockDir(app, svc), lockFile)
}

// act runs one action: checks, lays the override, wakes the loop, waits
// until done says the runtime shows it, and lifts what lift lifts; then,
// when back is given, waits until it holds too (the app is back up). One
// action runs at a time.
func (a *Agent) act(ctx context.Context, appUUID string, force bool, set func(*overrides), done func(reeve.Snapshot) bool, lift func(*overrides), back func(reeve.Snapshot) bool) error {
	a.actMu.Lock()
	defer a.actMu.Unlock()
	if err := a.checkLock(appUUID, force); err != nil {
		return err
	}
	a.mu.Lock()
	set(&a.ov)
	if force {
		a.ov.force[appUUID] = true
	}
	if a.applyCancel != nil {
		a.applyCancel() // plan again now, with the override
	}
	a.mu.Unlock()
	lifted := false
	liftNow := func() {
		if lifted {
			return
		}
		lifted = true
		a.mu.Lock()
		if lift != nil {
			lift(&a.ov)
		}
		delete(a.ov.force, appUUID)
		a.mu.Unlock()
		a.Wake()
	}
	defer liftNow() // on every way out: an override never outlives its action
	a.Wake()
	if err := a.waitRuntime(ctx, done); err != nil {
		return err
	}
	liftNow()
	if back == nil {
		return nil
	}
	return a.waitRuntime(ctx, back)
}

// waitRuntime waits until done holds for the runtime's state.
func (a *Agent) waitRuntime(ctx context.Context, done func(reeve.Snapshot) bool) error {
	ctx, cancel := context.WithTimeout(ctx, actionTimeout)
	defer cancel()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	var last error
	for {
		snap, err := a.rt.Snapshot(ctx)
		if err == nil && done(snap) {
			return nil
		}
		if err != nil {
			last = err
		}
		select {
		case <-ctx.Done():
			if errors.Is(ctx.Err(), context.DeadlineExceeded) {
				st := a.Status()
				return reeve.Errorf(reeve.CodeUnavailable, "not done after %s (%s%s): the agent goes on trying", actionTimeout, st.AppState, errSuffix(last, st.LastError))
			}
			return ctx.Err()
		case <-tick.C:
		}
	}
}

func errSuffix(err error, last string) string {
	switch {
	case err != nil:
		return ": " + err.Error()
	case last != "":
		return ": " + last
	}
	return ""
}

// containers returns the app's containers (of one service when service is
// not "").
func containers(snap reeve.Snapshot, appUUID, service string) []reeve.ServiceState {
	var out []reeve.ServiceState
	for _, c := range snap.Containers {
		if c.AppUUID == appUUID && (service == "" || c.ServiceName == service) {
			out = append(out, c)
		}
	}
	return out
}

func gone(appUUID, service string) func(reeve.Snapshot) bool {
	return func(snap reeve.Snapshot) bool { return len(containers(snap, appUUID, service)) == 0 }
}

func notRunning(appUUID, service string) func(reeve.Snapshot) bool {
	return func(snap reeve.Snapshot) bool {
		for _, c := range containers(snap, appUUID, service) {
			if c.IsRunning() {
				return false
			}
		}
		return true
	}
}

// RestartApp recreates the app's containers: they are removed, and made
// again from the images on the device.
func (a *Agent) RestartApp(ctx context.Context, appUUID string, force bool) error {
	if _, err := a.app(appUUID); err != nil {
		return err
	}
	return a.act(ctx, appUUID, force,
		func(o *overrides) { o.heldApps[appUUID] = true },
		gone(appUUID, ""),
		func(o *overrides) { delete(o.heldApps, appUUID) },
		a.running(appUUID, ""))
}

// PurgeApp is RestartApp with the app's volumes emptied in between.
func (a *Agent) PurgeApp(ctx context.Context, appUUID string, force bool) error {
	if _, err := a.app(appUUID); err != nil {
		return err
	}
	var removeErr error
	err := a.act(ctx, appUUID, force,
		func(o *overrides) { o.heldApps[appUUID] = true },
		func(snap reeve.Snapshot) bool {
			if len(containers(snap, appUUID, "")) > 0 {
				return false
			}
			for _, v := range snap.Volumes {
				if v.AppUUID == appUUID {
					if err := a.rt.RemoveVolume(ctx, appUUID, v.Name); err != nil {
						removeErr = fmt.Errorf("remove volume %s: %w", v.Name, err)
						return true
					}
				}
			}
			return true
		},
		func(o *overrides) { delete(o.heldApps, appUUID) },
		a.running(appUUID, ""))
	return errors.Join(err, removeErr)
}

// RestartService recreates one service's container.
func (a *Agent) RestartService(ctx context.Context, appUUID, service string, force bool) error {
	if err := a.service(appUUID, service); err != nil {
		return err
	}
	key := svcKey(appUUID, service)
	return a.act(ctx, appUUID, force,
		func(o *overrides) { o.heldSvcs[key] = true; delete(o.stopped, key) },
		gone(appUUID, service),
		func(o *overrides) { delete(o.heldSvcs, key) },
		a.running(appUUID, service))
}

// StopService stops one service until StartService, a restart, or a new
// release of its app.
func (a *Agent) StopService(ctx context.Context, appUUID, service string, force bool) error {
	if err := a.service(appUUID, service); err != nil {
		return err
	}
	key := svcKey(appUUID, service)
	return a.act(ctx, appUUID, force, func(o *overrides) { o.stopped[key] = true }, notRunning(appUUID, service), nil, nil)
}

// StartService starts a service stopped through the API (or exited).
func (a *Agent) StartService(ctx context.Context, appUUID, service string) error {
	if err := a.service(appUUID, service); err != nil {
		return err
	}
	key := svcKey(appUUID, service)
	return a.act(ctx, appUUID, true, func(o *overrides) { delete(o.stopped, key) }, a.running(appUUID, service), nil, nil)
}

// StopApp stops every service of the app.
func (a *Agent) StopApp(ctx context.Context, appUUID string, force bool) error {
	app, err := a.app(appUUID)
	if err != nil {
		return err
	}
	_, rel, _ := app.Release()
	return a.act(ctx, appUUID, force, func(o *overrides) {
		for name := range rel.Services {
			o.stopped[svcKey(appUUID, name)] = true
		}
	}, notRunning(appUUID, ""), nil, nil)
}

// StartApp starts every service of the app stopped through the API.
func (a *Agent) StartApp(ctx context.Context, appUUID string) error {
	if _, err := a.app(appUUID); err != nil {
		return err
	}
	return a.act(ctx, appUUID, true, func(o *overrides) {
		for key := range o.stopped {
			if strings.HasPrefix(key, appUUID+"/") {
				delete(o.stopped, key)
			}
		}
	}, a.running(appUUID, ""), nil, nil)
}

// running says whether the services that should run (one, or all of the
// app) have a running container. Services that run once and are done
// (restart "no", exited) count as done.
func (a *Agent) running(appUUID, service string) func(reeve.Snapshot) bool {
	return func(snap reeve.Snapshot) bool {
		app, err := a.app(appUUID)
		if err != nil {
			return true // removed meanwhile: nothing to wait for
		}
		_, rel, _ := app.Release()
		for name, svc := range rel.Services {
			if (service != "" && name != service) || !svc.Running {
				continue
			}
			cs := containers(snap, appUUID, name)
			ok := false
			for _, c := range cs {
				ok = ok || c.IsRunning() || (c.Status == reeve.StatusExited && svc.Composition.RestartPolicy() == "no")
			}
			if !ok {
				return false
			}
		}
		return true
	}
}

// CleanupVolumes removes the volumes on the device that no app of the
// target uses, and returns their names.
func (a *Agent) CleanupVolumes(ctx context.Context) ([]string, error) {
	a.actMu.Lock()
	defer a.actMu.Unlock()
	dev, _, ok := a.deviceTarget()
	if !ok {
		return nil, reeve.Errorf(reeve.CodeConflict, "the agent has no target yet: nothing is known to be unused")
	}
	snap, err := a.rt.Snapshot(ctx)
	if err != nil {
		return nil, err
	}
	var removed []string
	var errs []error
	for _, v := range snap.Volumes {
		if app, ok := dev.Apps[v.AppUUID]; ok {
			if _, rel, hasRel := app.Release(); hasRel && hasVolume(rel, v.Name) {
				continue // in use
			}
		}
		if len(containers(snap, v.AppUUID, "")) > 0 {
			continue // a container of its app may still mount it
		}
		if err := a.rt.RemoveVolume(ctx, v.AppUUID, v.Name); err != nil {
			errs = append(errs, fmt.Errorf("remove volume %s: %w", v.Name, err))
			continue
		}
		removed = append(removed, v.Name)
	}
	slices.Sort(removed)
	return removed, errors.Join(errs...)
}

func hasVolume(rel reeve.Release, name string) bool {
	_, ok := rel.Volumes[name]
	return ok
}

// Keys. The device-wide key is stored in the database; an app's key is
// derived from a second stored secret, so that apps keep theirs when the
// device-wide key is regenerated (their containers have it in their
// environment).

// APIKey returns the device-wide API key.
func (a *Agent) APIKey() string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.apiKey
}

// AppAPIKey returns the key of one app, for its services labelled
// io.reeve.features.supervisor-api.
func (a *Agent) AppAPIKey(appUUID string) string {
	m := hmac.New(sha256.New, []byte(a.appKeySeed))
	m.Write([]byte("app/" + appUUID))
	return hex.EncodeToString(m.Sum(nil))[:40]
}

// AppForKey says which app of the target an app key belongs to.
func (a *Agent) AppForKey(key string) (string, bool) {
	a.mu.Lock()
	apps := slices.Collect(maps.Keys(a.target[a.uuid].Apps))
	a.mu.Unlock()
	for _, uuid := range apps {
		if subtle.ConstantTimeCompare([]byte(a.AppAPIKey(uuid)), []byte(key)) == 1 {
			return uuid, true
		}
	}
	return "", false
}

// RegenerateAPIKey replaces the device-wide key; the old one stops working.
func (a *Agent) RegenerateAPIKey(ctx context.Context) (string, error) {
	key := newSecret()
	if err := a.db.set(ctx, "api_key", key); err != nil {
		return "", err
	}
	if err := a.writeKeyFile(key); err != nil {
		return "", err
	}
	a.mu.Lock()
	a.apiKey = key
	a.mu.Unlock()
	a.log.Info("device API key regenerated")
	return key, nil
}

// KeyFile is where the device-wide key is written for `reeve local` on the
// device (readable by the agent's user only).
func (a *Agent) KeyFile() string { return filepath.Join(a.cfg.DataDir, "api-key") }

func (a *Agent) writeKeyFile(key string) error {
	return atomicfile.Write(a.KeyFile(), []byte(key+"\n"), 0o600)
}

func newSecret() string { return newUUID() + newUUID() }
