package server

import (
	"context"
	"fmt"
	"regexp"
	"sort"
	"strconv"
	"time"

	"reeve.dev/reeve"
	"reeve.dev/reeve/internal/compose"
)

var fleetName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$`)

func validStrategy(s string) bool {
	switch s {
	case reeve.StrategyDownloadThenKill, reeve.StrategyKillThenDownload, reeve.StrategyDeleteThenDownload, reeve.StrategyHandOver:
		return true
	}
	return false
}

const strategies = "download-then-kill, kill-then-download, delete-then-download or hand-over"

// CreateFleet makes a fleet. An empty device type accepts every type; an
// empty strategy is download-then-kill.
func (s *Server) CreateFleet(ctx context.Context, name, deviceType, strategy string) (reeve.Fleet, error) {
	var p []reeve.Problem
	if !fleetName.MatchString(name) {
		p = append(p, reeve.Problem{Path: "name", Message: fmt.Sprintf("%q is not a fleet name: use 1 to 63 letters, digits, '.', '_' or '-', starting with a letter or digit", name)})
	} else if _, err := strconv.ParseInt(name, 10, 64); err == nil {
		p = append(p, reeve.Problem{Path: "name", Message: "a fleet name cannot be only digits: those are fleet ids"})
	}
	if deviceType == "" {
		deviceType = reeve.DeviceTypeAny
	} else if len(deviceType) > 64 {
		p = append(p, reeve.Problem{Path: "device_type", Message: "longer than 64 characters"})
	}
	if strategy == "" {
		strategy = reeve.StrategyDownloadThenKill
	} else if !validStrategy(strategy) {
		p = append(p, reeve.Problem{Path: "update_strategy", Message: fmt.Sprintf("%q is not an update strategy: use %s", strategy, strategies)})
	}
	if len(p) > 0 {
		return reeve.Fleet{}, &reeve.ValidationError{Problems: p}
	}
	return s.st.CreateFleet(ctx, reeve.Fleet{
		UUID: newUUID(), Name: name, DeviceType: deviceType, UpdateStrategy: strategy, CreatedAt: s.now(),
	})
}

func newUUID() string { return NewSecret()[:32] }

// Fleet finds a fleet by name or numeric id.
func (s *Server) Fleet(ctx context.Context, nameOrID string) (reeve.Fleet, error) {
	if id, err := strconv.ParseInt(nameOrID, 10, 64); err == nil {
		return s.st.Fleet(ctx, id)
	}
	return s.st.FleetByName(ctx, nameOrID)
}

// Fleets lists every fleet.
func (s *Server) Fleets(ctx context.Context) ([]reeve.Fleet, error) { return s.st.Fleets(ctx) }

// UpdateFleet changes a fleet's update strategy or pinned release (nil
// leaves it; "" unpins).
func (s *Server) UpdateFleet(ctx context.Context, nameOrID string, strategy, pinned *string) (reeve.Fleet, error) {
	f, err := s.Fleet(ctx, nameOrID)
	if err != nil {
		return f, err
	}
	if strategy != nil {
		if !validStrategy(*strategy) {
			return f, reeve.Errorf(reeve.CodeInvalid, "update_strategy: %q is not an update strategy: use %s", *strategy, strategies)
		}
		f.UpdateStrategy = *strategy
	}
	if pinned != nil {
		if *pinned != "" {
			r, err := s.st.Release(ctx, f.ID, *pinned)
			if err != nil {
				return f, releaseNotFound(err, f.Name, *pinned)
			}
			*pinned = r.Commit
		}
		f.PinnedRelease = *pinned
	}
	if err := s.st.UpdateFleet(ctx, f); err != nil {
		return f, err
	}
	s.hub.notify(f.ID)
	return f, nil
}

func releaseNotFound(err error, fleet, commit string) error {
	if reeve.ErrorCode(err) == reeve.CodeNotFound {
		return reeve.Errorf(reeve.CodeNotFound, "fleet %q has no release %q: `reeve releases --fleet %s` lists them", fleet, commit, fleet)
	}
	return err
}

// DeleteFleet removes a fleet without devices.
func (s *Server) DeleteFleet(ctx context.Context, nameOrID string) error {
	f, err := s.Fleet(ctx, nameOrID)
	if err != nil {
		return err
	}
	if err := s.st.DeleteFleet(ctx, f.ID); err != nil {
		return err
	}
	s.hub.notify(f.ID)
	return nil
}

// CreateProvisioningKey makes a key for the fleet and returns it: the
// only time it is known.
func (s *Server) CreateProvisioningKey(ctx context.Context, nameOrID, name string, expiresAt time.Time) (string, reeve.ProvisioningKey, error) {
	f, err := s.Fleet(ctx, nameOrID)
	if err != nil {
		return "", reeve.ProvisioningKey{}, err
	}
	if len(name) > 128 {
		return "", reeve.ProvisioningKey{}, reeve.Errorf(reeve.CodeInvalid, "name: longer than 128 characters")
	}
	if !expiresAt.IsZero() && !expiresAt.After(s.now()) {
		return "", reeve.ProvisioningKey{}, reeve.Errorf(reeve.CodeInvalid, "expires_at: %s is in the past: give a time to come", expiresAt.Format(time.RFC3339))
	}
	secret := NewSecret()
	k, err := s.st.CreateProvisioningKey(ctx, reeve.ProvisioningKey{FleetID: f.ID, Name: name, Hash: Hash(secret), ExpiresAt: expiresAt, CreatedAt: s.now()})
	return secret, k, err
}

// ProvisioningKeys lists a fleet's keys.
func (s *Server) ProvisioningKeys(ctx context.Context, nameOrID string) ([]reeve.ProvisioningKey, error) {
	f, err := s.Fleet(ctx, nameOrID)
	if err != nil {
		return nil, err
	}
	return s.st.ProvisioningKeys(ctx, f.ID)
}

// RevokeProvisioningKey stops a key from provisioning more devices.
// Devices it provisioned keep their own keys.
func (s *Server) RevokeProvisioningKey(ctx context.Context, id int64) error {
	return s.st.RevokeProvisioningKey(ctx, id, s.now())
}

// Push makes a release of the fleet from a compose file. The same file
// pushed again is the same release (created is false).
func (s *Server) Push(ctx context.Context, nameOrID string, data []byte) (reeve.FleetRelease, bool, error) {
	f, err := s.Fleet(ctx, nameOrID)
	if err != nil {
		return reeve.FleetRelease{}, false, err
	}
	if len(data) == 0 {
		return reeve.FleetRelease{}, false, reeve.Errorf(reeve.CodeInvalid, "compose: empty: send the text of a compose file")
	}
	commit := compose.Commit(data)
	if r, err := s.st.Release(ctx, f.ID, commit); err == nil {
		return r, false, nil
	} else if reeve.ErrorCode(err) != reeve.CodeNotFound {
		return r, false, err
	}
	// The same options `reeve push` validates with: no working directory
	// (relative binds mean nothing on a device) and no variables (fleet
	// variables, not interpolation, configure a release).
	rel, err := compose.Load(ctx, data, compose.Options{ProjectName: f.Name})
	if err != nil {
		return reeve.FleetRelease{}, false, err
	}
	numberServices(&rel)
	r, err := s.st.CreateRelease(ctx, reeve.FleetRelease{FleetID: f.ID, Commit: commit, Compose: string(data), Release: rel, CreatedAt: s.now()})
	if reeve.ErrorCode(err) == reeve.CodeConflict { // pushed at the same time
		r, err = s.st.Release(ctx, f.ID, commit)
		return r, false, err
	}
	if err != nil {
		return r, false, err
	}
	s.log.Info("release pushed", "fleet", f.Name, "commit", commit, "services", len(rel.Services))
	s.hub.notify(f.ID)
	return r, true, nil
}

// numberServices gives services ids by name, so they are stable for a
// given file.
func numberServices(rel *reeve.Release) {
	names := make([]string, 0, len(rel.Services))
	for n := range rel.Services {
		names = append(names, n)
	}
	sort.Strings(names)
	for i, n := range names {
		svc := rel.Services[n]
		svc.ID, svc.ImageID = int64(i+1), int64(i+1)
		rel.Services[n] = svc
	}
}

// Releases lists a fleet's releases, newest first.
func (s *Server) Releases(ctx context.Context, nameOrID string) ([]reeve.FleetRelease, error) {
	f, err := s.Fleet(ctx, nameOrID)
	if err != nil {
		return nil, err
	}
	return s.st.Releases(ctx, f.ID)
}

// Release returns one release with its compose file.
func (s *Server) Release(ctx context.Context, nameOrID, commit string) (reeve.FleetRelease, error) {
	f, err := s.Fleet(ctx, nameOrID)
	if err != nil {
		return reeve.FleetRelease{}, err
	}
	r, err := s.st.Release(ctx, f.ID, commit)
	return r, releaseNotFound(err, f.Name, commit)
}
