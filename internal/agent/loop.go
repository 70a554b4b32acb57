package agent

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"sync"
	"time"

	"reeve.dev/reeve"
	"reeve.dev/reeve/internal/engine"
	"reeve.dev/reeve/internal/runtime"
)

type outcome int

const (
	converged  outcome = iota // nothing to do
	waiting                   // only noops: something is in progress elsewhere
	progressed                // steps ran
)

// loop is the one place that applies: a single goroutine, so there is never
// more than one apply at a time.
func (a *Agent) loop(ctx context.Context) {
	// What a crash may have left behind (helper containers of a volume
	// copy cut short) goes first; failing here only costs disk.
	if err := a.rt.Cleanup(ctx); err != nil && ctx.Err() == nil {
		a.log.Warn("cleanup of leftovers failed", "err", err)
	}
	failures := 0
	for {
		if ctx.Err() != nil {
			return
		}
		out, err := a.applyOnce(ctx)
		a.mu.Lock()
		a.loopAlive = a.cfg.Now()
		a.mu.Unlock()
		var delay time.Duration
		switch {
		case ctx.Err() != nil:
			return
		case errors.Is(err, context.Canceled):
			// The target was replaced mid-batch: plan again at once.
			delay = 0
		case err != nil:
			failures++
			maxD := a.cfg.BackoffMax
			if errors.Is(err, runtime.ErrUnavailable) {
				// An engine that is not up yet (at boot, say) is looked
				// for often: nothing can be done until it answers.
				maxD = min(maxD, 10*time.Second)
			}
			delay = backoff(a.cfg.BackoffMin, maxD, failures)
			a.setLoopError(err, a.cfg.Now().Add(delay))
			a.log.Warn("apply failed", "err", err, "retry_in", delay.Round(time.Millisecond))
		case out == converged:
			failures = 0
			delay = a.cfg.ReconcileInterval
		case out == waiting:
			failures = 0
			delay = a.cfg.NoopDelay
		default:
			failures = 0
		}
		if delay == 0 {
			continue
		}
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-a.wake:
		case <-t.C:
		}
		t.Stop()
	}
}

// backoff returns min·2^(n-1), capped at max.
func backoff(minD, maxD time.Duration, n int) time.Duration {
	d := minD
	for i := 1; i < n && d < maxD; i++ {
		d *= 2
	}
	return min(d, maxD)
}

// applyOnce reads the runtime, plans, and runs one batch. Its error is for
// what stops the whole round (the runtime unreachable); a step that fails
// waits out its own backoff while the others go on.
func (a *Agent) applyOnce(ctx context.Context) (outcome, error) {
	dev, version, ok := a.deviceTarget()
	if !ok {
		// No valid target yet: touch nothing. An empty plan would remove
		// every app reeve finds.
		a.setIdle(version)
		return converged, nil
	}
	bctx, cancel := context.WithCancel(ctx)
	defer cancel()
	a.mu.Lock()
	if a.version != version { // replaced between the two locks
		a.mu.Unlock()
		return progressed, nil
	}
	a.applyCancel = cancel
	a.mu.Unlock()
	defer func() {
		a.mu.Lock()
		a.applyCancel = nil
		a.mu.Unlock()
	}()

	// Downloads are read before the runtime: one that ends in between is
	// then seen as present, not as missing and idle (which would fetch it
	// again).
	downloads := a.downloadState()
	snap, err := a.rt.Snapshot(bctx)
	if err != nil {
		a.setRuntimeError(err)
		return 0, fmt.Errorf("read %s state: %w", a.rt.Name(), err)
	}
	if a.cfg.Observe != nil {
		a.cfg.Observe(snap)
	}
	env, err := a.planEnv(bctx, snap, dev, downloads)
	if err != nil {
		return 0, err
	}
	steps := engine.Plan(snap, dev, env)
	a.cancelUnneededFetches(dev)

	var batch []engine.Step
	for _, s := range steps {
		switch {
		case s.Action == engine.ActionFetch:
			a.startFetch(ctx, s)
		case s.Action == engine.ActionNoop:
		case a.inBackoff(s):
			// failed recently: it waits out its backoff
		default:
			batch = append(batch, s)
		}
	}
	a.setStatus(snap, dev, version, steps, env)
	switch {
	case len(steps) == 0:
		return converged, nil
	case len(batch) == 0:
		// waiting on downloads, a hand-over, or failed steps' backoff
		return waiting, nil
	}
	for _, s := range batch {
		a.log.Info("step", "step", s.String())
	}
	return progressed, a.runBatch(bctx, batch, env)
}

