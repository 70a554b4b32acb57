package fleetlink

import (
	"context"
	"maps"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"

	"reeve.dev/reeve"
	"reeve.dev/reeve/internal/agent"
)

func runningStatus(commit string, restarts int) agent.Status {
	return agent.Status{DeviceUUID: testUUID, AppState: agent.AppStateApplied, TargetVersion: 1,
		Services: []agent.ServiceStatus{{AppUUID: testAppUUID, AppName: "fleet", Service: "web", Commit: commit,
			CurrentCommit: commit, Image: "docker.io/library/nginx:alpine", Status: agent.SvcRunning, RestartCount: restarts}}}
}

// reportingHarness is a provisioned device running c1, with metrics.
func reportingHarness(t *testing.T) *harness {
	t.Helper()
	h := provisionedHarness(t)
	h.srv.setTarget(testUUID, testTarget(testUUID, "c1", nil))
	h.agent.target, h.agent.version = testTarget(testUUID, "c1", nil), 1
	h.agent.status = runningStatus("c1", 0)
	h.metrics = metricsSample{memUsage: ptr[int64](310), memTotal: ptr[int64](3790), cpuUsage: ptr(12.5)}
	return h
}

func TestReportSendsOnlyWhatChanged(t *testing.T) {
	h := reportingHarness(t)
	l := h.start(nil)

	waitFor(t, "a report", func() bool { return len(h.srv.reports(http.StatusOK)) == 1 })
	first := h.srv.reports(http.StatusOK)[0]
	wantFields := []string{"agent_version", "api_key", "apps", "commit", "cpu_usage", "device_type", "ip_address", "last_error",
		"mac_address", "memory_total", "memory_usage", "name", "poll_interval", "status", "target_version", "update_status"}
	if !slices.Equal(first.ReportedFields, wantFields) {
		t.Errorf("first report fields = %v, want %v", first.ReportedFields, wantFields)
	}
	r := first.Report
	if *r.Status != "Idle" || *r.UpdateStatus != "done" || *r.Commit != "c1" || *r.Name != "kitchen" ||
		*r.DeviceType != "raspberrypi4-64" || *r.AgentVersion != reeve.Version || *r.IPAddress != "192.168.1.20" ||
		*r.MemoryTotal != 3790 || *r.TargetVersion != 1 {
		t.Errorf("first report = %+v", r)
	}
	if svc := r.Apps[testAppUUID].Releases["c1"].Services["web"]; svc.Status != "running" || svc.Image != "docker.io/library/nginx:alpine" {
		t.Errorf("service report = %+v, want web running", svc)
	}
	waitFor(t, "the report in the status", func() bool { return !l.Status().LastReport.IsZero() })

	// One service restarted: only apps travel.
	h.agent.setStatus(func(s *agent.Status) { s.Services[0].RestartCount = 1 })
	waitFor(t, "a second report", func() bool { return len(h.srv.reports(http.StatusOK)) == 2 })
	second := h.srv.reports(http.StatusOK)[1]
	if !slices.Equal(second.ReportedFields, []string{"apps"}) {
		t.Errorf("second report fields = %v, want only apps", second.ReportedFields)
	}
	if got := second.Report.Apps[testAppUUID].Releases["c1"].Services["web"].RestartCount; got != 1 {
		t.Errorf("restart count = %d, want 1", got)
	}

	// An update starts: the status changes, the download shows under the
	// release that runs.
	h.agent.setStatus(func(s *agent.Status) {
		p := 40
		s.AppState = agent.AppStateApplying
		s.Services[0].Commit = "c2"
		s.Services[0].DownloadProgress = &p
	})
	waitFor(t, "a third report", func() bool { return len(h.srv.reports(http.StatusOK)) == 3 })
	third := h.srv.reports(http.StatusOK)[2]
	if !slices.Equal(third.ReportedFields, []string{"apps", "status", "update_status"}) {
		t.Errorf("third report fields = %v, want apps, status and update_status", third.ReportedFields)
	}
	if *third.Report.Status != "Updating" || *third.Report.UpdateStatus != "downloading" {
		t.Errorf("third report = status %q update %q, want Updating and downloading", *third.Report.Status, *third.Report.UpdateStatus)
	}

	// Nothing changes: nothing is sent, however many rounds go by.
	assertNoReportFor(t, h, 5)
}

