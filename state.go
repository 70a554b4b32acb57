package reeve

import (
	"encoding/json"
	"fmt"
	"strings"
	"time"
)

// TargetState is what the fleet (or local mode) says a device should run, in
// the v3 shape: keyed by device UUID.
type TargetState map[string]DeviceTarget

// DeviceTarget is one device's target.
type DeviceTarget struct {
	Name   string            `json:"name"`
	Config map[string]string `json:"config,omitempty"`
	Apps   map[string]App    `json:"apps"` // keyed by app UUID
}

// App classes.
const (
	ClassFleet = "fleet"
	ClassApp   = "app"
	// ClassDependent is an app of dependent devices (microcontrollers)
	// that a gateway's agent carries: its release is an image holding
	// their firmware under /assets, and it never runs as a container.
	ClassDependent = "dependent"
)

// App is one application with (at most) one target release.
type App struct {
	ID       int64              `json:"id"`
	Name     string             `json:"name"`
	Class    string             `json:"class,omitempty"`
	Releases map[string]Release `json:"releases"` // keyed by commit
	// Config holds, for a dependent app in its gateway's target, the
	// dependent fleet's config variables (such as REEVE_HOST_TYPE, the
	// board its devices are).
	Config map[string]string `json:"config,omitempty"`
}

// Release is one version of an app: its services, networks and volumes.
type Release struct {
	ID       int64              `json:"id"`
	Services map[string]Service `json:"services"`
	Volumes  map[string]Volume  `json:"volumes,omitempty"`
	Networks map[string]Network `json:"networks,omitempty"`
}

// Service is one container of a release.
type Service struct {
	ID          int64             `json:"id"`
	ImageID     int64             `json:"image_id"`
	Image       string            `json:"image"`
	Running     bool              `json:"running"`
	Environment map[string]string `json:"environment,omitempty"`
	Labels      map[string]string `json:"labels,omitempty"`
	Composition Composition       `json:"composition"`
}

// Composition is the part of a compose service that reeve honours. Every
// field here is applied by the runtime; a compose key that has no field here
// is refused when a compose file is read.
type Composition struct {
	Command         []string                  `json:"command,omitempty"`
	Entrypoint      []string                  `json:"entrypoint,omitempty"`
	Ports           []Port                    `json:"ports,omitempty"`
	Restart         string                    `json:"restart,omitempty"`
	DependsOn       map[string]Dependency     `json:"depends_on,omitempty"`
	Healthcheck     *Healthcheck              `json:"healthcheck,omitempty"`
	Networks        map[string]ServiceNetwork `json:"networks,omitempty"`
	NetworkMode     string                    `json:"network_mode,omitempty"`
	Volumes         []Mount                   `json:"volumes,omitempty"`
	Devices         []DeviceMapping           `json:"devices,omitempty"`
	CapAdd          []string                  `json:"cap_add,omitempty"`
	CapDrop         []string                  `json:"cap_drop,omitempty"`
	Privileged      bool                      `json:"privileged,omitempty"`
	WorkingDir      string                    `json:"working_dir,omitempty"`
	User            string                    `json:"user,omitempty"`
	StopGracePeriod Duration                  `json:"stop_grace_period,omitempty"`
	Tmpfs           []string                  `json:"tmpfs,omitempty"`
	Sysctls         map[string]string         `json:"sysctls,omitempty"`
	Ulimits         map[string]Ulimit         `json:"ulimits,omitempty"`
}

// Port publishes a container port on the host.
type Port struct {
	Target    uint16 `json:"target"`
	Published uint16 `json:"published,omitempty"` // 0: an ephemeral host port
	HostIP    string `json:"host_ip,omitempty"`
	Protocol  string `json:"protocol,omitempty"` // tcp (default) or udp
}

// Dependency conditions.
const (
	ConditionStarted   = "service_started"
	ConditionHealthy   = "service_healthy"
	ConditionCompleted = "service_completed_successfully"
)

// Dependency is one depends_on entry.
type Dependency struct {
	Condition string `json:"condition,omitempty"` // default service_started
}

// Healthcheck is the container's health test.
type Healthcheck struct {
	Test        []string `json:"test,omitempty"` // ["CMD", ...], ["CMD-SHELL", "..."] or ["NONE"]
	Interval    Duration `json:"interval,omitempty"`
	Timeout     Duration `json:"timeout,omitempty"`
	StartPeriod Duration `json:"start_period,omitempty"`
	Retries     int      `json:"retries,omitempty"`
	Disable     bool     `json:"disable,omitempty"`
}

// ServiceNetwork is a service's attachment to one of its release's networks.
type ServiceNetwork struct {
	Aliases     []string `json:"aliases,omitempty"`
	IPv4Address string   `json:"ipv4_address,omitempty"`
}

// Mount types.
const (
	MountVolume = "volume"
	MountBind   = "bind"
	MountTmpfs  = "tmpfs"
)

