package agent

import (
	"fmt"
	"sort"
	"strings"
	"time"

	"reeve.dev/reeve"
	"reeve.dev/reeve/internal/engine"
)

// App states.
const (
	AppStateApplied  = "applied"  // converged
	AppStateApplying = "applying" // steps in progress or waiting on downloads
	AppStateLocked   = "locked"   // an update waits for a service's update lock
	AppStateError    = "error"    // the last batch failed; retrying with backoff
)

// Service statuses as shown to people.
const (
	SvcDownloading = "downloading"
	SvcInstalling  = "installing"
	SvcStarting    = "starting"
	SvcRunning     = "running"
	SvcStopping    = "stopping"
	SvcStopped     = "stopped"
	SvcExited      = "exited"
	SvcHandingOver = "handing over"
	SvcWaiting     = "waiting"
	SvcRemoving    = "removing"
	SvcDead        = "dead"
	SvcRestarting  = "restarting" // crashed; the runtime starts it again after a growing delay
)

// Status is what the agent is doing, for people and the API.
type Status struct {
	DeviceUUID    string          `json:"device_uuid"`
	AppState      string          `json:"app_state"`
	Runtime       string          `json:"runtime"`
	RuntimeError  string          `json:"runtime_error,omitempty"`
	LastError     string          `json:"last_error,omitempty"`
	RetryAt       time.Time       `json:"retry_at,omitzero"`
	TargetVersion int64           `json:"target_version"`
	Steps         []string        `json:"steps,omitempty"`
	Services      []ServiceStatus `json:"services"`
	// ConfigWarnings name device config values the agent could not use
	// (it uses their defaults).
	ConfigWarnings []string  `json:"config_warnings,omitempty"`
	UpdatedAt      time.Time `json:"updated_at,omitzero"`
}

// ServiceStatus is one service's state.
type ServiceStatus struct {
	AppUUID          string `json:"app_uuid"`
	AppName          string `json:"app_name"`
	Service          string `json:"service"`
	Commit           string `json:"commit"` // the target release
	CurrentCommit    string `json:"current_commit,omitempty"`
	Image            string `json:"image"`
	Status           string `json:"status"`
	DownloadProgress *int   `json:"download_progress,omitempty"`
	ExitCode         *int   `json:"exit_code,omitempty"`
	Health           string `json:"health,omitempty"`
	RestartCount     int    `json:"restart_count"`
	ContainerID      string `json:"container_id,omitempty"`
	Detail           string `json:"detail,omitempty"`
	Error            string `json:"error,omitempty"`
}

// Status returns a copy of the current status.
func (a *Agent) Status() Status {
	a.mu.Lock()
	defer a.mu.Unlock()
	s := a.status
	s.Services = append([]ServiceStatus(nil), s.Services...)
	s.Steps = append([]string(nil), s.Steps...)
	s.Runtime = a.rt.Name()
	return s
}

