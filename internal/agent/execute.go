package agent

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"

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
			// nothing waits on its removal again. Not a failed step.
			a.log.Warn("image kept: it could not be removed", "image", s.Image, "err", err)
		}
		return a.db.removeOwnedImage(ctx, s.Image)
	case engine.ActionCleanup:
		return rt.Cleanup(ctx)
	case engine.ActionTakeLock:
		return a.takeLock(ctx, s.AppUUID, s.Services, env.Force || a.forced(s.AppUUID))
	case engine.ActionReleaseLock:
		return a.releaseLock(ctx, s.AppUUID)
	case engine.ActionUpdateDependentTargets, engine.ActionSendDependentHooks, engine.ActionRemoveDependentApp:
		return a.dependentStep(ctx, s)
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

// forced reports whether an API action forces through the app's locks.
func (a *Agent) forced(app string) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.ov.force[app]
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
	if supervisorAPI(spec.Service) && a.cfg.APIAddress != "" {
		host, port, _ := net.SplitHostPort(a.cfg.APIAddress)
		if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
			host = "127.0.0.1" // listening everywhere: loopback reaches it from the host network
		}
		vals["SUPERVISOR_HOST"] = host
		vals["SUPERVISOR_PORT"] = port
		vals["SUPERVISOR_ADDRESS"] = "http://" + net.JoinHostPort(host, port)
		vals["SUPERVISOR_API_KEY"] = a.AppAPIKey(spec.AppUUID)
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

// LabelSupervisorAPI gives a service its app's key to the agent's API.
const LabelSupervisorAPI = "io.reeve.features.supervisor-api"

func supervisorAPI(svc reeve.Service) bool {
	v, _ := svc.Label(LabelSupervisorAPI)
	return v == "1" || strings.EqualFold(v, "true")
}

// lockToken is what the agent writes into the lock files it makes, so that
// a file is known as the agent's by its content, whatever the database says
// (a record left by a crash must never make a service's lock look like the
// agent's).
func (a *Agent) lockToken() []byte { return []byte("reeve-agent " + a.uuid + "\n") }

// lockHolder says whether a service's lock directory holds updates.lock,
// and whether the agent made it.
func (a *Agent) lockHolder(dir string) (held, ours bool) {
	b, err := os.ReadFile(filepath.Join(dir, lockFile))
	if err != nil {
		// Missing, or unreadable: an unreadable file counts as held by the
		// service, the safe side.
		return !errors.Is(err, fs.ErrNotExist), false
	}
	return true, bytes.Equal(b, a.lockToken())
}

// takeLock takes the update locks of an app's services. Each is recorded in
// the database before its file is made, so that after a crash it is
// released; the file carries the agent's token, so that only the agent's
// own files are ever removed. A lock a service holds stops the update
// (ErrLocked) unless force is set; the service's file is never touched.
func (a *Agent) takeLock(ctx context.Context, app string, services []string, force bool) error {
	ctx = context.WithoutCancel(ctx) // a half-taken lock is undone even if the batch is cancelled
	for _, svc := range services {
		dir := a.lockDir(app, svc)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return fmt.Errorf("create lock directory: %w", err)
		}
		if err := a.db.addAgentLock(ctx, app, svc); err != nil {
			return err
		}
		err := a.createLockFile(dir)
		if err == nil {
			continue
		}
		if !errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("take update lock of %s: %w", svc, err)
		}
		if _, ours := a.lockHolder(dir); ours || force {
			continue // ours from before a crash, or overridden
		}
		// Held by the service itself: give back what was taken.
		return errors.Join(a.releaseLock(ctx, app), fmt.Errorf("%w %s", ErrLocked, svc))
	}
	return nil
}

// createLockFile makes updates.lock holding the agent's token, or fails
// with fs.ErrExist. The file appears whole or not at all (written aside,
// then hard-linked, which fails if the name exists): a kill in between
// never leaves an empty file that would read as a service's lock.
func (a *Agent) createLockFile(dir string) error {
	tmp, err := os.CreateTemp(dir, ".agent-lock-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	_, werr := tmp.Write(a.lockToken())
	if err := errors.Join(werr, tmp.Close()); err != nil {
		return err
	}
	return os.Link(tmp.Name(), filepath.Join(dir, lockFile))
}

// releaseLock removes the lock files the agent made for an app (those with
// its token) and forgets its records.
func (a *Agent) releaseLock(ctx context.Context, app string) error {
	ctx = context.WithoutCancel(ctx)
	locks, err := a.db.agentLocks(ctx)
	if err != nil {
		return err
	}
	if err := a.releaseLockFiles(ctx, app, locks[app]); err != nil {
		return err
	}
	return a.db.removeAgentLocks(ctx, app)
}

func (a *Agent) releaseLockFiles(_ context.Context, app string, services []string) error {
	for _, svc := range services {
		dir := a.lockDir(app, svc)
		if _, ours := a.lockHolder(dir); !ours {
			continue // a service's own lock, or none
		}
		err := os.Remove(filepath.Join(dir, lockFile))
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("release update lock of %s: %w", svc, err)
		}
	}
	return nil
}

// dependentStep carries out a step of a dependent app.
func (a *Agent) dependentStep(ctx context.Context, s engine.Step) error {
	d := a.cfg.Dependents
	if d == nil {
		return errors.New("this agent carries no dependent devices")
	}
	switch s.Action {
	case engine.ActionUpdateDependentTargets:
		return d.UpdateTargets(ctx, *s.Dependent)
	case engine.ActionSendDependentHooks:
		return d.ReleaseHooks(ctx, s.AppUUID, s.Hash)
	default:
		return d.RemoveApp(ctx, s.AppUUID)
	}
}
