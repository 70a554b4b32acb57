package agentd

import (
	"errors"
	"slices"
	"testing"
)

func TestPowerCommandPrefersLogind(t *testing.T) {
	found := func(string) (string, error) { return "/usr/bin/busctl", nil }
	missing := func(string) (string, error) { return "", errors.New("not found") }
	yes := func(string) bool { return true }
	no := func(string) bool { return false }
	for _, tc := range []struct {
		name   string
		look   func(string) (string, error)
		exists func(string) bool
		method string
		want   []string
	}{
		{"logind over D-Bus", found, yes, "Reboot", []string{"busctl", "call", "org.freedesktop.login1", "/org/freedesktop/login1", "org.freedesktop.login1.Manager", "Reboot", "b", "false"}},
		{"no system bus", found, no, "Reboot", []string{"systemctl", "reboot"}},
		{"no busctl", missing, yes, "PowerOff", []string{"systemctl", "poweroff"}},
	} {
		if got := powerCommand(tc.method, tc.look, tc.exists); !slices.Equal(got, tc.want) {
			t.Errorf("%s: %q, want %q", tc.name, got, tc.want)
		}
	}
}
