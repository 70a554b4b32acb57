package storetest

import (
	"fmt"
	"testing"

	"reeve.dev/reeve"
	"reeve.dev/reeve/internal/store"
)

// Dependent devices: fleets of class dependent under a gateway fleet, and
// devices carried by a gateway device.

func newDependentFleet(t *testing.T, s store.Store, name string, parent reeve.Fleet) reeve.Fleet {
	t.Helper()
	f, err := s.CreateFleet(t.Context(), reeve.Fleet{
		UUID: uuidFor("fleet/" + name), Name: name, DeviceType: "esp32", UpdateStrategy: reeve.StrategyDownloadThenKill,
		Class: reeve.ClassDependent, ParentID: parent.ID, CreatedAt: at(0),
	})
	ok(t, err, "create dependent fleet "+name)
	return f
}

func newDependent(t *testing.T, s store.Store, fleetID int64, gateway reeve.Device, name, localID string) reeve.Device {
	t.Helper()
	d, err := s.CreateDevice(t.Context(), reeve.Device{
		UUID: uuidFor("device/" + name), Name: name, FleetID: fleetID, DeviceType: "esp32",
		GatewayID: gateway.ID, LocalID: localID, CreatedAt: at(0),
	})
	ok(t, err, "create dependent device "+name)
	return d
}

func testDependentFleets(t *testing.T, s store.Store) {
	ctx := t.Context()
	gateways := newFleet(t, s, "gateways")
	in := reeve.Fleet{
		UUID: uuidFor("fleet/sensors"), Name: "sensors", DeviceType: "esp32", UpdateStrategy: reeve.StrategyDownloadThenKill,
		Class: reeve.ClassDependent, ParentID: gateways.ID, CreatedAt: at(0),
	}
	sensors, err := s.CreateFleet(ctx, in)
	ok(t, err, "create dependent fleet")
	want := in
	want.ID, want.CreatedAt = sensors.ID, stored(in.CreatedAt)
	same(t, "created dependent fleet", want, sensors)
	if !sensors.Dependent() {
		t.Errorf("fleet of class %q is not dependent", sensors.Class)
	}
	got, err := s.Fleet(ctx, sensors.ID)
	ok(t, err, "dependent fleet by ID")
	same(t, "dependent fleet by ID", want, got)
	got, err = s.FleetByName(ctx, "sensors")
	ok(t, err, "dependent fleet by name")
	same(t, "dependent fleet by name", want, got)
	all, err := s.Fleets(ctx)
	ok(t, err, "list fleets")
	same(t, "fleets with a dependent one", []reeve.Fleet{gateways, want}, all)
	same(t, "class of a fleet created without one", reeve.ClassFleet, gateways.Class)
	same(t, "parent of a fleet created without one", int64(0), gateways.ParentID)

	// UpdateFleet leaves class and parent as they are.
	upd := sensors
	upd.Class, upd.ParentID, upd.PinnedRelease = reeve.ClassFleet, 0, "9f86d081"
	ok(t, s.UpdateFleet(ctx, upd), "update dependent fleet")
	got, err = s.Fleet(ctx, sensors.ID)
	ok(t, err, "read updated dependent fleet")
	want.PinnedRelease = "9f86d081"
	same(t, "updated dependent fleet", want, got)

	// A parent that does not exist is refused, and nothing is stored.
	_, err = s.CreateFleet(ctx, reeve.Fleet{
		UUID: uuidFor("fleet/orphans"), Name: "orphans", DeviceType: reeve.DeviceTypeAny,
		Class: reeve.ClassDependent, ParentID: sensors.ID + 1000, CreatedAt: at(0),
	})
	wantCode(t, err, reeve.CodeNotFound, fmt.Sprint(sensors.ID+1000))
	_, err = s.FleetByName(ctx, "orphans")
	wantCode(t, err, reeve.CodeNotFound)
}

func testDeleteParentFleet(t *testing.T, s store.Store) {
	ctx := t.Context()
	gateways := newFleet(t, s, "gateways")
	sensors := newDependentFleet(t, s, "sensors", gateways)
	lights := newDependentFleet(t, s, "lights", gateways)

	wantCode(t, s.DeleteFleet(ctx, gateways.ID), reeve.CodeConflict, "gateways", "2 dependent fleets", "remove them first")
	got, err := s.Fleet(ctx, gateways.ID)
	ok(t, err, "parent fleet after a refused delete")
	same(t, "parent fleet after a refused delete", gateways, got)

	ok(t, s.DeleteFleet(ctx, sensors.ID), "delete a dependent fleet")
	wantCode(t, s.DeleteFleet(ctx, gateways.ID), reeve.CodeConflict, "gateways", "1 dependent fleet")
	ok(t, s.DeleteFleet(ctx, lights.ID), "delete the other dependent fleet")
	ok(t, s.DeleteFleet(ctx, gateways.ID), "delete the parent without dependent fleets")
	_, err = s.Fleet(ctx, gateways.ID)
	wantCode(t, err, reeve.CodeNotFound)
}