// setStatus derives every service's status from the snapshot, the target,
// the planned steps and downloads in progress.
func (a *Agent) setStatus(snap reeve.Snapshot, dev reeve.DeviceTarget, version int64, steps []engine.Step, env engine.Env) {
	byStep := map[string]engine.Step{} // the step acting on a service
	waits := map[string]string{}       // why a service waits
	appWait := map[string]string{}     // why an app waits
	for _, s := range steps {
		switch {
		case s.Action == engine.ActionNoop && s.Service != "":
			waits[svcKey(s.AppUUID, s.Service)] = s.Reason
		case s.Action == engine.ActionNoop:
			appWait[s.AppUUID] = s.Reason
		case s.Service != "":
			byStep[svcKey(s.AppUUID, s.Service)] = s
		}
	}
	containers := map[string][]reeve.ServiceState{}
	for _, c := range snap.Containers {
		k := svcKey(c.AppUUID, c.ServiceName)
		containers[k] = append(containers[k], c)
	}

	a.mu.Lock()
	defer a.mu.Unlock()
	var out []ServiceStatus
	seen := map[string]bool{}
	locked := false
	lockedApps := map[string]bool{}
	for _, appUUID := range sortedAppKeys(dev.Apps) {
		app := dev.Apps[appUUID]
		commit, rel, ok := app.Release()
		if !ok || app.Class == reeve.ClassDependent { // dependent apps run nothing here
			continue
		}
		lock := env.Locks[appUUID]
		for _, name := range sortedServiceKeys(rel.Services) {
			svc := rel.Services[name]
			k := svcKey(appUUID, name)
			seen[k] = true
			ref, _ := reeve.NormalizeImage(svc.Image)
			st := ServiceStatus{AppUUID: appUUID, AppName: app.Name, Service: name, Commit: commit, Image: ref}
			hash := svc.ConfigHash()
			var match, old *reeve.ServiceState
			for i := range containers[k] {
				c := &containers[k][i]
				if c.ConfigHash == hash {
					match = c
				} else {
					old = c
				}
			}
			shown := match
			if shown == nil {
				shown = old
			}
			if shown != nil {
				st.ContainerID = shown.ID
				st.CurrentCommit = shown.Commit
				st.Health = shown.Health
				st.RestartCount = shown.RestartCount
				st.Status = containerStatus(*shown)
				if shown.Status == reeve.StatusExited || shown.Status == reeve.StatusDead || shown.Status == reeve.StatusRestarting {
					code := shown.ExitCode
					st.ExitCode = &code
				}
				if shown.Status == reeve.StatusRestarting {
					st.Detail = fmt.Sprintf("crash loop: exited with code %d, restarted %d times; the engine starts it again after a delay that doubles up to 1 min", shown.ExitCode, shown.RestartCount)
				}
			} else {
				st.Status = SvcWaiting
			}
			if f, ok := a.fetches[ref]; ok && match == nil {
				pc := f.progress.Percent()
				st.DownloadProgress = &pc
				if shown == nil {
					st.Status = SvcDownloading
				} else {
					st.Detail = fmt.Sprintf("downloading the new release %d %%", pc)
				}
			}
			if ff, ok := a.fetchFailed[ref]; ok && match == nil {
				st.Error = "download failed: " + ff.err
			}
			if s, ok := byStep[k]; ok {
				switch s.Action {
				case engine.ActionStart:
					if s.Current == nil {
						st.Status = SvcInstalling
					} else {
						st.Status = SvcStarting
					}
				case engine.ActionKill, engine.ActionStop:
					st.Status = SvcStopping
				case engine.ActionHandover:
					st.Status = SvcHandingOver
				}
			}
			if lock.HeldByUser && !env.Force && match == nil && old != nil {
				st.Detail = "update locked by a service"
				locked = true
				lockedApps[appUUID] = true
			}
			if r, ok := waits[k]; ok {
				st.Detail = r
				if strings.HasPrefix(r, engine.HandingOverPrefix) {
					st.Status = SvcHandingOver
				}
			} else if r, ok := appWait[appUUID]; ok && st.Status == SvcWaiting {
				st.Detail = r
			}
			if e, ok := a.svcErrors[k]; ok && st.Error == "" {
				st.Error = e
			}
			if !svc.Running && match != nil && !match.IsRunning() {
				st.Status = SvcStopped
			}
			out = append(out, st)
		}
	}
	for k, cs := range containers {
		if seen[k] {
			continue
		}
		for _, c := range cs {
			out = append(out, ServiceStatus{AppUUID: c.AppUUID, Service: c.ServiceName, CurrentCommit: c.Commit,
				Image: c.Image, Status: SvcRemoving, ContainerID: c.ID})
		}
	}
	sort.SliceStable(out, func(i, j int) bool {
		if out[i].AppUUID != out[j].AppUUID {
			return out[i].AppUUID < out[j].AppUUID
		}
		return out[i].Service < out[j].Service
	})
	a.status.Services = out
	a.noteContainers(snap.Containers)
	a.noteLocked(lockedApps)
	_, a.status.ConfigWarnings = reeve.ParseDeviceConfig(dev.Config, reeve.DefaultDeviceConfig())
	a.status.TargetVersion = version
	a.status.RuntimeError = ""
	a.status.UpdatedAt = a.cfg.Now()
	a.status.Steps = a.status.Steps[:0]
	for _, s := range steps {
		a.status.Steps = append(a.status.Steps, s.String())
	}
	failing := false
	for _, s := range steps {
		if _, ok := a.stepFailed[stepKey(s)]; ok {
			failing = true
		}
	}
	switch {
	case len(steps) == 0:
		a.status.AppState = AppStateApplied
		a.status.LastError = ""
		a.status.RetryAt = time.Time{}
	case locked:
		a.status.AppState = AppStateLocked
	case failing:
		a.status.AppState = AppStateError
	default:
		a.status.AppState = AppStateApplying
	}
}

func containerStatus(c reeve.ServiceState) string {
	switch c.Status {
	case reeve.StatusRunning, reeve.StatusPaused:
		return SvcRunning
	case reeve.StatusRestarting:
		return SvcRestarting
	case reeve.StatusCreated:
		return SvcInstalling
	case reeve.StatusExited:
		return SvcExited
	case reeve.StatusDead:
		return SvcDead
	case reeve.StatusRemoving:
		return SvcRemoving
	}
	return c.Status
}

func sortedAppKeys(m map[string]reeve.App) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
