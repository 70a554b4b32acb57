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

// CreateFleetRequest is what a fleet is made of.
type CreateFleetRequest struct {
	Name string
	// DeviceType is the type of device that may join; "" accepts every
	// type.
	DeviceType string
	// UpdateStrategy is the default of services whose labels choose
	// none; "" is download-then-kill.
	UpdateStrategy string
	// Parent is, for a fleet of dependent devices, the fleet (name or
	// id) of the gateways whose agents carry them; "" for a fleet of
	// devices that run an agent.
	Parent string
}

// CreateFleet makes a fleet: with a Parent, a dependent one (class
// dependent), whose devices the devices of the parent carry.
func (s *Server) CreateFleet(ctx context.Context, req CreateFleetRequest) (reeve.Fleet, error) {
	var p []reeve.Problem
	if !fleetName.MatchString(req.Name) {
		p = append(p, reeve.Problem{Path: "name", Message: fmt.Sprintf("%q is not a fleet name: use 1 to 63 letters, digits, '.', '_' or '-', starting with a letter or digit", req.Name)})
	} else if _, err := strconv.ParseInt(req.Name, 10, 64); err == nil {
		p = append(p, reeve.Problem{Path: "name", Message: "a fleet name cannot be only digits: those are fleet ids"})
	}
	f := reeve.Fleet{UUID: newUUID(), Name: req.Name, DeviceType: req.DeviceType, UpdateStrategy: req.UpdateStrategy, Class: reeve.ClassFleet, CreatedAt: s.now()}
	if f.DeviceType == "" {
		f.DeviceType = reeve.DeviceTypeAny
	} else if len(f.DeviceType) > 64 {
		p = append(p, reeve.Problem{Path: "device_type", Message: "longer than 64 characters"})
	}
	if f.UpdateStrategy == "" {
		f.UpdateStrategy = reeve.StrategyDownloadThenKill
	} else if !validStrategy(f.UpdateStrategy) {
		p = append(p, reeve.Problem{Path: "update_strategy", Message: fmt.Sprintf("%q is not an update strategy: use %s", f.UpdateStrategy, strategies)})
	}
	if req.Parent != "" {
		parent, problem, err := s.parentFleet(ctx, req.Parent)
		if err != nil {
			return reeve.Fleet{}, err
		}
		if problem != "" {
			p = append(p, reeve.Problem{Path: "parent", Message: problem})
		}
		f.Class, f.ParentID = reeve.ClassDependent, parent.ID
	}
	if len(p) > 0 {
		return reeve.Fleet{}, &reeve.ValidationError{Problems: p}
	}
	created, err := s.st.CreateFleet(ctx, f)
	if reeve.ErrorCode(err) == reeve.CodeNotFound && f.ParentID != 0 { // the parent went meanwhile
		return reeve.Fleet{}, &reeve.ValidationError{Problems: []reeve.Problem{{Path: "parent", Message: fmt.Sprintf("no fleet %q: `reeve fleet ls` lists them", req.Parent)}}}
	}
	if err != nil {
		return reeve.Fleet{}, err
	}
	if created.Dependent() {
		// Its gateways' targets get its app.
		s.hub.link(created)
		s.hub.notify(created.ID)
		s.log.Info("dependent fleet created", "fleet", created.Name, "parent", req.Parent)
	}
	return created, nil
}

// parentFleet finds the fleet a dependent fleet is to be made under; when
// it cannot be one, problem says why.
func (s *Server) parentFleet(ctx context.Context, nameOrID string) (parent reeve.Fleet, problem string, err error) {
	parent, err = s.Fleet(ctx, nameOrID)
	switch {
	case reeve.ErrorCode(err) == reeve.CodeNotFound:
		return parent, fmt.Sprintf("no fleet %q: the parent is the fleet of the gateways that carry the devices (`reeve fleet ls` lists them)", nameOrID), nil
	case err != nil:
		return parent, "", err
	case parent.Dependent():
		return parent, fmt.Sprintf("fleet %q is itself a fleet of dependent devices: the parent is the fleet of the gateways, whose devices run an agent", parent.Name), nil
	}
	return parent, "", nil
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
	s.hub.notify(f.ID) // a dependent fleet's gateways lose its app
	s.hub.unlink(f.ID)
	return nil
}

// CreateProvisioningKey makes a key for the fleet and returns it: the
// only time it is known.
func (s *Server) CreateProvisioningKey(ctx context.Context, nameOrID, name string, expiresAt time.Time) (string, reeve.ProvisioningKey, error) {
	f, err := s.Fleet(ctx, nameOrID)
	if err != nil {
		return "", reeve.ProvisioningKey{}, err
	}
	if f.Dependent() {
		return "", reeve.ProvisioningKey{}, reeve.Errorf(reeve.CodeInvalid,
			"fleet %q is a fleet of dependent devices: they join through the agent of their gateway (a device of its parent fleet), not with a provisioning key", f.Name)
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
	if f.Dependent() {
		if err := checkDependentRelease(f, rel); err != nil {
			return reeve.FleetRelease{}, false, err
		}
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

// checkDependentRelease checks a release of a dependent fleet: it is one
// image, which holds the devices' firmware under /assets and never runs.
func checkDependentRelease(f reeve.Fleet, rel reeve.Release) error {
	if n := len(rel.Services); n != 1 {
		return &reeve.ValidationError{Problems: []reeve.Problem{{Path: "services", Message: fmt.Sprintf(
			"fleet %q is a fleet of dependent devices: its release is exactly one service, whose image holds the firmware under /assets (found %d services)", f.Name, n)}}}
	}
	for name, svc := range rel.Services {
		if svc.Image == "" {
			return &reeve.ValidationError{Problems: []reeve.Problem{{Path: "services." + name + ".image", Message: fmt.Sprintf(
				"required: fleet %q is a fleet of dependent devices, and the image holds their firmware under /assets", f.Name)}}}
		}
	}
	return nil
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
