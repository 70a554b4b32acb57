package reeve

import (
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"
)

// DeviceConfig is what the config variables of a device's target tell its
// agent. Each is read as REEVE_SUPERVISOR_<NAME>, else BALENA_ or RESIN_
// (so that fleets moved from balena keep their settings).
type DeviceConfig struct {
	// PollInterval (POLL_INTERVAL, milliseconds): the wait between polls
	// when the server does not offer long polls, and the longest a long
	// poll waits. Default 60 s; 10 s to 24 h (values outside are brought
	// to the nearest end, with a warning).
	PollInterval time.Duration
	// InstantUpdates (INSTANT_UPDATES, 1 or 0): long-poll the server so
	// that updates arrive at once. Default on.
	InstantUpdates bool
	// OverrideLock (OVERRIDE_LOCK, 1 or 0): updates and actions go ahead
	// even while a service holds its update lock. Default off.
	OverrideLock bool
	// APIRequestTimeout (API_REQUEST_TIMEOUT, milliseconds): how long a
	// request to the server may take (a long poll gets its wait on top).
	// Default 30 s; 1 s to 10 min (brought to the nearest end).
	APIRequestTimeout time.Duration
	// LocalMode (LOCAL_MODE, 1 or 0, default off): the target is set on
	// the device through its local API; the fleet's is not applied until
	// the fleet turns local mode off again.
	LocalMode bool
	// PersistentLogging (PERSISTENT_LOGGING, 1 or 0, default off):
	// validated only. On balena it keeps the host OS journal across
	// reboots, which reeve does not manage; the agent's own log queue is
	// on disk whatever it says.
	PersistentLogging bool
	// LogQueueMax (LOG_QUEUE_MAX_MB, MiB): the most disk the queue of log
	// lines waiting for the server may take; over it the oldest lines go,
	// and the server is told how many. Default 32 MiB; 1 MiB to 4 GiB
	// (brought to the nearest end).
	LogQueueMax int64
}

// Defaults of the device config.
const (
	DefaultPollInterval      = time.Minute
	MinPollInterval          = 10 * time.Second
	DefaultAPIRequestTimeout = 30 * time.Second
	DefaultLogQueueMax       = 32 << 20
)

var configPrefixes = []string{"REEVE_SUPERVISOR_", "BALENA_SUPERVISOR_", "RESIN_SUPERVISOR_"}

// DefaultDeviceConfig is the device config with no variables set.
func DefaultDeviceConfig() DeviceConfig {
	return DeviceConfig{PollInterval: DefaultPollInterval, InstantUpdates: true, APIRequestTimeout: DefaultAPIRequestTimeout,
		LogQueueMax: DefaultLogQueueMax}
}

// ParseDeviceConfig reads the device config from a target's config
// variables on top of defaults (usually DefaultDeviceConfig). A value it
// cannot use leaves the default and gives a warning that says what was
// wrong, so that a typo never stops a device.
func ParseDeviceConfig(config map[string]string, defaults DeviceConfig) (DeviceConfig, []string) {
	c := defaults
	var warnings []string
	lookup := func(name string) (key, val string, ok bool) {
		for _, p := range configPrefixes {
			if v, found := config[p+name]; found {
				return p + name, strings.TrimSpace(v), true
			}
		}
		return "", "", false
	}
	boolean := func(name string, dst *bool) {
		key, v, ok := lookup(name)
		if !ok {
			return
		}
		switch strings.ToLower(v) {
		case "1", "true", "on", "yes":
			*dst = true
		case "0", "false", "off", "no", "":
			*dst = false
		default:
			warnings = append(warnings, fmt.Sprintf("%s=%q is not 1 or 0: using the default (%s)", key, v, onOff(*dst)))
		}
	}
	millis := func(name string, dst *time.Duration, lo, hi time.Duration) {
		key, v, ok := lookup(name)
		if !ok {
			return
		}
		ms, err := strconv.ParseInt(v, 10, 64)
		switch {
		case err != nil || ms <= 0:
			warnings = append(warnings, fmt.Sprintf("%s=%q is not a number of milliseconds: using the default (%d)", key, v, dst.Milliseconds()))
		case ms < lo.Milliseconds():
			warnings = append(warnings, fmt.Sprintf("%s=%q is below the least the agent allows: using %d", key, v, lo.Milliseconds()))
			*dst = lo
		case ms > hi.Milliseconds():
			warnings = append(warnings, fmt.Sprintf("%s=%q is above the most the agent allows: using %d", key, v, hi.Milliseconds()))
			*dst = hi
		default:
			*dst = time.Duration(ms) * time.Millisecond
		}
	}
	mebibytes := func(name string, dst *int64, lo, hi int64) {
		key, v, ok := lookup(name)
		if !ok {
			return
		}
		n, err := strconv.ParseInt(v, 10, 64)
		switch {
		case err != nil || n <= 0:
			warnings = append(warnings, fmt.Sprintf("%s=%q is not a number of MiB: using the default (%d)", key, v, *dst>>20))
		case n < lo:
			warnings = append(warnings, fmt.Sprintf("%s=%q is below the least the agent allows: using %d", key, v, lo))
			*dst = lo << 20
		case n > hi:
			warnings = append(warnings, fmt.Sprintf("%s=%q is above the most the agent allows: using %d", key, v, hi))
			*dst = hi << 20
		default:
			*dst = n << 20
		}
	}
	millis("POLL_INTERVAL", &c.PollInterval, MinPollInterval, 24*time.Hour)
	millis("API_REQUEST_TIMEOUT", &c.APIRequestTimeout, time.Second, 10*time.Minute)
	boolean("INSTANT_UPDATES", &c.InstantUpdates)
	boolean("OVERRIDE_LOCK", &c.OverrideLock)
	boolean("LOCAL_MODE", &c.LocalMode)
	boolean("PERSISTENT_LOGGING", &c.PersistentLogging)
	mebibytes("LOG_QUEUE_MAX_MB", &c.LogQueueMax, 1, 4096)
	sort.Strings(warnings)
	return c, warnings
}

func onOff(b bool) string {
	if b {
		return "1"
	}
	return "0"
}
