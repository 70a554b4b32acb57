// Package driver defines how the gateway (reeve gateway, the edge node
// manager) reaches dependent devices over their own links: one Driver per
// kind of link (sim, lwm2m, mqtt), every one passing the conformance suite
// in driver/drivertest.
//
// The gateway owns the devices' fleet identity, their targets and the
// firmware files; a driver only speaks the link: it finds devices, says
// what they run and whether they answer, installs firmware, restarts,
// identifies and configures them, and passes on what they log. A driver
// never decides what a device should run.
package driver

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// App is the dependent app (fleet) a driver serves: every device it finds
// belongs to it.
type App struct {
	ID   int64
	UUID string
	Name string
	// HostType is the board type from the app's config (REEVE_HOST_TYPE,
	// or RESIN_HOST_TYPE); "" when the config does not say.
	HostType string
	// Config is the app's whole config.
	Config map[string]string
}

// Device is a dependent device as a driver sees it on its link.
type Device struct {
	// LocalID identifies the device on its link: a serial number, an
	// LwM2M endpoint name, an MQTT client ID. Unique per driver and app.
	LocalID string
	// DeviceType is the board type the device reports; "" when it does
	// not (the gateway uses the app's HostType).
	DeviceType string
	// Online says the device answers now (or, for links where devices
	// come to the gateway, that it was heard from within its lifetime).
	Online bool
	// Commit is the firmware release the device says it runs; "" when
	// it does not say (a device that never got reeve firmware).
	Commit string
	// Info holds what else the device tells of itself (manufacturer,
	// model, serial number, firmware version), for operators.
	Info map[string]string
}

// Firmware is one release's firmware, ready to install.
type Firmware struct {
	// Commit is the release; a device that installed it reports it.
	Commit string
	// Dir holds the release's /assets files, extracted.
	Dir string
	// File is the file to install, relative to Dir.
	File string
	// Size is File's size in bytes; SHA256 its hex digest.
	Size   int64
	SHA256 string
	// URL is where File is served for devices that fetch firmware
	// themselves (an LwM2M Package URI). Drivers that push the bytes
	// read them from Dir.
	URL string
}

// Progress is told how far an install has come, 0 to 100.
type Progress func(percent int)

// LogLine is a line a device logged.
type LogLine struct {
	Time    time.Time // the device's or, when it sends none, the gateway's
	Message string
	System  bool // about the device (connected, rebooted), not from its program
}

// Driver drives the devices of one dependent app over one kind of link.
// Methods are safe for concurrent use, for different devices at once.
// Errors about one device never concern the others. A link that cannot do
// something (LwM2M has no log object) returns an error wrapping
// errors.ErrUnsupported.
type Driver interface {
	// Name is the driver's name: "sim", "lwm2m", "mqtt".
	Name() string
	// Open starts using the link for app's devices (binds a port,
	// connects to a broker, powers a radio). Close releases every link
	// and stops every goroutine Open started; the gateway closes its
	// drivers when it is paused, so that user code can use the links,
	// and opens them again when it resumes.
	Open(ctx context.Context, app App) error
	Close() error
	// Scan returns the devices the driver can reach, or heard from within
	// their lifetime, with what they say of themselves.
	Scan(ctx context.Context) ([]Device, error)
	// Update installs fw on the device and returns once the device runs
	// it (it reports fw.Commit), calling progress as it goes. A refusal
	// or a failure of the device is an *UpdateError saying why; a link
	// that broke (the device went away mid-transfer) is ErrOffline,
	// wrapped; ctx ending stops the install. Where the link allows, an
	// install interrupted and tried again goes on where it stopped.
	Update(ctx context.Context, localID string, fw Firmware, progress Progress) error
	// Restart reboots the device.
	Restart(ctx context.Context, localID string) error
	// Identify makes the device show itself (blink, beep).
	Identify(ctx context.Context, localID string) error
	// Configure gives the device its environment and config variables.
	Configure(ctx context.Context, localID string, env, config map[string]string) error
	// Logs returns what the device logged since the last call, oldest
	// first (nil when nothing).
	Logs(ctx context.Context, localID string) ([]LogLine, error)
}

// ErrUnknownDevice is returned (wrapped) for a local ID the driver has
// never seen.
var ErrUnknownDevice = errors.New("unknown device")

// ErrOffline is returned (wrapped) when the device does not answer.
var ErrOffline = errors.New("device offline")

// ErrNotOpen is returned (wrapped) by a driver that is closed.
var ErrNotOpen = errors.New("driver not open")

// UpdateError is a firmware install the device refused or failed: trying
// the same firmware again is not expected to help, though a device that
// browned out may take it the next time.
type UpdateError struct {
	LocalID string
	Reason  string
}

func (e *UpdateError) Error() string {
	return fmt.Sprintf("device %s: update failed: %s", e.LocalID, e.Reason)
}

// Factory makes a driver of one kind from its settings (flags and
// environment of the gateway, as key/value pairs such as "listen").
type Factory func(settings map[string]string) (Driver, error)
