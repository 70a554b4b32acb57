package server

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"

	"reeve.dev/reeve"
)

// Dependent devices are devices that run no agent (microcontrollers): the
// agent of a gateway device carries them. The gateway's fleet is the
// parent of their (dependent) fleet; the gateway registers them
// (RegisterDependent), gets their targets inside its own (AddDependents),
// reports their state inside its own reports (Report) and ships their log
// lines in its own log stream (LogIngest).

// RegisterDependentRequest is what a gateway's agent sends to register a
// dependent device it carries.
type RegisterDependentRequest struct {
	// AppID is the dependent fleet's ID: its app's id in the gateway's
	// target state.
	AppID      int64
	DeviceType string
	// LocalID is the device's own identifier on its link (a serial
	// number, an LwM2M endpoint name); optional.
	LocalID string
	// Name is optional: the device is named after its UUID without one.
	Name string
	// UUID is optional: one is made without one.
	UUID string
}

// maxLocalID bounds a dependent device's LocalID.
const maxLocalID = 256

// RegisterDependent registers a dependent device that the gateway
// carries, in a dependent fleet whose parent is the gateway's fleet. The
// device has no key of its own: only its gateway speaks for it. Its
// gateway's target gets its entry at once.
func (s *Server) RegisterDependent(ctx context.Context, gateway reeve.Device, req RegisterDependentRequest) (reeve.Device, error) {
	if err := checkRegisterDependent(&req); err != nil {
		return reeve.Device{}, err
	}
	if gateway.GatewayID != 0 {
		return reeve.Device{}, reeve.Errorf(reeve.CodeForbidden, "device %s is itself a dependent device: only a device that runs an agent carries dependent devices", gateway.UUID)
	}
	f, err := s.dependentFleetOf(ctx, gateway, req.AppID)
	if err != nil {
		return reeve.Device{}, err
	}
	if err := checkDeviceType(f, req.DeviceType); err != nil {
		return reeve.Device{}, err
	}
	name := req.Name
	if name == "" {
		name = req.UUID[:7]
	}
	d, err := s.st.CreateDevice(ctx, reeve.Device{
		UUID: req.UUID, Name: name, FleetID: f.ID, DeviceType: req.DeviceType,
		GatewayID: gateway.ID, LocalID: req.LocalID, CreatedAt: s.now(),
	})
	if reeve.ErrorCode(err) == reeve.CodeConflict {
		return d, s.registeredAlready(ctx, gateway, req.UUID)
	}
	if err != nil {
		return d, err
	}
	s.log.Info("dependent device registered", "uuid", d.UUID, "fleet", f.Name, "gateway", gateway.UUID, "local_id", d.LocalID)
	s.hub.notify(f.ID) // and so the gateway's fleet: its target has the device now
	return d, nil
}

// checkRegisterDependent checks what a request says by itself, and makes
// a UUID when it gives none.
func checkRegisterDependent(req *RegisterDependentRequest) error {
	var p []reeve.Problem
	if req.AppID <= 0 {
		p = append(p, reeve.Problem{Path: "app_id", Message: fmt.Sprintf("%d is not an app id: give the id of the dependent app in the gateway's target state", req.AppID)})
	}
	if req.UUID == "" {
		req.UUID = newUUID()
	} else if !reeve.ValidUUID(req.UUID) {
		p = append(p, reeve.Problem{Path: "uuid", Message: fmt.Sprintf("%q is not a device UUID: use 32 lowercase hex digits, or leave it out to have one made", req.UUID)})
	}
	if req.DeviceType == "" {
		p = append(p, reeve.Problem{Path: "device_type", Message: "missing: say what kind of device this is (e.g. esp32)"})
	} else if len(req.DeviceType) > 64 {
		p = append(p, reeve.Problem{Path: "device_type", Message: "longer than 64 characters"})
	}
	if len(req.Name) > 128 {
		p = append(p, reeve.Problem{Path: "name", Message: "longer than 128 characters"})
	}
	if len(req.LocalID) > maxLocalID {
		p = append(p, reeve.Problem{Path: "local_id", Message: fmt.Sprintf("longer than %d characters", maxLocalID)})
	}
	if len(p) > 0 {
		return &reeve.ValidationError{Problems: p}
	}
	return nil
}