func testDependentDevices(t *testing.T, s store.Store) {
	ctx := t.Context()
	gateways := newFleet(t, s, "gateways")
	sensors := newDependentFleet(t, s, "sensors", gateways)
	gw1 := newDevice(t, s, gateways.ID, "gw-1")
	gw2 := newDevice(t, s, gateways.ID, "gw-2")

	in := reeve.Device{
		UUID: uuidFor("device/probe"), Name: "probe", FleetID: sensors.ID, DeviceType: "esp32",
		GatewayID: gw1.ID, LocalID: "urn:dev:mac:0024befffe804ff1", CreatedAt: at(0),
	}
	probe, err := s.CreateDevice(ctx, in)
	ok(t, err, "create dependent device")
	want := in
	want.ID, want.CreatedAt = probe.ID, stored(in.CreatedAt)
	same(t, "created dependent device", want, probe)
	got, err := s.Device(ctx, probe.UUID)
	ok(t, err, "dependent device by UUID")
	same(t, "dependent device by UUID", want, got)
	got, err = s.DeviceByID(ctx, probe.ID)
	ok(t, err, "dependent device by ID")
	same(t, "dependent device by ID", want, got)
	same(t, "gateway and local ID of a device created without", [2]any{int64(0), ""}, [2]any{gw1.GatewayID, gw1.LocalID})

	// Listed by name then UUID; another gateway's are not.
	alpha := newDependent(t, s, sensors.ID, gw1, "alpha", "a")
	zulu := newDependent(t, s, sensors.ID, gw1, "zulu", "")
	other := newDependent(t, s, sensors.ID, gw2, "beta", "b")
	deps, err := s.DependentDevices(ctx, gw1.ID)
	ok(t, err, "dependent devices of gw-1")
	same(t, "dependent devices of gw-1", []reeve.Device{alpha, probe, zulu}, deps)
	deps, err = s.DependentDevices(ctx, gw2.ID)
	ok(t, err, "dependent devices of gw-2")
	same(t, "dependent devices of gw-2", []reeve.Device{other}, deps)
	for _, id := range []int64{0, probe.ID, gw2.ID + 1000} {
		deps, err = s.DependentDevices(ctx, id)
		ok(t, err, fmt.Sprint("dependent devices of ", id))
		if deps == nil || len(deps) != 0 {
			t.Errorf("dependent devices of %d: %v, want an empty list", id, deps)
		}
	}
	devs, err := s.Devices(ctx, sensors.ID)
	ok(t, err, "devices of the dependent fleet")
	same(t, "devices of the dependent fleet", []reeve.Device{alpha, other, probe, zulu}, devs)

	// UpdateDevice does not move a device to another gateway.
	upd, err := s.UpdateDevice(ctx, probe.UUID, func(d *reeve.Device) error {
		d.Name = "probe-2"
		d.GatewayID, d.LocalID = gw2.ID, "changed"
		return nil
	})
	ok(t, err, "update dependent device")
	want.Name = "probe-2"
	same(t, "updated dependent device", want, upd)
	got, err = s.Device(ctx, probe.UUID)
	ok(t, err, "read updated dependent device")
	same(t, "read updated dependent device", want, got)

	// A gateway that does not exist is refused, and nothing is stored.
	_, err = s.CreateDevice(ctx, reeve.Device{
		UUID: uuidFor("device/lost"), Name: "lost", FleetID: sensors.ID, GatewayID: gw2.ID + 1000, CreatedAt: at(0),
	})
	wantCode(t, err, reeve.CodeNotFound, fmt.Sprint(gw2.ID+1000))
	_, err = s.Device(ctx, uuidFor("device/lost"))
	wantCode(t, err, reeve.CodeNotFound)
}

func testDeleteGateway(t *testing.T, s store.Store) {
	ctx := t.Context()
	gateways := newFleet(t, s, "gateways")
	sensors := newDependentFleet(t, s, "sensors", gateways)
	gw := newDevice(t, s, gateways.ID, "gw")
	a := newDependent(t, s, sensors.ID, gw, "a", "")
	b := newDependent(t, s, sensors.ID, gw, "b", "")
	v := newVar(t, s, reeve.Variable{Kind: reeve.VarEnv, DeviceID: gw.ID, Name: "A", Value: "gw"})

	wantCode(t, s.DeleteDevice(ctx, gw.UUID), reeve.CodeConflict, gw.UUID, "2 dependent devices", "remove them first")
	got, err := s.Device(ctx, gw.UUID)
	ok(t, err, "gateway after a refused delete")
	same(t, "gateway after a refused delete", gw, got)
	vs, err := s.Vars(ctx, reeve.VarEnv, 0, gw.ID, "")
	ok(t, err, "gateway variables after a refused delete")
	same(t, "gateway variables after a refused delete", []reeve.Variable{v}, vs)

	// A dependent device goes as any device does.
	ok(t, s.DeleteDevice(ctx, a.UUID), "delete a dependent device")
	deps, err := s.DependentDevices(ctx, gw.ID)
	ok(t, err, "dependent devices left")
	same(t, "dependent devices left", []reeve.Device{b}, deps)
	wantCode(t, s.DeleteDevice(ctx, gw.UUID), reeve.CodeConflict, "1 dependent device")
	ok(t, s.DeleteDevice(ctx, b.UUID), "delete the other dependent device")
	ok(t, s.DeleteDevice(ctx, gw.UUID), "delete the gateway without dependent devices")
	_, err = s.Device(ctx, gw.UUID)
	wantCode(t, err, reeve.CodeNotFound)
}
