package reeve

import (
	"regexp"
	"time"
)

// This file holds the fleet server's model: what operators create and what
// devices report. The stores persist these types; the operator API serves
// them as JSON.

// Fleet is a group of devices that run the same application.
type Fleet struct {
	ID   int64  `json:"id"`
	UUID string `json:"uuid"` // the app UUID devices see in their target state
	Name string `json:"name"`
	// DeviceType is the type of device that may join; DeviceTypeAny
	// accepts every type.
	DeviceType string `json:"device_type"`
	// UpdateStrategy applies to services whose labels do not choose one.
	UpdateStrategy string `json:"update_strategy"`
	// PinnedRelease is the commit every device of the fleet runs unless it
	// is pinned itself; "" tracks the newest release.
	PinnedRelease string `json:"pinned_release,omitempty"`
	// Class is ClassFleet for devices that run an agent, ClassDependent
	// for devices that cannot (microcontrollers) and are carried by the
	// agent of a gateway device of the Parent fleet.
	Class string `json:"class"`
	// ParentID is, for a dependent fleet, the fleet of the gateways
	// whose agents carry its devices; 0 otherwise.
	ParentID  int64     `json:"parent_id,omitempty"`
	CreatedAt time.Time `json:"created_at"`
}

// Dependent reports whether the fleet's devices are dependent devices.
func (f Fleet) Dependent() bool { return f.Class == ClassDependent }

// DeviceTypeAny is the fleet device type that accepts devices of every type.
const DeviceTypeAny = "any"

// ProvisioningKey lets a device join a fleet. Only its hash is kept.
type ProvisioningKey struct {
	ID        int64     `json:"id"`
	FleetID   int64     `json:"fleet_id"`
	Name      string    `json:"name,omitempty"`
	Hash      string    `json:"-"`
	ExpiresAt time.Time `json:"expires_at,omitzero"`
	RevokedAt time.Time `json:"revoked_at,omitzero"`
	CreatedAt time.Time `json:"created_at"`
}

// Usable reports whether the key may provision a device at t.
func (k ProvisioningKey) Usable(t time.Time) bool {
	return k.RevokedAt.IsZero() && (k.ExpiresAt.IsZero() || t.Before(k.ExpiresAt))
}

// Token is an operator's API token. Only its hash is kept.
type Token struct {
	ID        int64     `json:"id"`
	Name      string    `json:"name"`
	Hash      string    `json:"-"`
	CreatedAt time.Time `json:"created_at"`
}

// Device is one device of a fleet as the server knows it.
type Device struct {
	ID         int64  `json:"id"`
	UUID       string `json:"uuid"`
	Name       string `json:"name"`
	FleetID    int64  `json:"fleet_id"`
	DeviceType string `json:"device_type"`
	// KeyHash is the hash of the device's API key; "" when the key was
	// revoked (the device is then refused until it is given a new one).
	KeyHash string `json:"-"`
	// PinnedRelease is the commit this device runs whatever its fleet
	// tracks; "" follows the fleet.
	PinnedRelease string `json:"pinned_release,omitempty"`
	// GatewayID is, for a dependent device, the ID of the device whose
	// agent carries it (provisioned it, keeps its target, reports its
	// state and ships its log); 0 for a device with its own agent.
	GatewayID int64 `json:"gateway_id,omitempty"`
	// LocalID is a dependent device's own identifier on its link (a
	// serial number, an LwM2M endpoint name), as its gateway gave it.
	LocalID   string    `json:"local_id,omitempty"`
	Tags      Tags      `json:"tags,omitempty"`
	CreatedAt time.Time `json:"created_at"`
	LastSeen  time.Time `json:"last_seen,omitzero"`
	// State is the merge of every report the device sent.
	State DeviceReport `json:"state,omitzero"`
	// ReportedAt is when the device last sent a report.
	ReportedAt time.Time `json:"reported_at,omitzero"`
}

// Tags are free-form key/value labels an operator puts on a device.
type Tags map[string]string

// FleetRelease is one pushed version of a fleet's application.
type FleetRelease struct {
	ID      int64  `json:"id"`
	FleetID int64  `json:"fleet_id"`
	Commit  string `json:"commit"`
	// Compose is the compose file exactly as pushed.
	Compose string `json:"compose,omitempty"`
	// Release is what the compose file parsed to; its ID is ID.
	Release   Release   `json:"release"`
	CreatedAt time.Time `json:"created_at"`
}

// Variable kinds.
const (
	VarEnv    = "env"    // reaches the containers' environment
	VarConfig = "config" // configures the device and the agent
)

// Variable is an environment or config variable at one scope. A zero
// FleetID, DeviceID or Service leaves that part of the scope open:
//
//	fleet:          FleetID
//	service:        FleetID + Service
//	device:         DeviceID
//	device+service: DeviceID + Service
//
// Config variables have no service scopes.
type Variable struct {
	ID       int64  `json:"id"`
	Kind     string `json:"kind"`
	FleetID  int64  `json:"fleet_id,omitempty"`
	DeviceID int64  `json:"device_id,omitempty"`
	Service  string `json:"service,omitempty"`
	Name     string `json:"name"`
	Value    string `json:"value"`
}

// Variable scopes, lowest precedence first.
const (
	ScopeFleet         = "fleet"
	ScopeService       = "service"
	ScopeDevice        = "device"
	ScopeDeviceService = "device+service"
)

