package agent

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"

	"reeve.dev/reeve"
	"reeve.dev/reeve/internal/engine"
	"reeve.dev/reeve/internal/runtime"
)

const (
	lockFile     = "updates.lock"
	handoverFile = "handover-complete"
	// lockMounts are where a service finds its lock directory.
	lockMountReeve  = "/tmp/reeve"
	lockMountBalena = "/tmp/balena"
	lockMountResin  = "/tmp/resin"
)

// ErrLocked is returned when a service holds its update lock.
var ErrLocked = errors.New("update locked by a service")

// execute carries out one step.
func (a *Agent) execute(ctx context.Context, s engine.Step, env engine.Env) error {
	rt := a.rt
	switch s.Action {
	case engine.ActionKill:
		if err := rt.Stop(ctx, s.Current.ID, 0); err != nil {
			return err
		}
		return rt.Remove(ctx, s.Current.ID)
	case engine.ActionStop:
		return rt.Stop(ctx, s.Current.ID, 0)
	case engine.ActionRemove:
		return rt.Remove(ctx, s.Current.ID)
	case engine.ActionStart:
		return a.start(ctx, s)
	case engine.ActionRestart:
		if err := rt.Stop(ctx, s.Current.ID, 0); err != nil {
			return err
		}
		return rt.Start(ctx, s.Current.ID)
	case engine.ActionUpdateMetadata:
		return rt.UpdateMetadata(ctx, s.Current.ID, a.withExtras(*s.Target))
	case engine.ActionHandover:
		return a.handover(ctx, s)
	case engine.ActionCreateNetwork:
		return rt.CreateNetwork(ctx, *s.Network)
	case engine.ActionRemoveNetwork:
		return rt.RemoveNetwork(ctx, s.Network.AppUUID, s.Network.Name)
	case engine.ActionCreateVolume:
		if s.Replace {
			return rt.ReplaceVolume(ctx, *s.Volume)
		}
		return rt.CreateVolume(ctx, *s.Volume)
	case engine.ActionRemoveVolume:
		return rt.RemoveVolume(ctx, s.Volume.AppUUID, s.Volume.Name)
	case engine.ActionRemoveImage:
		err := rt.RemoveImage(ctx, s.Image)
		if err != nil && (errors.Is(err, runtime.ErrUnavailable) || ctx.Err() != nil) {
			return err
		}
		if err != nil {
			// The engine refuses (a container reeve does not own uses it,
			// say): the image is no longer treated as the agent's, so that
			// nothing waits on its removal again.
			a.log.Warn("image kept: it could not be removed", "image", s.Image, "err", err)
		}
		return errors.Join(err, a.db.removeOwnedImage(ctx, s.Image))
	case engine.ActionCleanup:
		return rt.Cleanup(ctx)
	case engine.ActionTakeLock:
		return a.takeLock(ctx, s.AppUUID, s.Services, env.Force)
	case engine.ActionReleaseLock:
		return a.releaseLock(ctx, s.AppUUID)
	case engine.ActionFetch, engine.ActionNoop:
		return nil
	}
	return fmt.Errorf("unknown step %q", s.Action)
}

// start creates the target's container when there is none, then starts it.
func (a *Agent) start(ctx context.Context, s engine.Step) error {
	if s.Current != nil {
		return a.rt.Start(ctx, s.Current.ID)
	}
	spec := a.withExtras(*s.Target)
	dir := a.lockDir(spec.AppUUID, spec.ServiceName)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("create lock directory: %w", err)
	}
	if spec.Service.Strategy() == reeve.StrategyHandOver {
		// A signal left by an earlier hand-over must not end this one.
		if err := os.Remove(filepath.Join(dir, handoverFile)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("clear hand-over signal: %w", err)
		}
	}
	id, err := a.rt.Create(ctx, spec)
	if err != nil {
		return err
	}
	return a.rt.Start(ctx, id)
}

// handover ends a hand-over: the new container has signalled that it has
// taken over (or its time is up), so the old one is killed and the signal
// cleared for the next hand-over. The wait itself is the planner's: it
// plans a noop until then, so the loop and other apps are never held up.
func (a *Agent) handover(ctx context.Context, s engine.Step) error {
	if err := a.rt.Stop(ctx, s.Current.ID, 0); err != nil {
		return err
	}
	if err := a.rt.Remove(ctx, s.Current.ID); err != nil {
		return err
	}
	signal := filepath.Join(a.lockDir(s.AppUUID, s.Service), handoverFile)
	if err := os.Remove(signal); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("clear hand-over signal: %w", err)
	}
	return nil
}

