package server

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"maps"
	"sort"
	"time"

	"reeve.dev/reeve"
)

// BuildTarget puts together a device's target state. rel is the release it
// should run (nil: none yet); env and config are every variable that
// reaches the device (store.DeviceVars). Pure: the same inputs give the
// same bytes, so the ETag only changes when the target does.
//
// Environment precedence, lowest first: the compose file, fleet, service
// (fleet + service), device, device+service. Config: fleet, then device.
func BuildTarget(f reeve.Fleet, d reeve.Device, rel *reeve.FleetRelease, env, config []reeve.Variable) reeve.TargetState {
	app := reeve.App{ID: f.ID, Name: f.Name, Class: reeve.ClassFleet, Releases: map[string]reeve.Release{}}
	if rel != nil {
		r := rel.Release
		r.ID = rel.ID
		svcs := make(map[string]reeve.Service, len(r.Services))
		for name, svc := range r.Services {
			svc.Environment = serviceEnv(svc.Environment, name, env)
			if _, ok := svc.Label(reeve.LabelUpdateStrategy); !ok && f.UpdateStrategy != "" && f.UpdateStrategy != reeve.StrategyDownloadThenKill {
				svc.Labels = maps.Clone(svc.Labels)
				if svc.Labels == nil {
					svc.Labels = map[string]string{}
				}
				svc.Labels[reeve.LabelUpdateStrategy] = f.UpdateStrategy
			}
			svcs[name] = svc
		}
		r.Services = svcs
		app.Releases[rel.Commit] = r
	}
	return reeve.TargetState{d.UUID: {Name: d.Name, Config: resolveConfig(config), Apps: map[string]reeve.App{f.UUID: app}}}
}

// DependentFleet is a dependent fleet as its gateways' targets show it:
// one of their apps.
type DependentFleet struct {
	Fleet reeve.Fleet
	// Release is the release the fleet tracks: its pin, else its
	// newest; nil while it has none.
	Release *reeve.FleetRelease
	// Env and Config are the fleet's own variables (fleet and service
	// scopes: store.DeviceVars with no device).
	Env, Config []reeve.Variable
}

// DependentDevice is a dependent device as its gateway's target shows
// it: an entry of its own.
type DependentDevice struct {
	Device reeve.Device
	// Release is the release it should run: its pin, else its fleet's
	// pin, else its fleet's newest; nil while there is none.
	Release *reeve.FleetRelease
	// Env and Config are every variable that reaches the device
	// (store.DeviceVars).
	Env, Config []reeve.Variable
}

// AddDependents puts into a gateway's target (BuildTarget's) what its
// agent carries: beside the gateway's own app, one app of class
// dependent per dependent fleet, with the fleet's config and the release
// the fleet tracks; and for each dependent device an entry keyed by its
// UUID, with its name, its config and its fleet's app at the release the
// device should run. Environment and config are resolved as BuildTarget
// resolves them; a device whose fleet is not among fleets is left out.
// Pure, like BuildTarget.
func AddDependents(ts reeve.TargetState, gateway string, fleets []DependentFleet, devices []DependentDevice) {
	own, ok := ts[gateway]
	if !ok {
		return
	}
	byID := make(map[int64]reeve.Fleet, len(fleets))
	for _, df := range fleets {
		byID[df.Fleet.ID] = df.Fleet
		app := dependentApp(df.Fleet, df.Release, df.Env)
		app.Config = resolveConfig(df.Config)
		own.Apps[df.Fleet.UUID] = app
	}
	for _, dd := range devices {
		f, ok := byID[dd.Device.FleetID]
		if !ok || dd.Device.UUID == gateway {
			continue
		}
		ts[dd.Device.UUID] = reeve.DeviceTarget{
			Name:   dd.Device.Name,
			Config: resolveConfig(dd.Config),
			Apps:   map[string]reeve.App{f.UUID: dependentApp(f, dd.Release, dd.Env)},
		}
	}
}

