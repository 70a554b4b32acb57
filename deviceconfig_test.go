package reeve

import (
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestParseDeviceConfig(t *testing.T) {
	def := DeviceConfig{PollInterval: time.Minute, InstantUpdates: true, APIRequestTimeout: 30 * time.Second, LogQueueMax: 32 << 20}
	for _, tc := range []struct {
		name     string
		config   map[string]string
		want     DeviceConfig
		warnings []string // each is a part of one warning, in order
	}{
		{name: "nothing set", want: def},
		{name: "reeve names", config: map[string]string{
			"REEVE_SUPERVISOR_POLL_INTERVAL": "30000", "REEVE_SUPERVISOR_OVERRIDE_LOCK": "1",
			"REEVE_SUPERVISOR_INSTANT_UPDATES": "0", "REEVE_SUPERVISOR_API_REQUEST_TIMEOUT": "5000",
			"REEVE_SUPERVISOR_LOCAL_MODE": "true", "REEVE_SUPERVISOR_PERSISTENT_LOGGING": "1",
			"REEVE_SUPERVISOR_LOG_QUEUE_MAX_MB": "8",
		}, want: DeviceConfig{PollInterval: 30 * time.Second, OverrideLock: true, APIRequestTimeout: 5 * time.Second, LocalMode: true, PersistentLogging: true,
			LogQueueMax: 8 << 20}},
		{name: "balena and resin names", config: map[string]string{
			"BALENA_SUPERVISOR_POLL_INTERVAL": "900000", "RESIN_SUPERVISOR_OVERRIDE_LOCK": "1",
		}, want: DeviceConfig{PollInterval: 15 * time.Minute, InstantUpdates: true, OverrideLock: true, APIRequestTimeout: 30 * time.Second, LogQueueMax: 32 << 20}},
		{name: "reeve name wins", config: map[string]string{
			"REEVE_SUPERVISOR_POLL_INTERVAL": "20000", "BALENA_SUPERVISOR_POLL_INTERVAL": "900000",
		}, want: DeviceConfig{PollInterval: 20 * time.Second, InstantUpdates: true, APIRequestTimeout: 30 * time.Second, LogQueueMax: 32 << 20}},
		{name: "bad values fall back with warnings", config: map[string]string{
			"REEVE_SUPERVISOR_POLL_INTERVAL": "0", "REEVE_SUPERVISOR_OVERRIDE_LOCK": "maybe",
			"BALENA_SUPERVISOR_API_REQUEST_TIMEOUT": "soon", "REEVE_SUPERVISOR_LOG_QUEUE_MAX_MB": "lots",
		}, want: def, warnings: []string{
			`BALENA_SUPERVISOR_API_REQUEST_TIMEOUT="soon" is not a number of milliseconds: using the default (30000)`,
			`REEVE_SUPERVISOR_LOG_QUEUE_MAX_MB="lots" is not a number of MiB: using the default (32)`,
			`REEVE_SUPERVISOR_OVERRIDE_LOCK="maybe" is not 1 or 0: using the default (0)`,
			`REEVE_SUPERVISOR_POLL_INTERVAL="0" is not a number of milliseconds: using the default (60000)`,
		}},
		{name: "out of range values are brought in", config: map[string]string{
			"REEVE_SUPERVISOR_POLL_INTERVAL": "5000", "REEVE_SUPERVISOR_API_REQUEST_TIMEOUT": "99999999999999999",
			"REEVE_SUPERVISOR_LOG_QUEUE_MAX_MB": "100000",
		}, want: DeviceConfig{PollInterval: 10 * time.Second, InstantUpdates: true, APIRequestTimeout: 10 * time.Minute, LogQueueMax: 4 << 30}, warnings: []string{
			`REEVE_SUPERVISOR_API_REQUEST_TIMEOUT="99999999999999999" is above the most the agent allows: using 600000`,
			`REEVE_SUPERVISOR_LOG_QUEUE_MAX_MB="100000" is above the most the agent allows: using 4096`,
			`REEVE_SUPERVISOR_POLL_INTERVAL="5000" is below the least the agent allows: using 10000`,
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, warnings := ParseDeviceConfig(tc.config, DefaultDeviceConfig())
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("config (-want +got):\n%s", diff)
			}
			if len(warnings) != len(tc.warnings) {
				t.Fatalf("warnings %q, want %d", warnings, len(tc.warnings))
			}
			for i, w := range tc.warnings {
				if !strings.Contains(warnings[i], w) {
					t.Errorf("warning %q does not say %q", warnings[i], w)
				}
			}
		})
	}
}