// stepKey identifies a step across rounds, for its backoff.
func stepKey(s engine.Step) string {
	k := string(s.Action) + "|" + s.AppUUID + "|" + s.Service + "|" + s.Image
	if s.Network != nil {
		k += "|net:" + s.Network.Name
	}
	if s.Volume != nil {
		k += "|vol:" + s.Volume.Name
	}
	if s.Current != nil && s.Action != engine.ActionStart {
		// A start that created its container and then failed is the same
		// start when it is tried again on that container.
		k += "|" + s.Current.ID
	}
	return k
}

func (a *Agent) inBackoff(s engine.Step) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	f, ok := a.stepFailed[stepKey(s)]
	return ok && a.cfg.Now().Before(f.retryAt)
}

// runBatch runs the steps of one batch concurrently. A step that fails is
// retried after its own capped backoff, so one broken service does not slow
// the others; the error is returned only when the runtime went away.
func (a *Agent) runBatch(ctx context.Context, batch []engine.Step, env engine.Env) error {
	var wg sync.WaitGroup
	errs := make([]error, len(batch))
	for i, s := range batch {
		wg.Add(1)
		go func() {
			defer wg.Done()
			a.logStep(s, false, nil)
			errs[i] = a.execute(ctx, s, env)
			a.logStep(s, true, errs[i])
		}()
	}
	wg.Wait()

	var failed []error
	var unavailable error
	now := a.cfg.Now()
	a.mu.Lock()
	defer a.mu.Unlock()
	var retryAt time.Time
	for i, s := range batch {
		err := errs[i]
		key, svc := stepKey(s), svcKey(s.AppUUID, s.Service)
		switch {
		case err == nil:
			delete(a.stepFailed, key)
			if s.Service != "" {
				delete(a.svcErrors, svc)
			}
		case errors.Is(err, context.Canceled):
			// the target was replaced: not the step's fault
		default:
			err = fmt.Errorf("%s: %w", s, err)
			failed = append(failed, err)
			if errors.Is(err, runtime.ErrUnavailable) {
				unavailable = err
			}
			f := a.stepFailed[key]
			if f == nil {
				f = &fetchFailure{}
				a.stepFailed[key] = f
			}
			f.attempts++
			f.err = err.Error()
			f.retryAt = now.Add(backoff(a.cfg.BackoffMin, a.cfg.BackoffMax, f.attempts))
			if retryAt.IsZero() || f.retryAt.Before(retryAt) {
				retryAt = f.retryAt
			}
			if s.Service != "" {
				a.svcErrors[svc] = err.Error()
			}
			a.log.Warn("step failed", "step", s.String(), "err", err, "retry_in", f.retryAt.Sub(now).Round(time.Millisecond))
		}
	}
	if len(failed) > 0 {
		a.status.LastError = errors.Join(failed...).Error()
		a.status.RetryAt = retryAt
		if a.status.AppState != AppStateLocked {
			a.status.AppState = AppStateError
		}
	} else if len(a.stepFailed) == 0 {
		a.status.LastError, a.status.RetryAt = "", time.Time{}
	}
	return unavailable
}

// downloads is what the agent knows of downloads at one moment.
type downloads struct {
	inFlight map[string]bool
	failed   map[string]*fetchFailure
}

func (a *Agent) downloadState() downloads {
	a.mu.Lock()
	defer a.mu.Unlock()
	d := downloads{inFlight: map[string]bool{}, failed: map[string]*fetchFailure{}}
	for ref := range a.fetches {
		d.inFlight[ref] = true
	}
	for ref, f := range a.fetchFailed {
		c := *f
		d.failed[ref] = &c
	}
	return d
}

