package server

import (
	"context"
	"fmt"

	"reeve.dev/reeve"
)

// VarScope names a variable's scope as operators do: a fleet (name or id)
// or a device (UUID), optionally narrowed to one service.
type VarScope struct {
	Fleet   string
	Device  string
	Service string
}

type resolvedScope struct {
	fleetID  int64
	deviceID int64
	service  string
}

func (s *Server) resolveScope(ctx context.Context, kind string, sc VarScope) (resolvedScope, error) {
	switch {
	case kind != reeve.VarEnv && kind != reeve.VarConfig:
		return resolvedScope{}, reeve.Errorf(reeve.CodeNotFound, "no variables of kind %q: use env or config", kind)
	case sc.Fleet != "" && sc.Device != "":
		return resolvedScope{}, reeve.Errorf(reeve.CodeInvalid, "give a fleet or a device, not both: a device's variables are its own scope")
	case sc.Fleet == "" && sc.Device == "":
		return resolvedScope{}, reeve.Errorf(reeve.CodeInvalid, "give a fleet or a device: every variable belongs to one")
	case kind == reeve.VarConfig && sc.Service != "":
		return resolvedScope{}, reeve.Errorf(reeve.CodeInvalid, "config variables have no service scope: they configure the device, not a service")
	case len(sc.Service) > 63:
		return resolvedScope{}, reeve.Errorf(reeve.CodeInvalid, "service: %q is not a service name", sc.Service)
	}
	rs := resolvedScope{service: sc.Service}
	if sc.Device != "" {
		d, err := s.device(ctx, sc.Device)
		if err != nil {
			return rs, err
		}
		rs.deviceID, rs.fleetID = d.ID, d.FleetID
		return rs, nil
	}
	f, err := s.Fleet(ctx, sc.Fleet)
	if err != nil {
		return rs, err
	}
	rs.fleetID = f.ID
	return rs, nil
}

// storeFleet is the FleetID the store keys a scope by: device scopes are
// keyed by the device alone.
func (rs resolvedScope) storeFleet() int64 {
	if rs.deviceID != 0 {
		return 0
	}
	return rs.fleetID
}

// Vars lists the variables of exactly one scope.
func (s *Server) Vars(ctx context.Context, kind string, sc VarScope) ([]reeve.Variable, error) {
	rs, err := s.resolveScope(ctx, kind, sc)
	if err != nil {
		return nil, err
	}
	return s.st.Vars(ctx, kind, rs.storeFleet(), rs.deviceID, rs.service)
}

// SetVar sets a variable; the devices it reaches get a new target.
func (s *Server) SetVar(ctx context.Context, kind string, sc VarScope, name, value string) (reeve.Variable, error) {
	if !reeve.ValidVarName(name) {
		return reeve.Variable{}, reeve.Errorf(reeve.CodeInvalid, "name: %q is not a variable name: use letters, digits and '_', not starting with a digit", name)
	}
	if len(value) > 64<<10 {
		return reeve.Variable{}, reeve.Errorf(reeve.CodeInvalid, "value: longer than 64 KiB")
	}
	rs, err := s.resolveScope(ctx, kind, sc)
	if err != nil {
		return reeve.Variable{}, err
	}
	v, err := s.st.SetVar(ctx, reeve.Variable{Kind: kind, FleetID: rs.storeFleet(), DeviceID: rs.deviceID, Service: rs.service, Name: name, Value: value})
	if err != nil {
		return v, err
	}
	s.hub.notify(rs.fleetID)
	return v, nil
}

// DeleteVar removes a variable.
func (s *Server) DeleteVar(ctx context.Context, kind string, sc VarScope, name string) error {
	rs, err := s.resolveScope(ctx, kind, sc)
	if err != nil {
		return err
	}
	if err := s.st.DeleteVar(ctx, kind, rs.storeFleet(), rs.deviceID, rs.service, name); err != nil {
		if reeve.ErrorCode(err) == reeve.CodeNotFound {
			return reeve.Errorf(reeve.CodeNotFound, "no %s variable %q at that scope: `reeve %s ls` lists them", kind, name, kind)
		}
		return fmt.Errorf("delete variable: %w", err)
	}
	s.hub.notify(rs.fleetID)
	return nil
}