// Mount is one entry of a service's volumes.
type Mount struct {
	Type     string `json:"type"`             // volume, bind or tmpfs
	Source   string `json:"source,omitempty"` // release volume name, or host path for bind; empty for an anonymous volume or tmpfs
	Target   string `json:"target"`
	ReadOnly bool   `json:"read_only,omitempty"`
}

// DeviceMapping maps a host device into the container.
type DeviceMapping struct {
	Host        string `json:"host"`
	Container   string `json:"container,omitempty"`
	Permissions string `json:"permissions,omitempty"` // default rwm
}

// Ulimit is one resource limit.
type Ulimit struct {
	Soft int64 `json:"soft"`
	Hard int64 `json:"hard"`
}

// Network is a release network.
type Network struct {
	Driver     string            `json:"driver,omitempty"`
	DriverOpts map[string]string `json:"driver_opts,omitempty"`
	Internal   bool              `json:"internal,omitempty"`
	EnableIPv6 bool              `json:"enable_ipv6,omitempty"`
	Labels     map[string]string `json:"labels,omitempty"`
	IPAM       *IPAM             `json:"ipam,omitempty"`
}

// IPAM configures a network's addresses.
type IPAM struct {
	Driver string       `json:"driver,omitempty"`
	Config []IPAMConfig `json:"config,omitempty"`
}

// IPAMConfig is one subnet.
type IPAMConfig struct {
	Subnet  string `json:"subnet,omitempty"`
	IPRange string `json:"ip_range,omitempty"`
	Gateway string `json:"gateway,omitempty"`
}

// Volume is a named release volume. Its data outlives releases: it is kept
// across updates, copied when its definition changes and only removed on
// request once its app is gone.
type Volume struct {
	Driver     string            `json:"driver,omitempty"`
	DriverOpts map[string]string `json:"driver_opts,omitempty"`
	Labels     map[string]string `json:"labels,omitempty"`
}

// Duration is a time.Duration that travels as a Go duration string ("10s").
type Duration time.Duration

// D returns d as a time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

func (d Duration) MarshalJSON() ([]byte, error) {
	return json.Marshal(time.Duration(d).String())
}

func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("duration must be a string such as \"10s\" or \"1m30s\"")
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("invalid duration %q: use a form such as \"10s\" or \"1m30s\"", s)
	}
	if v < 0 {
		return fmt.Errorf("invalid duration %q: must not be negative", s)
	}
	*d = Duration(v)
	return nil
}

// The service labels reeve reads. The io.balena.* forms are read too, so
// that releases written for balena work unchanged.
const (
	LabelUpdateStrategy  = "io.reeve.update.strategy"
	LabelHandoverTimeout = "io.reeve.update.handover-timeout"
	LabelPrefix          = "io.reeve."
	balenaLabelPrefix    = "io.balena."
)

// Update strategies.
const (
	StrategyDownloadThenKill   = "download-then-kill"
	StrategyKillThenDownload   = "kill-then-download"
	StrategyDeleteThenDownload = "delete-then-download"
	StrategyHandOver           = "hand-over"
)

// DefaultHandoverTimeout is how long a hand-over waits for the new container
// to say it is ready before the old one is killed anyway.
const DefaultHandoverTimeout = 60 * time.Second

// Label returns the value of a reeve label, falling back to its io.balena.*
// form.
func (s Service) Label(name string) (string, bool) {
	if v, ok := s.Labels[name]; ok {
		return v, true
	}
	if strings.HasPrefix(name, LabelPrefix) {
		v, ok := s.Labels[balenaLabelPrefix+strings.TrimPrefix(name, LabelPrefix)]
		return v, ok
	}
	return "", false
}

// Strategy returns the service's update strategy.
func (s Service) Strategy() string {
	if v, ok := s.Label(LabelUpdateStrategy); ok && v != "" {
		return v
	}
	return StrategyDownloadThenKill
}

// HandoverTimeout returns the service's hand-over timeout.
func (s Service) HandoverTimeout() time.Duration {
	if v, ok := s.Label(LabelHandoverTimeout); ok {
		var ms int64
		if _, err := fmt.Sscan(v, &ms); err == nil && ms > 0 {
			return time.Duration(ms) * time.Millisecond
		}
	}
	return DefaultHandoverTimeout
}

// Release returns the app's target release and its commit; ok is false when
// the app has none (its services are to be removed, its volumes kept).
func (a App) Release() (commit string, r Release, ok bool) {
	for c, rel := range a.Releases {
		return c, rel, true
	}
	return "", Release{}, false
}

// RestartPolicy returns the service's restart policy. A device has nobody to
// restart what stopped, so a service without one restarts always.
func (c Composition) RestartPolicy() string {
	if c.Restart == "" {
		return "always"
	}
	return c.Restart
}

// StopGrace returns how long a stop waits before killing: the service's
// stop_grace_period, else 10 s.
func (c Composition) StopGrace() time.Duration {
	if c.StopGracePeriod > 0 {
		return c.StopGracePeriod.D()
	}
	return 10 * time.Second
}