// assertNoReportFor lets the report loop make rounds more rounds and checks
// that it sent nothing.
func assertNoReportFor(t *testing.T, h *harness, rounds int) {
	t.Helper()
	n, w := len(h.srv.reports(0)), len(h.waitsOf(waitReport))
	waitFor(t, "report rounds", func() bool { return len(h.waitsOf(waitReport)) >= w+rounds })
	if got := h.srv.reports(0); len(got) != n {
		t.Errorf("reports sent with nothing changed: %s", describe(got[n:]))
	}
}

func TestReportCarriesWhatChangedOfDependentDevices(t *testing.T) {
	h := reportingHarness(t)
	var mu sync.Mutex
	online := true
	deps := map[string]reeve.DeviceReport{
		"dep1": {Status: ptr("Idle"), IsOnline: &online, Commit: ptr("fw1")},
		"dep2": {Status: ptr("Updating"), IsOnline: &online},
	}
	h.start(func(c *LinkConfig) {
		c.Dependents = func(context.Context) (map[string]reeve.DeviceReport, error) {
			mu.Lock()
			defer mu.Unlock()
			return maps.Clone(deps), nil
		}
	})
	waitFor(t, "a report", func() bool { return len(h.srv.reports(http.StatusOK)) == 1 })
	first := h.srv.reports(http.StatusOK)[0]
	if len(first.Dependents) != 2 || *first.Dependents["dep1"].Commit != "fw1" || *first.Dependents["dep2"].Status != "Updating" {
		t.Fatalf("first report's dependents %+v", first.Dependents)
	}
	// dep2 finishes; dep1 is forgotten: only dep2's status travels, with
	// an empty entry of the device's own.
	mu.Lock()
	deps["dep2"] = reeve.DeviceReport{Status: ptr("Idle"), IsOnline: &online}
	delete(deps, "dep1")
	mu.Unlock()
	waitFor(t, "a second report", func() bool { return len(h.srv.reports(http.StatusOK)) == 2 })
	second := h.srv.reports(http.StatusOK)[1]
	if len(second.ReportedFields) != 0 || len(second.Dependents) != 1 {
		t.Fatalf("second report: own fields %v, dependents %+v", second.ReportedFields, second.Dependents)
	}
	if d := second.Dependents["dep2"]; d.Status == nil || *d.Status != "Idle" || d.IsOnline != nil {
		t.Fatalf("dep2's diff %+v, want only its status", d)
	}
	// dep1 comes back: what the server had of a forgotten device is not
	// kept, so it is told all of it again.
	mu.Lock()
	deps["dep1"] = reeve.DeviceReport{Status: ptr("Idle"), IsOnline: &online, Commit: ptr("fw1")}
	mu.Unlock()
	waitFor(t, "a third report", func() bool { return len(h.srv.reports(http.StatusOK)) == 3 })
	if third := h.srv.reports(http.StatusOK)[2]; len(third.Dependents) != 1 || third.Dependents["dep1"].Commit == nil {
		t.Fatalf("third report's dependents %+v", third.Dependents)
	}
}

func TestReportCacheSurvivesRestart(t *testing.T) {
	h := reportingHarness(t)
	l := h.start(nil)
	waitFor(t, "a report", func() bool { return !l.Status().LastReport.IsZero() })
	l.Close()
	if _, err := os.Stat(filepath.Join(h.dataDir, reportFile)); err != nil {
		t.Fatalf("no cached report: %v", err)
	}

	h.start(nil)
	assertNoReportFor(t, h, 5)

	h.agent.setStatus(func(s *agent.Status) { s.AppState, s.LastError = agent.AppStateError, "pull failed" })
	waitFor(t, "a report of the change", func() bool { return len(h.srv.reports(http.StatusOK)) == 2 })
	if got := h.srv.reports(http.StatusOK)[1].ReportedFields; !slices.Equal(got, []string{"last_error", "status", "update_status"}) {
		t.Errorf("report after restart = %v, want only what changed", got)
	}
}