// dependentFleetOf returns the dependent fleet appID when the gateway's
// devices carry its devices.
func (s *Server) dependentFleetOf(ctx context.Context, gateway reeve.Device, appID int64) (reeve.Fleet, error) {
	f, err := s.st.Fleet(ctx, appID)
	if reeve.ErrorCode(err) == reeve.CodeNotFound {
		return f, reeve.Errorf(reeve.CodeNotFound, "no dependent app %d: the gateway's target state lists its dependent apps (class %q) with their ids", appID, reeve.ClassDependent)
	}
	if err != nil {
		return f, err
	}
	if f.Dependent() && f.ParentID == gateway.FleetID {
		return f, nil
	}
	own, err := s.st.Fleet(ctx, gateway.FleetID)
	if err != nil {
		return f, err
	}
	if !f.Dependent() {
		return f, reeve.Errorf(reeve.CodeForbidden, "app %d (fleet %q) is not a dependent app: the devices of fleet %q, this gateway's, carry only fleets made with `reeve fleet create NAME --parent %s`", appID, f.Name, own.Name, own.Name)
	}
	return f, reeve.Errorf(reeve.CodeForbidden, "dependent app %d (fleet %q) is carried by the devices of another fleet than %q, this gateway's", appID, f.Name, own.Name)
}

// registeredAlready says why a dependent device's UUID is taken.
func (s *Server) registeredAlready(ctx context.Context, gateway reeve.Device, uuid string) error {
	d, err := s.st.Device(ctx, uuid)
	if err == nil && d.GatewayID == gateway.ID {
		return reeve.Errorf(reeve.CodeConflict, "device %s is already registered, as a dependent device of this gateway: use it as it is", uuid)
	}
	return reeve.Errorf(reeve.CodeConflict, "device %s is already registered: give the dependent device another UUID, or none to have one made", uuid)
}

// Reports of dependent devices.

// dependentReportFields are what a gateway may report of a dependent
// device: the rest of a report describes a device with an agent.
var dependentReportFields = []string{"status", "is_online", "commit", "environment", "config"}

// checkDependentReports checks the entries of a gateway's report other
// than its own: each is keyed by a device UUID and holds only
// dependentReportFields.
func checkDependentReports(gateway string, cs reeve.CurrentState) error {
	var p []reeve.Problem
	for _, uuid := range sortedKeys(cs) {
		if uuid == gateway {
			continue
		}
		if !reeve.ValidUUID(uuid) {
			p = append(p, reeve.Problem{Path: uuid, Message: "not a device UUID: the report is keyed by the UUIDs of this device and of the dependent devices it carries"})
			continue
		}
		b, err := json.Marshal(cs[uuid])
		if err != nil {
			return err
		}
		var fields map[string]json.RawMessage
		if err := json.Unmarshal(b, &fields); err != nil {
			return err
		}
		for _, k := range sortedKeys(fields) {
			if !slices.Contains(dependentReportFields, k) {
				p = append(p, reeve.Problem{Path: uuid + "." + k, Message: fmt.Sprintf(
					"not reported for a dependent device: report only %v of the dependent devices this device (%s) carries", dependentReportFields, gateway)})
			}
		}
	}
	if len(p) > 0 {
		return &reeve.ValidationError{Problems: p}
	}
	return nil
}

// dependentReport is what is taken of a dependent device's entry.
func dependentReport(r reeve.DeviceReport) reeve.DeviceReport {
	return reeve.DeviceReport{Status: r.Status, IsOnline: r.IsOnline, Commit: r.Commit, Environment: r.Environment, Config: r.Config}
}

// sortedKeys returns the keys of m in order.
func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
