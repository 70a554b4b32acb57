package fleetlink

import (
	"bytes"
	"context"
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"reflect"
	goruntime "runtime"
	"sort"

	"reeve.dev/reeve/internal/atomicfile"

	"reeve.dev/reeve"
	"reeve.dev/reeve/internal/agent"
)

// reportFile holds the last report the server accepted (all of it, merged),
// so that a restarted agent sends only what changed since.
const reportFile = "fleet-report.json"

type reportCache struct {
	Server string             `json:"server"`
	UUID   string             `json:"uuid"`
	Report reeve.DeviceReport `json:"report"`
	// Dependents holds what the server has of each dependent device.
	Dependents map[string]reeve.DeviceReport `json:"dependents,omitempty"`
}

// reportLoop sends what changed in the device's state, at most once per
// ReportInterval, until ctx ends.
func (l *Link) reportLoop(ctx context.Context) {
	last, lastDeps := l.loadReport()
	var met metricsSample
	var metricsAt = l.cfg.Now() // read now, then every MetricsInterval
	failures := 0
	lastErr := ""
	for {
		if now := l.cfg.Now(); !now.Before(metricsAt) {
			if l.cfg.readMetrics != nil {
				met = l.cfg.readMetrics()
			} else {
				met = l.metrics.read()
			}
			metricsAt = now.Add(l.cfg.MetricsInterval)
		}
		diff, changed := diffReport(last, l.buildReport(met))
		cs := reeve.CurrentState{l.uuid: diff}
		depDiffs := l.dependentDiffs(ctx, lastDeps)
		for uuid, d := range depDiffs {
			cs[uuid] = d
			changed = true
		}
		next := l.cfg.ReportInterval
		if changed {
			rctx, cancel := l.requestContext(ctx, 0)
			err := l.client.Report(rctx, cs)
			cancel()
			if err != nil && ctx.Err() != nil {
				return
			}
			switch {
			case err == nil:
				failures = 0
				mergeReport(&last, diff)
				for uuid, d := range depDiffs {
					r := lastDeps[uuid]
					mergeReport(&r, d)
					lastDeps[uuid] = r
				}
				l.saveReport(last, lastDeps)
				if lastErr != "" {
					l.log.Info("the fleet server accepts reports again")
					lastErr = ""
				}
				l.mu.Lock()
				l.status.LastReport = l.cfg.Now()
				l.status.ReportError = ""
				l.mu.Unlock()
				l.setUnauthorized(srcReport, false)
			case isUnauthorized(err):
				// Keep everything: what was not accepted is sent once
				// the device has a key again.
				next = max(next, l.jitter(l.cfg.BackoffMax))
				l.mu.Lock()
				l.status.ReportError = msgKeyRefused + ": " + err.Error()
				l.mu.Unlock()
				l.setUnauthorized(srcReport, true)
				if lastErr != msgKeyRefused {
					l.log.Error(msgKeyRefused, "err", err)
					lastErr = msgKeyRefused
				}
			default:
				failures++
				next = max(next, l.backoff(failures))
				l.mu.Lock()
				l.status.ReportError = err.Error()
				l.mu.Unlock()
				l.setUnauthorized(srcReport, false)
				if msg := err.Error(); msg != lastErr {
					l.log.Warn("report failed; keeping it for the next try", "err", err, "retry_in", next)
					lastErr = msg
				} else {
					l.log.Debug("report failed; keeping it for the next try", "err", err, "retry_in", next)
				}
			}
		}
		if !l.sleep(ctx, waitReport, next, nil) {
			return
		}
	}
}