// planEnv gathers what the planner needs besides state: downloads, locks,
// hand-over signals, owned images.
func (a *Agent) planEnv(ctx context.Context, snap reeve.Snapshot, dev reeve.DeviceTarget, dl downloads) (engine.Env, error) {
	owned, err := a.db.ownedImages(ctx)
	if err != nil {
		return engine.Env{}, err
	}
	agentLocks, err := a.db.agentLocks(ctx)
	if err != nil {
		return engine.Env{}, err
	}
	env := engine.Env{
		Now:          a.cfg.Now(),
		InFlight:     dl.inFlight,
		FetchFailed:  map[string]string{},
		HandoverDone: map[string]bool{},
		Locks:        map[string]engine.LockState{},
		OwnedImages:  owned,
		Force:        overrideLock(dev.Config),
	}
	a.mu.Lock()
	env.KeepImages = a.ov.intermediate()
	forced := maps.Clone(a.ov.force)
	env.DependentTargets = a.target.DependentApps(a.uuid)
	a.mu.Unlock()
	if a.cfg.Dependents != nil {
		if env.Dependents, err = a.cfg.Dependents.PlanState(ctx); err != nil {
			return engine.Env{}, fmt.Errorf("read the dependent apps: %w", err)
		}
	}
	for ref, f := range dl.failed {
		env.FetchFailed[ref] = f.err
		if env.Now.Before(f.retryAt) {
			// Not yet time to retry: the planner treats it as in flight so
			// that it neither re-fetches nor lets anything depend on it.
			env.InFlight[ref] = true
		}
	}

	apps := map[string]map[string]bool{} // app → services to look at
	for _, c := range snap.Containers {
		if apps[c.AppUUID] == nil {
			apps[c.AppUUID] = map[string]bool{}
		}
		apps[c.AppUUID][c.ServiceName] = true
	}
	for uuid, app := range dev.Apps {
		if _, rel, ok := app.Release(); ok && app.Class != reeve.ClassDependent {
			if apps[uuid] == nil {
				apps[uuid] = map[string]bool{}
			}
			for name := range rel.Services {
				apps[uuid][name] = true
			}
		}
	}
	for app, held := range agentLocks {
		env.Locks[app] = engine.LockState{HeldByAgent: len(held) > 0}
		if apps[app] == nil {
			apps[app] = map[string]bool{}
		}
	}
	holders := map[string][]string{}
	for app, svcs := range apps {
		ls := env.Locks[app]
		for svc := range svcs {
			dir := a.lockDir(app, svc)
			if held, ours := a.lockHolder(dir); held && !ours && !forced[app] {
				ls.HeldByUser = true
				holders[app] = append(holders[app], svc)
			}
			if _, err := os.Stat(filepath.Join(dir, handoverFile)); err == nil {
				env.HandoverDone[svcKey(app, svc)] = true
			}
		}
		env.Locks[app] = ls
		slices.Sort(holders[app])
	}
	a.mu.Lock()
	a.lockHolders = holders
	a.mu.Unlock()
	return env, nil
}

// overrideLock reports whether the device config overrides update locks.
func overrideLock(cfg map[string]string) bool {
	dc, _ := reeve.ParseDeviceConfig(cfg, reeve.DefaultDeviceConfig())
	return dc.OverrideLock
}

// startFetch downloads an image in the background; the loop is woken when
// it ends. Downloads are owned by the agent, not by a batch: a batch that is
// cancelled does not cancel a download still needed.
func (a *Agent) startFetch(ctx context.Context, s engine.Step) {
	ref := s.Image
	a.mu.Lock()
	if _, ok := a.fetches[ref]; ok {
		a.mu.Unlock()
		return
	}
	if f, ok := a.fetchFailed[ref]; ok && a.cfg.Now().Before(f.retryAt) {
		a.mu.Unlock()
		return
	}
	fctx, cancel := context.WithCancel(ctx)
	f := &fetch{cancel: cancel}
	a.fetches[ref] = f
	a.mu.Unlock()

	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		defer cancel()
		// Recorded before pulling, so that an image pulled by a download
		// cut short by a power cut is still known to be ours.
		err := a.db.addOwnedImage(fctx, ref)
		if err == nil {
			a.log.Info("downloading image", "image", ref, "service", s.Service)
			a.sys(s.Service, "Downloading image %s for service %s", ref, s.Service)
			milestone := 0
			progress := func(p runtime.Progress) {
				a.mu.Lock()
				f.progress = p
				a.mu.Unlock()
				if m := downloadMilestone(p.Percent()); m > milestone && m < 100 {
					milestone = m
					a.sys(s.Service, "Downloading image for service %s: %d %%", s.Service, m)
				}
			}
			err = a.rt.Fetch(fctx, ref, progress)
			if errors.Is(err, runtime.ErrNoSpace) && a.makeRoom(fctx, ref) {
				err = a.rt.Fetch(fctx, ref, progress)
			}
		}
		a.mu.Lock()
		delete(a.fetches, ref)
		switch {
		case err == nil:
			delete(a.fetchFailed, ref)
		case fctx.Err() != nil:
			// cancelled: the image is no longer needed, or the agent stops
		default:
			ff := a.fetchFailed[ref]
			if ff == nil {
				ff = &fetchFailure{}
				a.fetchFailed[ref] = ff
			}
			ff.attempts++
			ff.err = err.Error()
			ff.retryAt = a.cfg.Now().Add(backoff(a.cfg.BackoffMin, a.cfg.FetchBackoffMax, ff.attempts))
		}
		a.mu.Unlock()
		if err != nil && fctx.Err() == nil {
			a.log.Warn("download failed", "image", ref, "err", err)
			a.sys(s.Service, "Failed to download image %s: %v", ref, err)
		} else if err == nil {
			a.log.Info("downloaded image", "image", ref)
			a.sys(s.Service, "Downloaded image %s", ref)
		}
		a.Wake()
	}()
}

