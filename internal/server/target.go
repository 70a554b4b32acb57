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
	var cfg map[string]string
	for _, v := range byPrecedence(config) {
		if cfg == nil {
			cfg = map[string]string{}
		}
		cfg[v.Name] = v.Value
	}
	return reeve.TargetState{d.UUID: {Name: d.Name, Config: cfg, Apps: map[string]reeve.App{f.UUID: app}}}
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

// TargetOf returns the device's target state.
func (s *Server) TargetOf(ctx context.Context, d reeve.Device) (Target, error) {
	f, err := s.st.Fleet(ctx, d.FleetID)
	if err != nil {
		return Target{}, err
	}
	r, ok, err := s.releaseFor(ctx, f, d)
	if err != nil {
		return Target{}, err
	}
	env, err := s.st.DeviceVars(ctx, reeve.VarEnv, f.ID, d.ID)
	if err != nil {
		return Target{}, err
	}
	cfg, err := s.st.DeviceVars(ctx, reeve.VarConfig, f.ID, d.ID)
	if err != nil {
		return Target{}, err
	}
	var rel *reeve.FleetRelease
	if ok {
		rel = &r
	}
	body, err := json.Marshal(BuildTarget(f, d, rel, env, cfg))
	if err != nil {
		return Target{}, err
	}
	sum := sha256.Sum256(body)
	return Target{Body: body, ETag: `"` + hex.EncodeToString(sum[:16]) + `"`, Commit: r.Commit}, nil
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