// buildReport is the device's whole current state. A nil field is one the
// link knows nothing about.
func (l *Link) buildReport(met metricsSample) reeve.DeviceReport {
	st := l.agent.Status()
	ts, _ := l.agent.Target()
	r := reeve.DeviceReport{
		Name:          nonEmpty(l.conf.DeviceName),
		Status:        ptr(deviceStatus(st.AppState)),
		UpdateStatus:  ptr(updateStatus(st)),
		LastError:     ptr(st.LastError),
		OSVersion:     nonEmpty(l.os),
		AgentVersion:  ptr(reeve.Version),
		APIKey:        ptr(l.agent.APIKey()),
		DeviceType:    ptr(l.deviceType()),
		PollInterval:  ptr(reeve.Duration(l.pollInterval())),
		TargetVersion: ptr(st.TargetVersion),
		CPUUsage:      met.cpuUsage,
		CPUTemp:       met.cpuTemp,
		MemoryUsage:   met.memUsage,
		MemoryTotal:   met.memTotal,
		StorageUsage:  met.storageUsage,
		StorageTotal:  met.storageTotal,
	}
	ips, macs := l.cfg.netInfo()
	r.IPAddress, r.MACAddress = nonEmpty(ips), nonEmpty(macs)
	if l.cfg.APIPort > 0 {
		r.APIPort = ptr(l.cfg.APIPort)
	}
	r.Apps, r.Commit = appsReport(st, ts[l.uuid])
	return r
}

// deviceStatus is the device's status as the fleet shows it.
func deviceStatus(appState string) string {
	switch appState {
	case agent.AppStateApplied:
		return "Idle"
	case agent.AppStateLocked:
		return "Update locked"
	case agent.AppStateError:
		return "Error"
	}
	return "Updating"
}

// updateStatus is one of docs/api.md's downloading, applying, done, failed.
func updateStatus(st agent.Status) string {
	switch st.AppState {
	case agent.AppStateApplied:
		return "done"
	case agent.AppStateError:
		return "failed"
	}
	for _, s := range st.Services {
		if s.DownloadProgress != nil || s.Status == agent.SvcDownloading {
			return "downloading"
		}
	}
	return "applying"
}

// appsReport is the services' state under apps.<uuid>.releases.<commit>,
// and the commit every service of the fleet app runs, when they all run
// one.
func appsReport(st agent.Status, dev reeve.DeviceTarget) (map[string]reeve.AppReport, *string) {
	apps := map[string]reeve.AppReport{}
	for uuid := range dev.Apps {
		apps[uuid] = reeve.AppReport{Releases: map[string]reeve.ReleaseReport{}}
	}
	for _, s := range st.Services {
		commit := s.CurrentCommit // what runs, else what is coming
		if commit == "" {
			commit = s.Commit
		}
		if s.AppUUID == "" || commit == "" {
			continue
		}
		app, ok := apps[s.AppUUID]
		if !ok {
			app = reeve.AppReport{Releases: map[string]reeve.ReleaseReport{}}
			apps[s.AppUUID] = app
		}
		rel, ok := app.Releases[commit]
		if !ok {
			rel = reeve.ReleaseReport{Services: map[string]reeve.ServiceReport{}}
			app.Releases[commit] = rel
		}
		rel.Services[s.Service] = reeve.ServiceReport{
			Image:            s.Image,
			Status:           s.Status,
			DownloadProgress: s.DownloadProgress,
			ExitCode:         s.ExitCode,
			RestartCount:     s.RestartCount,
			Error:            s.Error,
		}
	}
	if len(apps) == 0 {
		apps = nil // nothing to say (an empty apps cannot be told apart on the wire)
	}

	var fleetApps []string
	for uuid, app := range dev.Apps {
		if app.Class == reeve.ClassFleet {
			fleetApps = append(fleetApps, uuid)
		}
	}
	sort.Strings(fleetApps)
	if len(fleetApps) == 0 {
		return apps, nil
	}
	commit := ""
	for _, s := range st.Services {
		if s.AppUUID != fleetApps[0] {
			continue
		}
		if s.CurrentCommit == "" || (commit != "" && s.CurrentCommit != commit) {
			return apps, nil
		}
		commit = s.CurrentCommit
	}
	return apps, nonEmpty(commit)
}

