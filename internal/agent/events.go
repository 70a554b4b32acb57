package agent

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"reeve.dev/reeve"
	"reeve.dev/reeve/internal/engine"
)

// sys adds one of the agent's own lines to the device's log.
func (a *Agent) sys(service, format string, args ...any) {
	if a.cfg.SystemLog != nil {
		a.cfg.SystemLog(service, fmt.Sprintf(format, args...))
	}
}

// stepMessages says, for the device's log, what a step is about to do and
// what it did; "" for steps the operator does not need to see.
func stepMessages(s engine.Step) (before, after, verb string) {
	svc := s.Service
	switch s.Action {
	case engine.ActionKill:
		return "Killing service " + svc, "Killed service " + svc, "kill service " + svc
	case engine.ActionStop:
		return "Stopping service " + svc, "Stopped service " + svc, "stop service " + svc
	case engine.ActionStart:
		if s.Current == nil {
			return fmt.Sprintf("Installing service %s (%s)", svc, s.Target.Service.Image), "Started service " + svc, "install service " + svc
		}
		return "Starting service " + svc, "Started service " + svc, "start service " + svc
	case engine.ActionRemove:
		return "", "Removed the old container of service " + svc, "remove the old container of service " + svc
	case engine.ActionRestart:
		return "Restarting service " + svc, "Restarted service " + svc, "restart service " + svc
	case engine.ActionUpdateMetadata:
		return "", fmt.Sprintf("Moved service %s to release %s without a restart", svc, shortID(s.Target.Commit)), "update service " + svc
	case engine.ActionHandover:
		return "", "Hand-over complete: killed the old container of service " + svc, "end the hand-over of service " + svc
	case engine.ActionCreateVolume:
		if s.Replace {
			return "Updating volume " + s.Volume.Name + " (its data is kept)", "Updated volume " + s.Volume.Name, "update volume " + s.Volume.Name
		}
		return "", "Created volume " + s.Volume.Name, "create volume " + s.Volume.Name
	case engine.ActionRemoveVolume:
		return "", "Removed volume " + s.Volume.Name, "remove volume " + s.Volume.Name
	case engine.ActionCreateNetwork:
		return "", "Created network " + s.Network.Name, "create network " + s.Network.Name
	case engine.ActionRemoveNetwork:
		return "", "Removed network " + s.Network.Name, "remove network " + s.Network.Name
	case engine.ActionRemoveImage:
		return "", "Deleted image " + s.Image, "delete image " + s.Image
	}
	return "", "", ""
}

// logStep tells the device's log how a step ended (or, before it runs,
// err is nil and started is false: that it starts).
func (a *Agent) logStep(s engine.Step, started bool, err error) {
	before, after, verb := stepMessages(s)
	switch {
	case verb == "":
	case !started:
		if before != "" {
			a.sys(s.Service, "%s", before)
		}
	case err == nil:
		a.sys(s.Service, "%s", after)
	case errors.Is(err, context.Canceled):
	case errors.Is(err, ErrLocked):
		a.sys(s.Service, "Update locked: %s holds its update lock", lockedService(err))
	default:
		a.sys(s.Service, "Failed to %s: %v", verb, err)
	}
}

// lockedService is the service named by an ErrLocked error.
func lockedService(err error) string {
	msg := err.Error()
	if i := strings.LastIndex(msg, ErrLocked.Error()); i >= 0 {
		if svc := strings.TrimSpace(msg[i+len(ErrLocked.Error()):]); svc != "" {
			return "service " + svc
		}
	}
	return "a service"
}

// downloadMilestone is the progress, in steps of 10 %, a download message
// was last written for.
func downloadMilestone(pc int) int { return pc / 10 * 10 }

// noteContainers writes to the device's log what the engine did by itself
// since the last look: a service that exited, one it restarted. Called with
// a.mu held; seen maps container IDs to what was last seen of them.
func (a *Agent) noteContainers(containers []reeve.ServiceState) {
	next := make(map[string]reeve.ServiceState, len(containers))
	for _, c := range containers {
		next[c.ID] = c
		prev, ok := a.seenContainers[c.ID]
		if !ok {
			continue
		}
		switch {
		case c.RestartCount > prev.RestartCount:
			a.sys(c.ServiceName, "Service %s exited with code %d and was restarted by the engine (%d restarts so far)", c.ServiceName, c.ExitCode, c.RestartCount)
		case prev.IsRunning() && (c.Status == reeve.StatusExited || c.Status == reeve.StatusDead):
			a.sys(c.ServiceName, "Service %s exited with code %d", c.ServiceName, c.ExitCode)
		}
	}
	a.seenContainers = next
}

// noteLocked writes to the device's log that an app's update waits for a
// service's lock, once each time it starts waiting. Called with a.mu held.
func (a *Agent) noteLocked(locked map[string]bool) {
	for app := range locked {
		if !a.lockedApps[app] {
			holders := a.lockHolders[app]
			who := "a service"
			if len(holders) > 0 {
				who = "service " + strings.Join(holders, ", ")
			}
			a.sys("", "Update locked by %s: it waits until updates.lock is released", who)
		}
	}
	a.lockedApps = locked
}

func shortID(s string) string {
	if len(s) > 12 {
		return s[:12]
	}
	return s
}