// dependentApp is a dependent fleet's app at release rel (nil: none),
// with env resolved into its service. Its release keeps what was pushed:
// the image holds the firmware, and the agent never runs it.
func dependentApp(f reeve.Fleet, rel *reeve.FleetRelease, env []reeve.Variable) reeve.App {
	app := reeve.App{ID: f.ID, Name: f.Name, Class: reeve.ClassDependent, Releases: map[string]reeve.Release{}}
	if rel == nil {
		return app
	}
	r := rel.Release
	r.ID = rel.ID
	svcs := make(map[string]reeve.Service, len(r.Services))
	for name, svc := range r.Services {
		svc.Environment = serviceEnv(svc.Environment, name, env)
		svcs[name] = svc
	}
	r.Services = svcs
	app.Releases[rel.Commit] = r
	return app
}

// resolveConfig applies config variables in precedence order; nil when
// there are none.
func resolveConfig(config []reeve.Variable) map[string]string {
	var cfg map[string]string
	for _, v := range byPrecedence(config) {
		if cfg == nil {
			cfg = map[string]string{}
		}
		cfg[v.Name] = v.Value
	}
	return cfg
}

func serviceEnv(base map[string]string, service string, vars []reeve.Variable) map[string]string {
	out := maps.Clone(base)
	for _, v := range byPrecedence(vars) {
		if v.Service != "" && v.Service != service {
			continue
		}
		if out == nil {
			out = map[string]string{}
		}
		out[v.Name] = v.Value
	}
	return out
}

var scopeRank = map[string]int{reeve.ScopeFleet: 0, reeve.ScopeService: 1, reeve.ScopeDevice: 2, reeve.ScopeDeviceService: 3}

// byPrecedence orders variables so that applying them in turn leaves the
// one with the highest precedence.
func byPrecedence(vars []reeve.Variable) []reeve.Variable {
	out := append([]reeve.Variable(nil), vars...)
	sort.SliceStable(out, func(i, j int) bool { return scopeRank[out[i].Scope()] < scopeRank[out[j].Scope()] })
	return out
}

// Target is a device's target state as served: the JSON body and its ETag.
type Target struct {
	Body   []byte
	ETag   string
	Commit string // the release it runs; "" when none
}

// releaseFor picks the release a device runs: its own pin, else its
// fleet's pin, else the fleet's newest. ok is false when the fleet has
// none.
func (s *Server) releaseFor(ctx context.Context, f reeve.Fleet, d reeve.Device) (reeve.FleetRelease, bool, error) {
	var (
		r   reeve.FleetRelease
		err error
	)
	switch {
	case d.PinnedRelease != "":
		r, err = s.st.Release(ctx, f.ID, d.PinnedRelease)
	case f.PinnedRelease != "":
		r, err = s.st.Release(ctx, f.ID, f.PinnedRelease)
	default:
		r, err = s.st.LatestRelease(ctx, f.ID)
	}
	if reeve.ErrorCode(err) == reeve.CodeNotFound {
		return r, false, nil
	}
	if err != nil {
		return r, false, err
	}
	r, err = s.releases.get(ctx, s.st, r.ID)
	return r, err == nil, err
}

// TargetOf returns the device's target state: for a gateway, with the
// dependent devices it carries (AddDependents).
func (s *Server) TargetOf(ctx context.Context, d reeve.Device) (Target, error) {
	f, err := s.st.Fleet(ctx, d.FleetID)
	if err != nil {
		return Target{}, err
	}
	rel, env, cfg, err := s.deviceInputs(ctx, f, d)
	if err != nil {
		return Target{}, err
	}
	ts := BuildTarget(f, d, rel, env, cfg)
	if !f.Dependent() {
		fleets, devices, err := s.dependentsOf(ctx, f, d)
		if err != nil {
			return Target{}, err
		}
		AddDependents(ts, d.UUID, fleets, devices)
	}
	body, err := json.Marshal(ts)
	if err != nil {
		return Target{}, err
	}
	sum := sha256.Sum256(body)
	t := Target{Body: body, ETag: `"` + hex.EncodeToString(sum[:16]) + `"`}
	if rel != nil {
		t.Commit = rel.Commit
	}
	return t, nil
}