// diffReport returns the fields of cur that the server does not have as
// last says, compared as they travel (apps as a whole); changed is false
// when there is nothing to send.
func diffReport(last, cur reeve.DeviceReport) (diff reeve.DeviceReport, changed bool) {
	lv, cv, dv := reflect.ValueOf(last), reflect.ValueOf(cur), reflect.ValueOf(&diff).Elem()
	for i := range cv.NumField() {
		c := cv.Field(i)
		if !nilable(c) || c.IsNil() { // nil says nothing (TestReportFieldsAreNilable)
			continue
		}
		cb, err := json.Marshal(c.Interface())
		if err != nil {
			continue
		}
		if l := lv.Field(i); !l.IsNil() {
			if lb, err := json.Marshal(l.Interface()); err == nil && bytes.Equal(lb, cb) {
				continue
			}
		}
		dv.Field(i).Set(c)
		changed = true
	}
	return diff, changed
}

// mergeReport records an accepted diff in last.
func mergeReport(last *reeve.DeviceReport, diff reeve.DeviceReport) {
	lv, dv := reflect.ValueOf(last).Elem(), reflect.ValueOf(diff)
	for i := range dv.NumField() {
		if d := dv.Field(i); nilable(d) && !d.IsNil() {
			lv.Field(i).Set(d)
		}
	}
}

// nilable tells the fields a diff can leave out: DeviceReport has only
// such fields.
func nilable(v reflect.Value) bool {
	return v.Kind() == reflect.Pointer || v.Kind() == reflect.Map
}

// dependentDiffs returns what changed of the dependent devices since
// last, by UUID, and drops from last the devices no longer carried. A
// failure to read them only delays their report.
func (l *Link) dependentDiffs(ctx context.Context, last map[string]reeve.DeviceReport) map[string]reeve.DeviceReport {
	if l.cfg.Dependents == nil {
		return nil
	}
	cur, err := l.cfg.Dependents(ctx)
	if err != nil {
		if ctx.Err() == nil {
			l.log.Warn("cannot read the dependent devices; reporting them later", "err", err)
		}
		return nil
	}
	for uuid := range last {
		if _, ok := cur[uuid]; !ok {
			delete(last, uuid)
		}
	}
	out := map[string]reeve.DeviceReport{}
	for uuid, r := range cur {
		if d, changed := diffReport(last[uuid], r); changed {
			out[uuid] = d
		}
	}
	return out
}

// loadReport returns the last report the server accepted, as cached, and
// what it has of each dependent device (never nil).
func (l *Link) loadReport() (reeve.DeviceReport, map[string]reeve.DeviceReport) {
	deps := map[string]reeve.DeviceReport{}
	b, err := os.ReadFile(filepath.Join(l.cfg.DataDir, reportFile))
	if err != nil {
		if !os.IsNotExist(err) {
			l.log.Warn("cannot read the cached report; sending the whole state", "err", err)
		}
		return reeve.DeviceReport{}, deps
	}
	var c reportCache
	if err := json.Unmarshal(b, &c); err != nil {
		l.log.Warn("the cached report is damaged; sending the whole state", "err", err)
		return reeve.DeviceReport{}, deps
	}
	if c.Server != l.client.BaseURL() || c.UUID != l.uuid {
		return reeve.DeviceReport{}, deps
	}
	if c.Dependents != nil {
		deps = c.Dependents
	}
	return c.Report, deps
}

func (l *Link) saveReport(r reeve.DeviceReport, deps map[string]reeve.DeviceReport) {
	b, err := json.Marshal(reportCache{Server: l.client.BaseURL(), UUID: l.uuid, Report: r, Dependents: deps})
	if err == nil {
		err = atomicfile.Write(filepath.Join(l.cfg.DataDir, reportFile), b, 0o600)
	}
	if err != nil {
		// Costs one full report after a restart.
		l.log.Warn("cannot cache the accepted report", "err", err)
	}
}

// forgetReports makes the next report a whole one (a newly registered
// device has no state on the server).
func (l *Link) forgetReports() {
	if err := os.Remove(filepath.Join(l.cfg.DataDir, reportFile)); err != nil && !os.IsNotExist(err) {
		l.log.Warn("cannot remove the cached report", "err", err)
	}
}

func defaultDeviceType() string { return "generic-" + goruntime.GOARCH }

func ptr[T any](v T) *T { return &v }

func nonEmpty(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}

// round1 rounds to one decimal: finer changes are noise, not news.
func round1(f float64) float64 { return math.Round(f*10) / 10 }