// A report the server did not take is sent again, with whatever changed
// since the last one it took.
func TestFailedReportKeepsTheDiff(t *testing.T) {
	h := reportingHarness(t)
	l := h.start(nil)
	waitFor(t, "a report", func() bool { return len(h.srv.reports(http.StatusOK)) == 1 })

	h.srv.set(func(s *fakeServer) { s.reportFail = http.StatusServiceUnavailable })
	h.agent.setStatus(func(s *agent.Status) { s.Services[0].RestartCount = 3 })
	waitFor(t, "two failed reports", func() bool { return len(h.srv.reports(http.StatusServiceUnavailable)) >= 2 })
	for _, r := range h.srv.reports(http.StatusServiceUnavailable) {
		if !slices.Equal(r.ReportedFields, []string{"apps"}) {
			t.Errorf("failed report fields = %v, want apps", r.ReportedFields)
		}
	}
	if st := l.Status(); !strings.Contains(st.ReportError, "503") {
		t.Errorf("status = %+v, want the failure shown", st)
	}
	h.agent.setStatus(func(s *agent.Status) { s.LastError = "something" })
	waitFor(t, "a failed report with both changes", func() bool {
		for _, r := range h.srv.reports(http.StatusServiceUnavailable) {
			if slices.Equal(r.ReportedFields, []string{"apps", "last_error"}) {
				return true
			}
		}
		return false
	})
	for _, w := range h.waitsOf(waitReport) {
		if w.D < 5e6 {
			t.Errorf("wait between reports = %v, want at least the report interval", w.D)
		}
	}

	h.srv.set(func(s *fakeServer) { s.reportFail = 0 })
	waitFor(t, "an accepted report", func() bool { return len(h.srv.reports(http.StatusOK)) == 2 })
	if got := h.srv.reports(http.StatusOK)[1].ReportedFields; !slices.Equal(got, []string{"apps", "last_error"}) {
		t.Errorf("accepted report = %v, want everything not taken before", got)
	}
	waitFor(t, "the error to clear", func() bool { return l.Status().ReportError == "" })
}

func TestReportUnauthorized(t *testing.T) {
	h := reportingHarness(t)
	h.srv.setKey(testUUID, "")
	l := h.start(nil)
	waitFor(t, "two refused reports", func() bool { return len(h.srv.reports(http.StatusUnauthorized)) >= 2 })
	if st := l.Status(); !st.Unauthorized || !strings.Contains(st.ReportError, "provision the device again") {
		t.Errorf("status = %+v, want unauthorized", st)
	}
	full := h.srv.reports(http.StatusUnauthorized)[0].ReportedFields

	h.srv.setKey(testUUID, testKey)
	waitFor(t, "an accepted report", func() bool { return len(h.srv.reports(http.StatusOK)) == 1 })
	if got := h.srv.reports(http.StatusOK)[0].ReportedFields; !slices.Equal(got, full) {
		t.Errorf("accepted report = %v, want the whole state (%v): nothing was taken before", got, full)
	}
	waitFor(t, "the status to clear", func() bool { st := l.Status(); return !st.Unauthorized && st.ReportError == "" })
}

// A newly registered device sends its whole state, whatever an old cache
// says.
func TestRegistrationForgetsTheReportCache(t *testing.T) {
	h := newHarness(t)
	h.writeConfig(map[string]string{"provisioningKey": testProvKey})
	c := h.identity()
	b := []byte(`{"server":"` + h.srv.URL() + `","uuid":"` + c.UUID + `","report":{"status":"Idle","agent_version":"` + reeve.Version + `"}}`)
	if err := os.MkdirAll(h.dataDir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(h.dataDir, reportFile), b, 0o600); err != nil {
		t.Fatal(err)
	}
	h.start(nil)
	waitFor(t, "a report", func() bool { return len(h.srv.reports(http.StatusOK)) == 1 })
	got := h.srv.reports(http.StatusOK)[0].ReportedFields
	if !slices.Contains(got, "status") || !slices.Contains(got, "agent_version") {
		t.Errorf("first report = %v, want the whole state", got)
	}
}