// deviceInputs reads what a device's target is built from: the release
// it should run (nil: none yet) and every variable that reaches it.
func (s *Server) deviceInputs(ctx context.Context, f reeve.Fleet, d reeve.Device) (rel *reeve.FleetRelease, env, cfg []reeve.Variable, err error) {
	r, ok, err := s.releaseFor(ctx, f, d)
	if err != nil {
		return nil, nil, nil, err
	}
	if ok {
		rel = &r
	}
	if env, err = s.st.DeviceVars(ctx, reeve.VarEnv, f.ID, d.ID); err != nil {
		return nil, nil, nil, err
	}
	if cfg, err = s.st.DeviceVars(ctx, reeve.VarConfig, f.ID, d.ID); err != nil {
		return nil, nil, nil, err
	}
	return rel, env, cfg, nil
}

// dependentsOf reads what the gateway gw of fleet f carries: the
// dependent fleets under f and the dependent devices of gw. A fleet of
// no dependent fleet costs no read.
func (s *Server) dependentsOf(ctx context.Context, f reeve.Fleet, gw reeve.Device) ([]DependentFleet, []DependentDevice, error) {
	if err := s.linkFleets(ctx); err != nil {
		return nil, nil, err
	}
	children := s.hub.children(f.ID)
	if len(children) == 0 {
		return nil, nil, nil
	}
	fleets := make([]DependentFleet, 0, len(children))
	byID := make(map[int64]reeve.Fleet, len(children))
	for _, id := range children {
		c, err := s.st.Fleet(ctx, id)
		if reeve.ErrorCode(err) == reeve.CodeNotFound { // removed meanwhile
			continue
		}
		if err != nil {
			return nil, nil, err
		}
		if !c.Dependent() || c.ParentID != f.ID {
			continue
		}
		rel, env, cfg, err := s.deviceInputs(ctx, c, reeve.Device{})
		if err != nil {
			return nil, nil, err
		}
		fleets = append(fleets, DependentFleet{Fleet: c, Release: rel, Env: env, Config: cfg})
		byID[c.ID] = c
	}
	deps, err := s.st.DependentDevices(ctx, gw.ID)
	if err != nil {
		return nil, nil, err
	}
	devices := make([]DependentDevice, 0, len(deps))
	for _, d := range deps {
		c, ok := byID[d.FleetID]
		if !ok {
			continue
		}
		rel, env, cfg, err := s.deviceInputs(ctx, c, d)
		if err != nil {
			return nil, nil, err
		}
		devices = append(devices, DependentDevice{Device: d, Release: rel, Env: env, Config: cfg})
	}
	return fleets, devices, nil
}

// Poll returns the device's target state, answered from memory while
// nothing of its fleet changed.
func (s *Server) Poll(ctx context.Context, dev reeve.Device) (Target, error) {
	p, err := s.polledDevice(ctx, dev.UUID, dev.FleetID)
	if err != nil {
		return Target{}, err
	}
	return p.target, nil
}

// WaitTarget is a long poll: it returns the device's target as soon as its
// ETag differs from etag, or with changed false once wait is over (or ctx
// ends). The device is online while it waits.
func (s *Server) WaitTarget(ctx context.Context, dev reeve.Device, etag string, wait time.Duration) (t Target, changed bool, err error) {
	s.openPoll(dev.UUID)
	defer s.closePoll(dev.UUID)
	timer := time.NewTimer(wait)
	defer timer.Stop()
	for {
		ch := s.hub.wait(dev.FleetID) // before reading, so no change is missed
		p, err := s.polledDevice(ctx, dev.UUID, dev.FleetID)
		if err != nil {
			return Target{}, false, err
		}
		if p.dev.KeyHash != dev.KeyHash {
			return Target{}, false, reeve.Errorf(reeve.CodeUnauthorized, "the key of device %s was revoked or replaced: provision the device again", dev.UUID)
		}
		if p.target.ETag != etag {
			return p.target, true, nil
		}
		select {
		case <-ch:
		case <-timer.C:
			return p.target, false, nil
		case <-ctx.Done():
			return p.target, false, nil
		case <-s.closed:
			return p.target, false, nil
		}
	}
}
