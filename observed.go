package reeve

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"time"
)

// Container statuses as a runtime reports them.
const (
	StatusCreated    = "created"
	StatusRunning    = "running"
	StatusPaused     = "paused"
	StatusRestarting = "restarting"
	StatusExited     = "exited"
	StatusDead       = "dead"
	StatusRemoving   = "removing"
)

// Health states.
const (
	HealthNone      = ""
	HealthStarting  = "starting"
	HealthHealthy   = "healthy"
	HealthUnhealthy = "unhealthy"
)

// ServiceState is one container (or process instance) that reeve owns, read
// fresh from the runtime. Everything in it comes from the runtime itself
// (labels, names, engine state), never from a memory of what reeve did.
type ServiceState struct {
	ID           string            `json:"id"`
	AppUUID      string            `json:"app_uuid"`
	AppID        int64             `json:"app_id"`
	ServiceName  string            `json:"service_name"`
	Commit       string            `json:"commit"`
	Image        string            `json:"image"` // normalized reference the container was created from
	ConfigHash   string            `json:"config_hash"`
	Status       string            `json:"status"`
	ExitCode     int               `json:"exit_code"`
	Health       string            `json:"health,omitempty"`
	Networks     []string          `json:"networks,omitempty"` // release network names
	Volumes      []string          `json:"volumes,omitempty"`  // release volume names
	Labels       map[string]string `json:"labels,omitempty"`   // the release's labels
	RestartCount int               `json:"restart_count"`
	CreatedAt    time.Time         `json:"created_at"`
	StartedAt    time.Time         `json:"started_at,omitzero"`
	FinishedAt   time.Time         `json:"finished_at,omitzero"`
}

// IsRunning reports whether the container's process is up (or about to be).
func (s ServiceState) IsRunning() bool {
	return s.Status == StatusRunning || s.Status == StatusRestarting || s.Status == StatusPaused
}

// NetworkState is a network reeve owns.
type NetworkState struct {
	ID         string `json:"id"`
	AppUUID    string `json:"app_uuid"`
	Name       string `json:"name"` // release network name
	ConfigHash string `json:"config_hash"`
}

// VolumeState is a volume reeve owns.
type VolumeState struct {
	AppUUID    string `json:"app_uuid"`
	Name       string `json:"name"` // release volume name
	ConfigHash string `json:"config_hash"`
}

// ImageState is an image present on the device.
type ImageState struct {
	ID   string   `json:"id"`
	Refs []string `json:"refs"` // normalized tags and digests
}

// Snapshot is everything a runtime holds that reeve owns, read in one go.
type Snapshot struct {
	Containers []ServiceState `json:"containers"`
	Networks   []NetworkState `json:"networks"`
	Volumes    []VolumeState  `json:"volumes"`
	Images     []ImageState   `json:"images"`
}

// ServiceSpec is a service as a runtime creates it: the release's service and
// where it belongs, plus what the agent adds (environment, mounts).
type ServiceSpec struct {
	AppUUID     string  `json:"app_uuid"`
	AppID       int64   `json:"app_id"`
	AppName     string  `json:"app_name"`
	Commit      string  `json:"commit"`
	ReleaseID   int64   `json:"release_id"`
	ServiceName string  `json:"service_name"`
	Service     Service `json:"service"`
	// ExtraEnv and ExtraMounts are added by the agent (device identity,
	// lock directories); they are not part of the config hash.
	ExtraEnv    map[string]string `json:"extra_env,omitempty"`
	ExtraMounts []Mount           `json:"extra_mounts,omitempty"`
}

// NetworkSpec is a release network as a runtime creates it.
type NetworkSpec struct {
	AppUUID string  `json:"app_uuid"`
	Name    string  `json:"name"`
	Network Network `json:"network"`
}

// VolumeSpec is a release volume as a runtime creates it.
type VolumeSpec struct {
	AppUUID string `json:"app_uuid"`
	Name    string `json:"name"`
	Volume  Volume `json:"volume"`
}

// ConfigHash identifies everything about a service that needs a new
// container when it changes: image, environment, labels, composition.
// Release commit and running are not part of it.
func (s Service) ConfigHash() string {
	img, err := NormalizeImage(s.Image)
	if err != nil {
		img = s.Image
	}
	return hashJSON(struct {
		Image       string
		Environment map[string]string
		Labels      map[string]string
		Composition Composition
	}{img, nonNil(s.Environment), nonNil(s.Labels), s.Composition})
}

// ConfigHash identifies a network's definition.
func (n Network) ConfigHash() string { return hashJSON(n) }

// ConfigHash identifies a volume's definition.
func (v Volume) ConfigHash() string {
	return hashJSON(Volume{Driver: v.Driver, DriverOpts: nonNil(v.DriverOpts), Labels: nonNil(v.Labels)})
}

func nonNil(m map[string]string) map[string]string {
	if len(m) == 0 {
		return nil
	}
	return m
}

// hashJSON hashes the JSON form of v; encoding/json sorts map keys, so the
// result is stable.
func hashJSON(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		panic("reeve: hashing a config that does not marshal: " + err.Error())
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:16])
}
