package localapi

import (
	"context"
	"fmt"
	"log/slog"

	"reeve.dev/reeve"
	"reeve.dev/reeve/internal/agent"
)

// Keys of the fake agent: the device-wide one, and one per app.
const (
	devKey = "devkey-0123456789"
	a1Key  = "appkey-shop"
	a2Key  = "appkey-other"
)

// fakeAgent stands in for the agent; the real one is exercised through this
// API by the end-to-end tests in internal/agentd. It records every action
// it is asked for in calls, so that tests can tell that a refused request
// changed nothing.
type fakeAgent struct {
	target  reeve.TargetState
	version int64
	sets    int
	healthy error
	status  agent.Status
	key     string
	appKeys map[string]string // key → app UUID
	locked  map[string]bool   // app UUID → a user holds its update lock
	err     error             // what the actions return
	newKey  string            // what RegenerateAPIKey makes
	volumes []string          // what CleanupVolumes removes
	calls   []string
}

// newFake returns an agent with two apps:
//
//	a1 "shop", appId 1, release c1 (id 10): db (imageId 12, running c1 in
//	   container cdb) and web (imageId 11, downloading 40 %)
//	a2 "other", appId 2, release c2 (id 20): main (imageId 21, exited, cmain)
func newFake() *fakeAgent {
	progress := 40
	exit := 3
	return &fakeAgent{
		target: reeve.TargetState{"dev1": {Name: "pi", Config: map[string]string{}, Apps: map[string]reeve.App{
			"a1": {ID: 1, Name: "shop", Class: reeve.ClassFleet, Releases: map[string]reeve.Release{"c1": {ID: 10,
				Services: map[string]reeve.Service{
					"db": {ID: 1, ImageID: 12, Image: "registry.example.com/shop/db:1", Running: true,
						Environment: map[string]string{"GREETING": "hi", "BALENA_SUPERVISOR_API_KEY": "secret"}},
					"web": {ID: 2, ImageID: 11, Image: "registry.example.com/shop/web:1", Running: true},
				},
				Volumes: map[string]reeve.Volume{"data": {}}}}},
			"a2": {ID: 2, Name: "other", Class: reeve.ClassFleet, Releases: map[string]reeve.Release{"c2": {ID: 20,
				Services: map[string]reeve.Service{
					"main": {ID: 3, ImageID: 21, Image: "registry.example.com/other/main:1", Running: true},
				}}}},
		}}},
		status: agent.Status{DeviceUUID: "dev1", AppState: agent.AppStateApplying, Steps: []string{"fetch a1/web", "noop a2"},
			Services: []agent.ServiceStatus{
				{AppUUID: "a1", AppName: "shop", Service: "db", Commit: "c1", CurrentCommit: "c1",
					Image: "registry.example.com/shop/db:1", Status: agent.SvcRunning, ContainerID: "cdb"},
				{AppUUID: "a1", AppName: "shop", Service: "web", Commit: "c1",
					Image: "registry.example.com/shop/web:1", Status: agent.SvcDownloading, DownloadProgress: &progress},
				{AppUUID: "a2", AppName: "other", Service: "main", Commit: "c2", CurrentCommit: "c2",
					Image: "registry.example.com/other/main:1", Status: agent.SvcExited, ExitCode: &exit, ContainerID: "cmain"},
			}},
		key:     devKey,
		appKeys: map[string]string{a1Key: "a1", a2Key: "a2"},
		locked:  map[string]bool{},
		newKey:  "newkey-9876543210",
		volumes: []string{"gone_data"},
	}
}

func (f *fakeAgent) UUID() string       { return "dev1" }
func (f *fakeAgent) DeviceName() string { return "pi" }
func (f *fakeAgent) DeviceType() string { return "generic-amd64" }
func (f *fakeAgent) Target() (reeve.TargetState, int64) {
	return f.target, f.version
}
func (f *fakeAgent) SetTarget(_ context.Context, ts reeve.TargetState) (int64, error) {
	if _, ok := ts["dev1"]; !ok {
		return 0, &reeve.ValidationError{Problems: []reeve.Problem{{Message: "wrong device"}}}
	}
	f.calls = append(f.calls, "SetTarget")
	f.sets++
	f.version++
	f.target = ts
	return f.version, nil
}
func (f *fakeAgent) Status() agent.Status { return f.status }
func (f *fakeAgent) Healthy() error       { return f.healthy }

func (f *fakeAgent) APIKey() string { return f.key }
func (f *fakeAgent) AppForKey(key string) (string, bool) {
	app, ok := f.appKeys[key]
	return app, ok
}
func (f *fakeAgent) RegenerateAPIKey(context.Context) (string, error) {
	f.calls = append(f.calls, "RegenerateAPIKey")
	f.key = f.newKey
	return f.key, nil
}

func (f *fakeAgent) action(format string, args ...any) error {
	f.calls = append(f.calls, fmt.Sprintf(format, args...))
	return f.err
}

func (f *fakeAgent) RestartApp(_ context.Context, app string, force bool) error {
	return f.action("RestartApp %s force=%t", app, force)
}
func (f *fakeAgent) PurgeApp(_ context.Context, app string, force bool) error {
	return f.action("PurgeApp %s force=%t", app, force)
}
func (f *fakeAgent) StopApp(_ context.Context, app string, force bool) error {
	return f.action("StopApp %s force=%t", app, force)
}
func (f *fakeAgent) StartApp(_ context.Context, app string) error {
	return f.action("StartApp %s", app)
}
func (f *fakeAgent) RestartService(_ context.Context, app, svc string, force bool) error {
	return f.action("RestartService %s %s force=%t", app, svc, force)
}
func (f *fakeAgent) StopService(_ context.Context, app, svc string, force bool) error {
	return f.action("StopService %s %s force=%t", app, svc, force)
}
func (f *fakeAgent) StartService(_ context.Context, app, svc string) error {
	return f.action("StartService %s %s", app, svc)
}

// AppLocked is as the agent's: the device config may override locks.
func (f *fakeAgent) AppLocked(app string) bool {
	dc, _ := reeve.ParseDeviceConfig(f.target[f.UUID()].Config, reeve.DefaultDeviceConfig())
	return f.locked[app] && !dc.OverrideLock
}
func (f *fakeAgent) CleanupVolumes(context.Context) ([]string, error) {
	if err := f.action("CleanupVolumes"); err != nil {
		return nil, err
	}
	return f.volumes, nil
}

// options returns Options whose Update, Reboot and Shutdown record their
// calls with the agent's.
func (f *fakeAgent) options(local bool) Options {
	return Options{
		Local:    local,
		Logger:   slog.New(slog.DiscardHandler),
		Update:   func(force bool) { f.calls = append(f.calls, fmt.Sprintf("Update force=%t", force)) },
		Reboot:   func(context.Context) error { return f.action("Reboot") },
		Shutdown: func(context.Context) error { return f.action("Shutdown") },
	}
}