// Scope names the variable's scope.
func (v Variable) Scope() string {
	switch {
	case v.DeviceID != 0 && v.Service != "":
		return ScopeDeviceService
	case v.DeviceID != 0:
		return ScopeDevice
	case v.Service != "":
		return ScopeService
	default:
		return ScopeFleet
	}
}

var varName = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

// ValidVarName reports whether name can be an environment or config
// variable name.
func ValidVarName(name string) bool { return len(name) <= 256 && varName.MatchString(name) }

var uuidPattern = regexp.MustCompile(`^[0-9a-f]{32}$|^[0-9a-f]{62}$|^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$`)

// ValidUUID reports whether s is a device or app UUID reeve accepts: 32 or
// 62 lowercase hex digits, or the dashed 8-4-4-4-12 form.
func ValidUUID(s string) bool { return uuidPattern.MatchString(s) }

// CurrentState is what a device reports with PATCH /device/v3/state: keyed
// by device UUID, holding only what changed since the last report. A nil
// field means "unchanged"; Apps, when present, replaces the apps reported
// before.
type CurrentState map[string]DeviceReport

// DeviceReport is one device's reported state. Sizes are in MiB,
// temperatures in °C, usages in percent.
type DeviceReport struct {
	Name         *string `json:"name,omitempty"`
	Status       *string `json:"status,omitempty"` // Idle, Updating, …
	UpdateStatus *string `json:"update_status,omitempty"`
	LastError    *string `json:"last_error,omitempty"`
	OSVersion    *string `json:"os_version,omitempty"`
	AgentVersion *string `json:"agent_version,omitempty"`
	// APIKey is the device-wide key of the agent's API. The server keeps
	// it and never shows it in its operator API.
	APIKey     *string `json:"api_key,omitempty"`
	DeviceType *string `json:"device_type,omitempty"`
	IPAddress  *string `json:"ip_address,omitempty"` // space-separated
	MACAddress *string `json:"mac_address,omitempty"`
	APIPort    *int    `json:"api_port,omitempty"`
	// Commit is the release every fleet service runs, when they all run one.
	Commit        *string   `json:"commit,omitempty"`
	CPUUsage      *float64  `json:"cpu_usage,omitempty"`
	CPUTemp       *float64  `json:"cpu_temp,omitempty"`
	MemoryUsage   *int64    `json:"memory_usage,omitempty"`
	MemoryTotal   *int64    `json:"memory_total,omitempty"`
	StorageUsage  *int64    `json:"storage_usage,omitempty"`
	StorageTotal  *int64    `json:"storage_total,omitempty"`
	PollInterval  *Duration `json:"poll_interval,omitempty"`
	TargetVersion *int64    `json:"target_version,omitempty"`
	// Apps is keyed by app UUID.
	Apps map[string]AppReport `json:"apps,omitempty"`

	// Dependent devices only (reported by their gateway): whether the
	// gateway hears from the device, and the environment and config
	// variables the device runs with (each replaces the one before).
	IsOnline    *bool             `json:"is_online,omitempty"`
	Environment map[string]string `json:"environment,omitempty"`
	Config      map[string]string `json:"config,omitempty"`
}

// AppReport is one app's state on a device.
type AppReport struct {
	Releases map[string]ReleaseReport `json:"releases"` // keyed by commit
}

// ReleaseReport is the state of the services of one release.
type ReleaseReport struct {
	Services map[string]ServiceReport `json:"services"`
}

// ServiceReport is one service's state on a device.
type ServiceReport struct {
	Image            string `json:"image"`
	Status           string `json:"status"`
	DownloadProgress *int   `json:"download_progress,omitempty"`
	ExitCode         *int   `json:"exit_code,omitempty"`
	RestartCount     int    `json:"restart_count,omitempty"`
	Error            string `json:"error,omitempty"`
}

// Merge applies a partial report on top of r: fields present in p replace
// those of r.
func (r *DeviceReport) Merge(p DeviceReport) {
	set := func(dst **string, src *string) {
		if src != nil {
			*dst = src
		}
	}
	set(&r.Name, p.Name)
	set(&r.Status, p.Status)
	set(&r.UpdateStatus, p.UpdateStatus)
	set(&r.LastError, p.LastError)
	set(&r.OSVersion, p.OSVersion)
	set(&r.AgentVersion, p.AgentVersion)
	set(&r.APIKey, p.APIKey)
	set(&r.DeviceType, p.DeviceType)
	set(&r.IPAddress, p.IPAddress)
	set(&r.MACAddress, p.MACAddress)
	set(&r.Commit, p.Commit)
	if p.APIPort != nil {
		r.APIPort = p.APIPort
	}
	if p.CPUUsage != nil {
		r.CPUUsage = p.CPUUsage
	}
	if p.CPUTemp != nil {
		r.CPUTemp = p.CPUTemp
	}
	for _, f := range []struct{ dst, src **int64 }{
		{&r.MemoryUsage, &p.MemoryUsage}, {&r.MemoryTotal, &p.MemoryTotal},
		{&r.StorageUsage, &p.StorageUsage}, {&r.StorageTotal, &p.StorageTotal},
		{&r.TargetVersion, &p.TargetVersion},
	} {
		if *f.src != nil {
			*f.dst = *f.src
		}
	}
	if p.PollInterval != nil {
		r.PollInterval = p.PollInterval
	}
	if p.Apps != nil {
		r.Apps = p.Apps
	}
	if p.IsOnline != nil {
		r.IsOnline = p.IsOnline
	}
	if p.Environment != nil {
		r.Environment = p.Environment
	}
	if p.Config != nil {
		r.Config = p.Config
	}
}