// makeRoom removes the images the agent fetched that nothing uses any
// more (not the running release's, not the target's, not one being
// downloaded), so that ref may fit. It reports whether it removed any.
func (a *Agent) makeRoom(ctx context.Context, ref string) bool {
	snap, err := a.rt.Snapshot(ctx)
	if err != nil {
		return false
	}
	dev, _, _ := a.deviceTarget()
	owned, err := a.db.ownedImages(ctx)
	if err != nil {
		return false
	}
	inFlight := a.downloadState().inFlight
	a.mu.Lock()
	deps := a.target.DependentApps(a.uuid)
	a.mu.Unlock()
	removed := false
	for _, img := range engine.UnusedImages(snap, dev, engine.Env{OwnedImages: owned, InFlight: inFlight, DependentTargets: deps}) {
		if err := a.rt.RemoveImage(ctx, img); err != nil {
			a.log.Warn("could not remove an unused image to make room", "image", img, "err", err)
			continue
		}
		if err := a.db.removeOwnedImage(ctx, img); err != nil {
			a.log.Warn("forget removed image", "image", img, "err", err)
		}
		a.log.Info("removed an unused image to make room", "image", img, "for", ref)
		removed = true
	}
	return removed
}

// cancelUnneededFetches stops downloads of images no service of the target
// uses any more.
func (a *Agent) cancelUnneededFetches(dev reeve.DeviceTarget) {
	needed := map[string]bool{}
	for _, app := range dev.Apps {
		if _, rel, ok := app.Release(); ok {
			for _, svc := range rel.Services {
				if ref, err := reeve.NormalizeImage(svc.Image); err == nil {
					needed[ref] = true
				}
			}
		}
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, da := range a.target.DependentApps(a.uuid) { // firmware of pinned devices too
		for _, img := range da.Images() {
			if ref, err := reeve.NormalizeImage(img); err == nil {
				needed[ref] = true
			}
		}
	}
	for ref, f := range a.fetches {
		if !needed[ref] {
			f.cancel()
		}
	}
	for ref := range a.fetchFailed {
		if !needed[ref] {
			delete(a.fetchFailed, ref)
		}
	}
}

// setIdle says that there is no target to apply yet.
func (a *Agent) setIdle(version int64) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.status.AppState = AppStateApplied
	a.status.TargetVersion = version
	a.status.Services = nil
	a.status.Steps = nil
	a.status.RuntimeError = ""
	a.status.UpdatedAt = a.cfg.Now()
}

func (a *Agent) setRuntimeError(err error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.status.RuntimeError = err.Error()
	a.status.AppState = AppStateError
	a.status.UpdatedAt = a.cfg.Now()
}

func (a *Agent) setLoopError(err error, retryAt time.Time) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.status.LastError = err.Error()
	a.status.RetryAt = retryAt
	if a.status.AppState != AppStateLocked {
		a.status.AppState = AppStateError
	}
}

func sortedServiceKeys(m map[string]reeve.Service) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