// withExtras adds what the agent gives every container: its identity in the
// environment and its lock directory.
func (a *Agent) withExtras(spec reeve.ServiceSpec) reeve.ServiceSpec {
	env := map[string]string{}
	vals := map[string]string{
		"DEVICE_UUID":  a.uuid,
		"DEVICE_TYPE":  a.cfg.DeviceType,
		"APP_ID":       strconv.FormatInt(spec.AppID, 10),
		"APP_UUID":     spec.AppUUID,
		"APP_NAME":     spec.AppName,
		"SERVICE_NAME": spec.ServiceName,
		"RELEASE":      spec.Commit,
	}
	for k, v := range vals {
		env["REEVE_"+k] = v
		env["BALENA_"+k] = v
		env["RESIN_"+k] = v
	}
	env["REEVE_APP_LOCK_PATH"] = lockMountReeve + "/" + lockFile
	env["BALENA_APP_LOCK_PATH"] = lockMountBalena + "/" + lockFile
	env["RESIN_APP_LOCK_PATH"] = lockMountResin + "/" + lockFile
	spec.ExtraEnv = env
	dir := a.lockDir(spec.AppUUID, spec.ServiceName)
	spec.ExtraMounts = []reeve.Mount{
		{Type: reeve.MountBind, Source: dir, Target: lockMountReeve},
		{Type: reeve.MountBind, Source: dir, Target: lockMountBalena},
		{Type: reeve.MountBind, Source: dir, Target: lockMountResin},
	}
	return spec
}

func lockFileExists(dir string) bool {
	_, err := os.Stat(filepath.Join(dir, lockFile))
	return err == nil
}

// takeLock takes the update locks of an app's services. Each lock is
// recorded in the database before its file is made, so that after a crash it
// is known as the agent's and released, never mistaken for a service's. A
// lock a service holds stops the update (ErrLocked) unless force is set; the
// agent then holds the lock without owning the file, and leaves the
// service's file in place when it releases.
func (a *Agent) takeLock(ctx context.Context, app string, services []string, force bool) error {
	var made []string
	for _, svc := range services {
		dir := a.lockDir(app, svc)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return fmt.Errorf("create lock directory: %w", err)
		}
		if err := a.db.addAgentLock(ctx, app, svc, true); err != nil {
			return err
		}
		f, err := os.OpenFile(filepath.Join(dir, lockFile), os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
		if err == nil {
			f.Close()
			made = append(made, svc)
			continue
		}
		if !errors.Is(err, fs.ErrExist) {
			return errors.Join(fmt.Errorf("take update lock of %s: %w", svc, err), a.db.removeAgentLock(ctx, app, svc))
		}
		if force {
			if err := a.db.addAgentLock(ctx, app, svc, false); err != nil {
				return err
			}
			continue
		}
		// Held by the service itself: give back what was taken.
		errs := []error{a.db.removeAgentLock(ctx, app, svc), a.releaseLockFiles(ctx, app, made)}
		for _, m := range made {
			errs = append(errs, a.db.removeAgentLock(ctx, app, m))
		}
		return errors.Join(append(errs, fmt.Errorf("%w %s", ErrLocked, svc))...)
	}
	return nil
}

// releaseLock removes the lock files the agent made for an app.
func (a *Agent) releaseLock(ctx context.Context, app string) error {
	locks, err := a.db.agentLocks(ctx)
	if err != nil {
		return err
	}
	var files []string
	for _, l := range locks[app] {
		if l.ownsFile {
			files = append(files, l.service)
		}
	}
	if err := a.releaseLockFiles(ctx, app, files); err != nil {
		return err
	}
	return a.db.removeAgentLocks(ctx, app)
}

func (a *Agent) releaseLockFiles(_ context.Context, app string, services []string) error {
	for _, svc := range services {
		err := os.Remove(filepath.Join(a.lockDir(app, svc), lockFile))
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("release update lock of %s: %w", svc, err)
		}
	}
	return nil
}
