// Package store defines how the fleet server keeps its model. Every
// implementation (store/sqlite, later store/postgres) passes the conformance
// suite in store/storetest; nothing here is specific to one SQL dialect.
//
// Errors carry reeve error codes: a missing row is reeve.CodeNotFound, a
// duplicate (fleet name, device UUID, release commit, key hash) is
// reeve.CodeConflict, so handlers map them to HTTP without knowing the store.
package store

import (
	"context"
	"time"

	"reeve.dev/reeve"
)

// Store is the fleet server's persistence. Methods are safe for concurrent
// use. Times are stored with at least millisecond precision and returned in
// UTC. Every implementation also holds to these (storetest checks them):
//
//   - Create* with a zero CreatedAt stores the time of the call;
//   - a FleetRelease returned has Release.ID equal to its ID;
//   - creating a key, device or release in a fleet that does not exist, or
//     SetVar for an unknown fleet or device, is not_found; SetVar with
//     neither a fleet nor a device is invalid;
//   - IDs of deleted rows are never reused.
type Store interface {
	// Tokens (operator API). Hash is the lookup key.
	CreateToken(ctx context.Context, t reeve.Token) (reeve.Token, error)
	TokenByHash(ctx context.Context, hash string) (reeve.Token, error)
	CountTokens(ctx context.Context) (int, error)

	// Fleets. Names are unique; UUIDs are unique. CreateFleet stores
	// Class (an empty one as reeve.ClassFleet) and ParentID, which no
	// later call changes; a ParentID of a fleet that does not exist is
	// not_found.
	CreateFleet(ctx context.Context, f reeve.Fleet) (reeve.Fleet, error)
	Fleet(ctx context.Context, id int64) (reeve.Fleet, error)
	FleetByName(ctx context.Context, name string) (reeve.Fleet, error)
	Fleets(ctx context.Context) ([]reeve.Fleet, error) // by name
	// UpdateFleet writes UpdateStrategy, DeviceType and PinnedRelease.
	UpdateFleet(ctx context.Context, f reeve.Fleet) error
	// DeleteFleet removes the fleet with its keys, releases and
	// variables. A fleet that still has devices, or is the parent of
	// another fleet, is a conflict.
	DeleteFleet(ctx context.Context, id int64) error

	// Provisioning keys. Hash is unique.
	CreateProvisioningKey(ctx context.Context, k reeve.ProvisioningKey) (reeve.ProvisioningKey, error)
	ProvisioningKeyByHash(ctx context.Context, hash string) (reeve.ProvisioningKey, error)
	ProvisioningKey(ctx context.Context, id int64) (reeve.ProvisioningKey, error)
	ProvisioningKeys(ctx context.Context, fleetID int64) ([]reeve.ProvisioningKey, error) // oldest first
	// RevokeProvisioningKey sets RevokedAt; revoking twice keeps the first time.
	RevokeProvisioningKey(ctx context.Context, id int64, at time.Time) error

	// Devices. UUIDs are unique; KeyHash, when set, is unique.
	// CreateDevice stores GatewayID and LocalID, which no later call
	// changes; a GatewayID of a device that does not exist is not_found.
	CreateDevice(ctx context.Context, d reeve.Device) (reeve.Device, error)
	Device(ctx context.Context, uuid string) (reeve.Device, error)
	DeviceByID(ctx context.Context, id int64) (reeve.Device, error)
	// DeviceByKeyHash finds the device with that key hash ("" never
	// matches).
	DeviceByKeyHash(ctx context.Context, hash string) (reeve.Device, error)
	// Devices lists devices by name then UUID; fleetID 0 lists all.
	Devices(ctx context.Context, fleetID int64) ([]reeve.Device, error)
	// DependentDevices lists the devices whose GatewayID is gatewayID,
	// by name then UUID (none for 0).
	DependentDevices(ctx context.Context, gatewayID int64) ([]reeve.Device, error)
	// UpdateDevice reads the device, lets fn change it and writes it back
	// in one transaction: Name, FleetID, DeviceType, KeyHash,
	// PinnedRelease, Tags, LastSeen, State and ReportedAt are written. An
	// error from fn aborts without writing and is returned as is. fn may
	// read through the store but must not write through it (SQLite has
	// one writer: it would wait for ever).
	UpdateDevice(ctx context.Context, uuid string, fn func(*reeve.Device) error) (reeve.Device, error)
	// UpdateDevices is UpdateDevice for many devices in one transaction,
	// so that many small changes (device reports) share one commit. errs
	// holds each update's own error (its fn's, or not_found): a failed
	// update writes nothing of its device and does not stop the others.
	// err is for the transaction as a whole; then nothing was written.
	UpdateDevices(ctx context.Context, updates []DeviceUpdate) (errs []error, err error)
	// TouchDevices raises LastSeen of many devices at once (never lowers
	// it); unknown UUIDs are ignored.
	TouchDevices(ctx context.Context, seen map[string]time.Time) error
	// DeleteDevice removes the device with its variables. A device that
	// still carries dependent devices (their GatewayID) is a conflict.
	DeleteDevice(ctx context.Context, uuid string) error

	// Releases. (FleetID, Commit) is unique.
	CreateRelease(ctx context.Context, r reeve.FleetRelease) (reeve.FleetRelease, error)
	Release(ctx context.Context, fleetID int64, commit string) (reeve.FleetRelease, error)
	ReleaseByID(ctx context.Context, id int64) (reeve.FleetRelease, error)
	// Releases lists a fleet's releases newest first, without Compose.
	Releases(ctx context.Context, fleetID int64) ([]reeve.FleetRelease, error)
	// LatestRelease is the newest release (highest ID) of a fleet.
	LatestRelease(ctx context.Context, fleetID int64) (reeve.FleetRelease, error)

	// Variables. (Kind, FleetID, DeviceID, Service, Name) is unique; SetVar
	// inserts or replaces the value.
	SetVar(ctx context.Context, v reeve.Variable) (reeve.Variable, error)
	// Vars lists the variables of exactly one scope, by name.
	Vars(ctx context.Context, kind string, fleetID, deviceID int64, service string) ([]reeve.Variable, error)
	// DeviceVars lists every variable that reaches a device: its fleet's
	// (fleet and service scopes) and its own (device and device+service).
	DeviceVars(ctx context.Context, kind string, fleetID, deviceID int64) ([]reeve.Variable, error)
	DeleteVar(ctx context.Context, kind string, fleetID, deviceID int64, service, name string) error

	Close() error
}

// DeviceUpdate is one change of UpdateDevices.
type DeviceUpdate struct {
	UUID string
	Fn   func(*reeve.Device) error
}