func TestDiffAndMerge(t *testing.T) {
	apps := func(status string) map[string]reeve.AppReport {
		return map[string]reeve.AppReport{testAppUUID: {Releases: map[string]reeve.ReleaseReport{
			"c1": {Services: map[string]reeve.ServiceReport{"web": {Image: "nginx", Status: status}}}}}}
	}
	last := reeve.DeviceReport{Status: ptr("Idle"), CPUUsage: ptr(10.0), Apps: apps("running")}
	cur := reeve.DeviceReport{Status: ptr("Idle"), CPUUsage: ptr(20.0), Apps: apps("exited"), IPAddress: ptr("10.0.0.2")}
	diff, changed := diffReport(last, cur)
	if !changed || diff.Status != nil || *diff.CPUUsage != 20 || *diff.IPAddress != "10.0.0.2" || diff.Apps[testAppUUID].Releases["c1"].Services["web"].Status != "exited" {
		t.Errorf("diff = %+v, want cpu, ip and apps", diff)
	}
	mergeReport(&last, diff)
	if _, changed := diffReport(last, cur); changed {
		t.Error("after merging the diff there is still something to send")
	}
	if _, changed := diffReport(cur, reeve.DeviceReport{}); changed {
		t.Error("an empty report differs: unknown fields must say nothing")
	}
}

func TestAppsReportAndStatus(t *testing.T) {
	dev := testTarget(testUUID, "c2", nil)[testUUID]
	svc := func(name, commit, current, status string) agent.ServiceStatus {
		return agent.ServiceStatus{AppUUID: testAppUUID, Service: name, Commit: commit, CurrentCommit: current, Status: status}
	}
	for _, tc := range []struct {
		name       string
		services   []agent.ServiceStatus
		wantCommit string
		wantRels   []string
	}{
		{"all on c2", []agent.ServiceStatus{svc("a", "c2", "c2", "running"), svc("b", "c2", "c2", "running")}, "c2", []string{"c2"}},
		{"mid update", []agent.ServiceStatus{svc("a", "c2", "c2", "running"), svc("b", "c2", "c1", "running")}, "", []string{"c1", "c2"}},
		{"not created yet", []agent.ServiceStatus{svc("a", "c2", "", "downloading")}, "", []string{"c2"}},
		{"nothing yet", nil, "", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			apps, commit := appsReport(agent.Status{Services: tc.services}, dev)
			if got := deref(commit); got != tc.wantCommit {
				t.Errorf("commit = %q, want %q", got, tc.wantCommit)
			}
			var rels []string
			for c := range apps[testAppUUID].Releases {
				rels = append(rels, c)
			}
			slices.Sort(rels)
			if !slices.Equal(rels, tc.wantRels) {
				t.Errorf("releases = %v, want %v", rels, tc.wantRels)
			}
		})
	}
	for state, want := range map[string][2]string{
		agent.AppStateApplied:  {"Idle", "done"},
		agent.AppStateApplying: {"Updating", "applying"},
		agent.AppStateLocked:   {"Update locked", "applying"},
		agent.AppStateError:    {"Error", "failed"},
	} {
		st := agent.Status{AppState: state}
		if got := [2]string{deviceStatus(state), updateStatus(st)}; got != want {
			t.Errorf("%s: status, update_status = %v, want %v", state, got, want)
		}
	}
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

// A diff leaves out what did not change, so every field of a report must
// be able to say "unchanged".
func TestReportFieldsAreNilable(t *testing.T) {
	typ := reflect.TypeFor[reeve.DeviceReport]()
	for i := range typ.NumField() {
		if f := typ.Field(i); f.Type.Kind() != reflect.Pointer && f.Type.Kind() != reflect.Map {
			t.Errorf("DeviceReport.%s is a %s: make it a pointer, or the link never sends it", f.Name, f.Type)
		}
	}
}
